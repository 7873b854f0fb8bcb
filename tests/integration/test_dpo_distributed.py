"""DPO in two CPU processes (gloo): ZeRO-3 with its sharded frozen reference, and LoRA.

All go through torchrun and the shipped presets (``experiment=dpo_zero3``,
``experiment=dpo_lora``, the latter also under ZeRO-3). The first DeepSpeed run on a machine compiles its CPU
ops (about a minute); later runs reuse them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, compose_conf, save_tiny_sft

pytestmark = pytest.mark.slow

ARGS = [
    "data=demo",
    "run.wandb.mode=disabled",
    *TINY_MODEL,
    "pairs.source=gold",
    "pairs.train=16",
    "pairs.heldout=4",
    "train.max_steps=2",
    "train.batch_size=2",
    "train.logging_steps=1",
    "eval.enabled=false",
]


@pytest.fixture(scope="module")
def sft_final(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo-dist-sft")
    return save_tiny_sft(compose_conf("dpo", ARGS), root, root / "final")


def _torchrun(args: list[str], cwd: Path, port: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(port), "-m", "bayling_duplex.train", "dpo", *args]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return json.loads(next(cwd.glob("runs/dpo/*/summary.json")).read_text())


def test_zero3_two_processes(sft_final, tmp_path):
    args = ["experiment=dpo_zero3", f"init={sft_final}", f"pairs.path={tmp_path / 'pairs'}"]
    # with the behaviour evaluation: rank 0 loads plain models after the sharded training
    evaluate = ["eval.enabled=true", "eval.evalset.turn_taking=1", "eval.evalset.interruption=1"]
    evaluate += ["eval.evalset.backchannel=1", "eval.evalset.hesitation=1", "eval.plots=4"]
    summary = _torchrun([*args, *ARGS, *evaluate], tmp_path, 29527)
    assert summary["steps"] == 2
    assert (Path(summary["checkpoint"]) / "model.safetensors").is_file()  # gathered shards
    ckpt = Path(summary["run_dir"]) / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()
    assert "eval_rewards/accuracies" in summary
    assert set(summary["behaviour"]) == {"sft", "dpo", "delta", "sr_isr_kept"}


@pytest.mark.parametrize("deepspeed", ["none", "zero3"])
def test_lora_two_processes(sft_final, tmp_path, deepspeed):
    args = ["experiment=dpo_lora", f"deepspeed={deepspeed}", "lora.r=4", f"init={sft_final}"]
    port = 29528 if deepspeed == "none" else 29529
    summary = _torchrun([*args, f"pairs.path={tmp_path / 'pairs'}", *ARGS], tmp_path, port)
    assert summary["steps"] == 2
    run = Path(summary["run_dir"])
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "final" / "model.safetensors").is_file()  # merged for decoding
