"""The checkpoint contract: duplex.json written and read in one place, finished runs, formats."""

from __future__ import annotations

import json
import os

import pytest

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.spec import FormatConfig, FormatSpec
from bayling_duplex.model.checkpoint import (
    DUPLEX_META,
    CheckpointError,
    CheckpointMeta,
    check_format,
    describe,
    is_finished,
    latest_finished,
    read_format,
    read_meta,
    resolve,
    write_meta,
)

SPEC = FormatSpec(BlockLayout(10, 5, 12.5), (3, 4))


def finished_run(runs, stage, name, *, meta=True, summary=True, model=True, mtime=None):
    """A run folder as a training stage leaves it; ``summary`` True: a finished run's
    summary.json, a dict: that summary.json, False: none."""
    final = runs / stage / name / "final"
    final.mkdir(parents=True)
    if model:
        (final / "config.json").write_text("{}")
    if meta:
        write_meta(final, CheckpointMeta(SPEC, "demo", stage))
    if summary:
        content = {"steps": 3, "checkpoint": str(final)} if summary is True else summary
        (final.parent / "summary.json").write_text(json.dumps(content))
        if mtime is not None:
            os.utime(final.parent / "summary.json", (mtime, mtime))
    return final


def test_meta_round_trips(tmp_path):
    meta = CheckpointMeta(SPEC, "demo", "dpo", init="runs/sft/a/final")
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    on_disk = json.loads((tmp_path / DUPLEX_META).read_text())
    assert on_disk["format"] == {
        "frames_per_block": 10,
        "slots_per_block": 5,
        "frame_rate_hz": 12.5,
        "silence_codes": [3, 4],
    }


def test_spec_json_is_strict_and_inverse():
    assert FormatSpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(ValueError, match="silence_codes"):
        FormatSpec.from_json({k: v for k, v in SPEC.to_json().items() if k != "silence_codes"})
    with pytest.raises(ValueError, match="silence_codes_file"):
        FormatSpec.from_json({**SPEC.to_json(), "silence_codes_file": None})
    assert FormatConfig.from_spec(SPEC).spec() == SPEC


def test_missing_or_malformed_meta_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no duplex\.json"):
        read_meta(tmp_path)
    assert read_format(tmp_path, default=SPEC) == SPEC  # the default is for files without one
    (tmp_path / DUPLEX_META).write_text(json.dumps({"format": {"frames_per_block": 10}}))
    with pytest.raises(CheckpointError, match="malformed"):
        read_meta(tmp_path)


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (FormatSpec(BlockLayout(8, 5, 12.5), (3, 4)), "frames_per_block"),
        (FormatSpec(BlockLayout(10, 4, 12.5), (3, 4)), "slots_per_block"),
        (FormatSpec(BlockLayout(10, 5, 25.0), (3, 4)), "frame_rate_hz"),
        (FormatSpec(BlockLayout(10, 5, 12.5), (3,)), "silence_codes"),
    ],
)
def test_check_format_compares_every_field(tmp_path, other, field):
    write_meta(tmp_path, CheckpointMeta(SPEC, "demo", "sft"))
    check_format(SPEC, tmp_path, "recipe demo")  # same: passes
    with pytest.raises(CheckpointError, match=field):
        check_format(other, tmp_path, "recipe demo")
    assert [d.split(":")[0] for d in other.differences(SPEC)] == [field]


def test_latest_finished_skips_unfinished_runs(tmp_path):
    runs = tmp_path / "runs"
    old = finished_run(runs, "sft", "old", mtime=1_000)
    finished_run(runs, "sft", "no_summary", summary=False)
    finished_run(runs, "sft", "no_meta", meta=False, mtime=3_000)
    assert not is_finished(runs / "sft" / "no_summary" / "final")
    assert latest_finished("sft", runs) == old
    new = finished_run(runs, "sft", "new", mtime=2_000)
    assert latest_finished("sft", runs) == new
    with pytest.raises(CheckpointError, match=r"python -m bayling_duplex\.train dpo"):
        latest_finished("dpo", runs)


def test_resolve_names_what_is_wrong(tmp_path):
    runs = tmp_path / "runs"
    final = finished_run(runs, "sft", "a")
    assert resolve("latest", "sft", runs) == final
    assert resolve(str(final), "sft", runs) == final
    with pytest.raises(CheckpointError, match="no folder"):
        resolve(str(tmp_path / "nope"), "sft", runs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        resolve(str(empty), "sft", runs)


def test_latest_skips_throwaway_runs_and_says_why(tmp_path):
    runs = tmp_path / "runs"
    finished_run(runs, "sft", "zero", summary={"steps": 0, "checkpoint": "x"}, mtime=5_000)
    finished_run(runs, "sft", "early", summary={"steps": 2, "stopped_early": True}, mtime=6_000)
    finished_run(runs, "sft", "nockpt", summary={"steps": 4, "checkpoint": None}, mtime=7_000)
    stopped = runs / "sft" / "stopped"  # stop_after_steps: no final/, only the summary
    stopped.mkdir(parents=True)
    (stopped / "summary.json").write_text(json.dumps({"steps": 1, "stopped_early": True}))
    for name in ("zero", "early", "nockpt", "stopped"):
        assert not is_finished(runs / "sft" / name / "final")
    with pytest.raises(CheckpointError) as err:
        latest_finished("sft", runs)
    msg = str(err.value)
    assert "zero: 0 training steps" in msg
    assert "early: stopped early at step 2" in msg and "stopped: stopped early at step 1" in msg
    assert "nockpt: summary.json names no checkpoint" in msg
    assert "python -m bayling_duplex.train sft" in msg
    real = finished_run(runs, "sft", "real", mtime=1_000)  # older than every throwaway run
    assert latest_finished("sft", runs) == real
    assert resolve("latest", "sft", runs) == real


def test_describe_records_the_checkpoint_and_its_run(tmp_path):
    runs = tmp_path / "runs"
    final = finished_run(runs, "dpo", "a", summary={"steps": 7, "checkpoint": "x"})
    write_meta(final, CheckpointMeta(SPEC, "demo", "dpo", init="runs/sft/b/final"))
    d = describe(final)
    assert d["path"] == str(final.resolve()) and d["duplex_json"]
    assert (d["stage"], d["data"], d["init"], d["steps"]) == ("dpo", "demo", "runs/sft/b/final", 7)
    assert d["format"]["silence_codes"] == [3, 4]
    bare = tmp_path / "bare"
    bare.mkdir()
    d = describe(bare)
    assert not d["duplex_json"] and d["stage"] is None and d["steps"] is None
