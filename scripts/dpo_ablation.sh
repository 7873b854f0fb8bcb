#!/usr/bin/env bash
# The DPO ablation (docs/dpo.md, "Ablation"): gold-perturbation pairs, on-policy pairs and
# their mix, each trained from the same SFT checkpoint (init=, default the newest SFT run)
# and evaluated on the same held-out dialogues; then the table of paired differences with
# 95 % intervals, written to runs/dpo/sweeps/<name>/ablation.md (and .json).
#   scripts/dpo_ablation.sh [run.name=ablation] [init=runs/sft/default/final] [other overrides]
set -euo pipefail
name=ablation
rest=()
for arg in "$@"; do
  case "$arg" in run.name=*) name="${arg#run.name=}" ;; *) rest+=("$arg") ;; esac
done
python -m bayling_duplex.train dpo --multirun pairs.source=gold,on_policy,mix "run.name=$name" \
  ${rest[@]+"${rest[@]}"}
python -m bayling_duplex.cli.ablation "runs/dpo/sweeps/$name"
