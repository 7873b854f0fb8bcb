#!/usr/bin/env bash
# The paper-scale GPU checks in one run (benchmarks/gpu_suite.py): SFT step tokens/s, MFU and
# peak memory per loss and attention path at GLM-4-Voice-9B's shape, per-block decode latency,
# and one bf16 step through the converted-checkpoint path. One table on stdout, also written
# to benchmarks/out/gpu_suite.md (or $GPU_SUITE_OUT). Sized for under 8 minutes on one
# H100/H200 (not yet run on one); stopped at 8 minutes ($GPU_SUITE_LIMIT_S).
#
#   bash benchmarks/gpu_suite.sh [--layers 8] [--peak-tflops 989]
#
# Without a CUDA device it exits with status 2 and one line saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${GPU_SUITE_OUT:-benchmarks/out/gpu_suite.md}"
python - <<'PY' || exit 2
import sys
import torch
if not torch.cuda.is_available():
    print("gpu_suite: no CUDA device (torch.cuda.is_available() is False): "
          "run it on a machine with a CUDA GPU", file=sys.stderr)
    sys.exit(2)
PY
mkdir -p "$(dirname "$out")"
status=0
timeout --signal=INT --kill-after=20 "${GPU_SUITE_LIMIT_S:-480}" \
    python benchmarks/gpu_suite.py "$@" | tee "$out" || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_suite: stopped at the time limit (${GPU_SUITE_LIMIT_S:-480} s)" >&2
fi
exit "$status"
