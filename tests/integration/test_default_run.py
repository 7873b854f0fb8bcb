"""The README's main job and evaluation, end to end, on the real-speech default.

Slow: 12 min 17 s on the 2-core machine of 2026-12-04 (main job and evaluation), ≈ 21 min on slower ones.

What is asserted is what the default run is claimed to do (docs/evaluation.md, "The
default run's behaviour"); the bars it does not reach yet (hesitation and backchannel
robustness ≥ 90 %) are reported there, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("silero_vad")

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_the_default_run_hears_turn_ends_on_held_out_voices(tmp_path: Path) -> None:
    _run(["bayling_duplex.train", "sft", "run.wandb.mode=disabled"], tmp_path)
    manifest = json.loads((tmp_path / "data/speech_demo/manifest.json").read_text())
    assert manifest["splits"]["train"]["turn_end_audit"]["never_inside_share"] < 0.05
    _run(["bayling_duplex.eval", "compare_untrained=false", "listen=2"], tmp_path)
    out = tmp_path / "runs/eval/default"
    report = json.loads((out / "report.json").read_text())
    model = report["model"]["summary"]
    assert report["model"]["checks"]["no_marker"]["passed"]
    # the hesitation set cannot be passed by counting the frames spoken before a silence
    assert report["model"]["checks"]["hesitation_length_cue"]["pauses_kept"] <= 0.8
    # regression guards (measured 0.908 [0.868, 0.943] and 0.78 [0.66, 0.88] on 2026-12-04,
    # batches of 4 with a pause in every hesitation turn; batches of 16 gave 0.859 and
    # 0.50); the bars are 0.90
    assert model["turn_taking"]["SR@3s"] >= 0.85
    assert model["hesitation_robustness"] >= 0.60
    assert model["interruption"]["ISR@2s"] >= 0.95
    assert model["interruption"]["speaking_at_onset_rate"] >= 0.90
    vad800, vad500 = report["silero-800ms"]["summary"], report["silero-500ms"]["summary"]
    assert model["turn_taking"]["latency_s"]["mean"] < vad800["turn_taking"]["latency_s"]["mean"]
    false_ends = model["hesitation_false_ends"]["per_dialogue"]
    assert false_ends < vad500["hesitation_false_ends"]["per_dialogue"]
    assert (out / "report.html").is_file() and list((out / "audio").glob("*.wav"))
