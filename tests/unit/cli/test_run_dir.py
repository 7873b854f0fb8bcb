"""Run folders: resume against the stored config, failed commands leave no claim, run names,
and --multirun jobs each in a folder (and a wandb run) of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, build_small_demo
from omegaconf import OmegaConf

from bayling_duplex.cli.run_dir import (
    RESOLVED_CONFIG,
    RunConfig,
    RunDirError,
    config_changes,
    prepare_run_dir,
    release_run_dir,
    run_dir_entries,
    run_name_error,
)


def _cli(module: str, *args: str, cwd: Path, timeout: int = 300, env=None):
    return subprocess.run(
        [sys.executable, "-m", f"bayling_duplex.{module}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _resolved(**changes) -> dict:
    conf = {
        "stage": "sft",
        "run": {"name": "r", "resume": False, "overwrite": False, "allow_config_change": False},
        "train": {"batch_size": 16, "logging_steps": 20, "max_steps": -1},
        "optim": {"lr": 0.002, "scheduler": "cosine"},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        conf[section][key] = value
    return conf


# ----------------------------------------------------------------------------- resume


def test_resume_refuses_a_changed_config_naming_old_and_new_values(tmp_path):
    prepare_run_dir(tmp_path, RunConfig(name="r"), _resolved())
    stored = (tmp_path / RESOLVED_CONFIG).read_text()
    (tmp_path / "checkpoint-3").mkdir()
    changed = _resolved(optim__lr=0.001, train__batch_size=8, run__resume=True)
    with pytest.raises(RunDirError) as e:
        prepare_run_dir(tmp_path, RunConfig(name="r", resume=True), changed)
    assert "optim.lr: 0.002 -> 0.001" in str(e.value)
    assert "train.batch_size: 16 -> 8" in str(e.value)
    assert "run.allow_config_change=true" in str(e.value)
    assert (tmp_path / RESOLVED_CONFIG).read_text() == stored  # never overwritten
    assert not list(tmp_path.glob("config.resume-*"))


def test_resume_keeps_the_stored_config_and_writes_its_own_beside_it(tmp_path):
    prepare_run_dir(tmp_path, RunConfig(name="r"), _resolved())
    stored = (tmp_path / RESOLVED_CONFIG).read_text()
    # logging and the resume flags cannot change the run: accepted
    same = _resolved(run__resume=True, train__logging_steps=1)
    prepare_run_dir(tmp_path, RunConfig(name="r", resume=True), same)
    assert (tmp_path / RESOLVED_CONFIG).read_text() == stored
    assert OmegaConf.load(tmp_path / "config.resume-1.yaml").train.logging_steps == 1
    # a changed learning rate, asked for: accepted, recorded in the next file
    changed = _resolved(run__resume=True, run__allow_config_change=True, optim__lr=0.001)
    prepare_run_dir(tmp_path, RunConfig(name="r", resume=True, allow_config_change=True), changed)
    assert OmegaConf.load(tmp_path / "config.resume-2.yaml").optim.lr == 0.001
    assert (tmp_path / RESOLVED_CONFIG).read_text() == stored


def test_config_changes_skip_only_keys_that_cannot_change_the_run():
    old = _resolved()
    assert config_changes(old, _resolved(run__resume=True, train__logging_steps=5)) == []
    assert config_changes(old, _resolved(train__max_steps=100)) == [
        "train.max_steps: -1 -> 100"
    ]  # extending a run changes its schedule: asked for with run.allow_config_change
    new = _resolved()
    new["optim"]["new_key"] = 1
    assert config_changes(old, new) == ["optim.new_key: '<absent>' -> 1"]


# ----------------------------------------------------------------------------- failed commands


def test_release_removes_only_what_the_failed_command_wrote(tmp_path):
    (tmp_path / "old.txt").write_text("a previous run's")
    (tmp_path / "train.log").write_text("Hydra's job log")
    before = run_dir_entries(tmp_path, ("train.log",))
    (tmp_path / "config.resume-1.yaml").write_text("x")
    (tmp_path / "backbone").mkdir()
    assert release_run_dir(tmp_path, before, ("train.log",)) == ["backbone", "config.resume-1.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt", "train.log"]
    # a result among what it wrote: nothing is removed
    (tmp_path / "config.resume-1.yaml").write_text("x")
    (tmp_path / "checkpoint-2").mkdir()
    assert release_run_dir(tmp_path, before, ("train.log",)) == []
    assert (tmp_path / "config.resume-1.yaml").is_file()
    # a folder it created: removed whole when nothing else is left
    fresh = tmp_path / "fresh"
    prepare_run_dir(fresh, RunConfig(name="fresh"), _resolved())
    release_run_dir(fresh, set())
    assert not fresh.exists()


def test_a_failed_eval_leaves_no_claim_on_its_run_folder(tmp_path):
    """`eval` before any training: the error, and the same error (not "not empty") again."""
    for _ in range(2):
        res = _cli("eval", *TINY_MODEL, cwd=tmp_path)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "python -m bayling_duplex.train sft" in res.stderr
        assert "not empty" not in res.stderr
    assert not (tmp_path / "runs" / "eval" / "default" / RESOLVED_CONFIG).exists()


def test_a_failed_train_leaves_no_claim_on_its_run_folder(tmp_path):
    """Its config.yaml and backbone/ are gone: the folder holds only Hydra's job log, which
    the non-empty check ignores, so the corrected rerun is accepted."""
    args = ["sft", *TINY_MODEL, "data=demo", "data.path=nowhere", "data.build_if_missing=false"]
    res = _cli("train", *args, "run.wandb.mode=disabled", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "python -m bayling_duplex.data build" in res.stderr
    run = tmp_path / "runs" / "sft" / "default"
    assert not run.exists() or run_dir_entries(run, ("train.log",)) == set()


# ----------------------------------------------------------------------------- run names


@pytest.mark.parametrize(
    "name", ["a/b", "..", ".", "", "a\\b", "-x", ".hidden", "a b", "x" * 129, "sweeps"]
)
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(ValueError, match=r"run\.name"):
        RunConfig(name=name)
    assert run_name_error([f"run.name='{name}'"]) is not None


def test_safe_run_names_and_sweeps_of_names():
    for name in ("default", "paper_sft", "lr=1e-4,bs=8", "v1.2-a+b@c"):
        RunConfig(name=name)
    assert run_name_error(["run.name=ok", "optim.lr=1"]) is None
    assert "'a/b'" in run_name_error(["run.name=ok,a/b"])


def test_cli_unsafe_run_name_fails_before_any_folder_is_made(tmp_path):
    for name in ("a/b", ".."):
        res = _cli("train", "sft", f"run.name={name}", cwd=tmp_path, timeout=120)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "run.name must be one folder name" in res.stderr
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-data")
    return build_small_demo(root / "demo", root / "cache", train=16, heldout=4)


def test_multirun_jobs_get_their_own_folder_name_and_wandb_run(small_data, tmp_path):
    """A 2-job sweep of a 2-step SFT: runs/sft/sweeps/default/<n>, each with its own
    run.name, config and wandb run; nothing lands in runs/sft/default."""
    res = _cli(
        "train",
        "sft",
        *TINY_MODEL,
        "data=demo",
        f"data.path={small_data}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.eval_dialogues=0",
        "train.behaviour_dialogues=0",
        "run.wandb.mode=offline",  # set in the config: wins over the tests' WANDB_MODE=disabled
        "optim.lr=1e-3,2e-3",
        "--multirun",
        cwd=tmp_path,
        # the job folders, not what earlier tests in this process left in the environment
        env={
            k: v for k, v in os.environ.items() if not k.startswith("WANDB_") or k == "WANDB_MODE"
        },
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "runs" / "sft" / "default").exists()
    sweep = tmp_path / "runs" / "sft" / "sweeps" / "default"
    names = {}
    for job, lr in ((0, "0.001"), (1, "0.002")):
        folder = sweep / str(job)
        assert (folder / "final" / "duplex.json").is_file()
        conf = OmegaConf.load(folder / RESOLVED_CONFIG)
        assert conf.optim.lr == float(lr)
        names[job] = conf.run.name
        assert names[job] == f"default-{job}-lr={lr}"
        runs = list((folder / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, (job, runs)
        record = next(runs[0].glob("*.wandb")).read_bytes()
        assert names[job].encode() in record  # the wandb run is this job's, under its name
    assert names[0] != names[1]
