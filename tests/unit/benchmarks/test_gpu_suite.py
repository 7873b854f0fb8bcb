"""benchmarks/gpu_suite.sh: without CUDA it fails at once with one line; its driver's code
runs end to end at toy sizes on the CPU (``--cpu-smoke``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _no_cuda_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"}


@pytest.mark.parametrize(
    "cmd",
    [["bash", "benchmarks/gpu_suite.sh"], [sys.executable, "benchmarks/gpu_suite.py"]],
    ids=["script", "driver"],
)
def test_without_cuda_it_exits_non_zero_with_a_one_line_reason(cmd):
    run = subprocess.run(
        cmd, cwd=ROOT, env=_no_cuda_env(), capture_output=True, text=True, timeout=120
    )
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert run.returncode == 2
    assert len(lines) == 1 and "no CUDA device" in lines[0], lines


def test_the_driver_runs_every_part_at_toy_sizes_on_the_cpu():
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--cpu-smoke"],
        cwd=ROOT,
        env=_no_cuda_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    parts = [line.split("|")[1].strip() for line in table[1:]]
    assert parts.count("SFT step") == 8 and parts.count("decode") == 2
    assert parts.count("converted checkpoint") == 1
    assert "tensors unchanged" in run.stdout and "FAILED" not in run.stdout
    # the CPU has neither kernel library's device: those rows are skipped, not failed
    assert "| liger, sdpa, padded | skipped" in run.stdout
