"""Two CPU processes under DeepSpeed (gloo): ZeRO-3 through torchrun, ZeRO-2 through accelerate.

The first run on a machine compiles DeepSpeed's CPU ops (about a minute); later runs reuse them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, build_small_demo

from bayling_duplex.cli.hydra import repo_root

ARGS = [
    "data=demo",
    "run.wandb.mode=disabled",
    "train.max_steps=3",
    "train.batch_size=2",
    "train.logging_steps=1",
    "train.eval_dialogues=4",
    *TINY_MODEL,
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    return build_small_demo(root / "demo", root / "cache", train=24, heldout=8, shard_size=24)


def _launch(launcher: list[str], stage_args: list[str], cwd: Path) -> dict:
    res = subprocess.run(
        [*launcher, "-m", "bayling_duplex.train", *stage_args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    run = next(cwd.glob("runs/*/*/summary.json"))
    return json.loads(run.read_text())


def _torchrun() -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]


def test_zero3_two_processes_torchrun(data, tmp_path):
    summary = _launch(_torchrun(), ["sft", "deepspeed=zero3", f"data.path={data}", *ARGS], tmp_path)
    assert summary["steps"] == 3
    final = Path(summary["checkpoint"])
    assert (final / "model.safetensors").is_file()  # gathered from the ZeRO-3 shards
    ckpt = Path(summary["run_dir"]) / "checkpoint-3"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI missing")
def test_zero2_two_processes_accelerate(data, tmp_path):
    launcher = [
        "accelerate",
        "launch",
        "--config_file",
        str(repo_root() / "configs/accelerate/cpu_2proc.yaml"),
        "--main_process_port",
        "29518",
    ]
    summary = _launch(launcher, ["sft", "deepspeed=zero2", f"data.path={data}", *ARGS], tmp_path)
    assert summary["steps"] == 3 and summary["eval_text_loss"] > 0
