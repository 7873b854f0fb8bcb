"""What both stages share around a run: values the typed configs refuse, the schedulers
pinned against transformers, wandb's environment per job, the checkpoint a resume uses,
and LoRA targets checked against the model."""

from __future__ import annotations

import json
import logging
import os

import pytest
from helpers import compose_conf

from bayling_duplex.cli.hydra import ConfigError


@pytest.mark.parametrize("root", ["sft", "dpo"])
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epochs=0", "train.epochs"),
        ("train.epochs=-1", "train.epochs"),
        ("train.max_steps=0", "train.max_steps"),
        ("optim.warmup_ratio=2", "optim.warmup_ratio"),
        ("optim.warmup_ratio=-0.1", "optim.warmup_ratio"),
        ("optim.scheduler=nonsense", "optim.scheduler"),
        ("train.logging_steps=0", "train.logging_steps"),
        ("train.save_steps=0", "train.save_steps"),
        ("optim.adam_beta2=1", "optim.adam_beta2"),
        ("run.name=..", "run.name"),
    ],
)
def test_values_that_would_run_nothing_or_crash_fail_naming_the_key(root, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_conf(root, [override])


def test_scheduler_message_names_the_choices_and_epochs_zero_is_fine_with_max_steps():
    with pytest.raises(ConfigError, match=r"must be one of \('linear', 'cosine'.*SchedulerType"):
        compose_conf("sft", ["optim.scheduler=nonsense"])
    assert compose_conf("sft", ["train.epochs=0", "train.max_steps=5"]).train.max_steps == 5


def test_schedulers_are_transformers_ones_that_need_no_arguments():
    import torch
    from transformers import SchedulerType, get_scheduler

    from bayling_duplex.train.config import SCHEDULERS

    values = {s.value for s in SchedulerType}
    assert set(SCHEDULERS) <= values
    for name in SCHEDULERS:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=10)
    # the rest need arguments this config has no key for (or an evaluation every step)
    for name in values - set(SCHEDULERS) - {"reduce_lr_on_plateau"}:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises((ValueError, TypeError)):
            get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=10)


# ----------------------------------------------------------------------------- wandb


def test_wandb_mode_from_the_environment_wins_over_the_default_not_over_a_set_value(
    monkeypatch, tmp_path
):
    from bayling_duplex.cli.run_dir import WandbConfig
    from bayling_duplex.train.hf_args import configure_wandb, training_kwargs, wandb_mode

    conf = compose_conf("sft", [])
    assert conf.run.wandb.mode is None  # the default: $WANDB_MODE, else offline
    monkeypatch.setenv("WANDB_MODE", "disabled")
    configure_wandb(conf.run.wandb, tmp_path)
    assert wandb_mode(conf.run.wandb) == os.environ["WANDB_MODE"] == "disabled"
    assert (
        training_kwargs(conf.train, conf.optim, conf.run, None, tmp_path, False)["report_to"] == []
    )
    configure_wandb(WandbConfig(mode="offline"), tmp_path)  # set in the config: it wins
    assert os.environ["WANDB_MODE"] == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(WandbConfig()) == "offline"


def test_each_job_sets_its_own_wandb_environment(monkeypatch, tmp_path):
    from bayling_duplex.cli.run_dir import WandbConfig
    from bayling_duplex.train.hf_args import configure_wandb

    for key in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    configure_wandb(WandbConfig(mode="offline", entity="team"), tmp_path / "0")
    assert (os.environ["WANDB_DIR"], os.environ["WANDB_ENTITY"]) == (str(tmp_path / "0"), "team")
    # the second job of the same process: its folder, not the first job's; no entity left over
    configure_wandb(WandbConfig(mode="offline", project="p2"), tmp_path / "1")
    assert os.environ["WANDB_DIR"] == str(tmp_path / "1")
    assert os.environ["WANDB_PROJECT"] == "p2" and "WANDB_ENTITY" not in os.environ
    # what the user exported is kept, job after job
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "mine"))
    for job in ("2", "3"):
        configure_wandb(WandbConfig(mode="offline"), tmp_path / job)
        assert os.environ["WANDB_DIR"] == str(tmp_path / "mine")


# ----------------------------------------------------------------------------- resume's checkpoint


def _checkpoint(run, step, files=(), state=True, deepspeed=False):
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    for name in files:
        (folder / name).write_bytes(b"x")
    if deepspeed:
        ds = folder / f"global_step{step}"
        ds.mkdir()
        (ds / "mp_rank_00_model_states.pt").write_bytes(b"x")
        (ds / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"x")
    return folder


def test_resume_skips_half_written_checkpoints_naming_them(tmp_path, caplog):
    from bayling_duplex.model.checkpoint import last_trainer_checkpoint

    complete = ("model.safetensors", "optimizer.pt")
    two = _checkpoint(tmp_path, 2, complete)
    _checkpoint(tmp_path, 4, complete, state=False)  # killed before trainer_state.json
    _checkpoint(tmp_path, 6, ("model.safetensors",))  # no optimizer
    _checkpoint(tmp_path, 8, ("optimizer.pt",))  # no weights
    (_checkpoint(tmp_path, 10, complete) / "trainer_state.json").write_text('{"glob')  # cut short
    with caplog.at_level(logging.WARNING):
        assert last_trainer_checkpoint(tmp_path) == two
    for step in (4, 6, 8, 10):
        assert f"checkpoint-{step}" in caplog.text
    # DeepSpeed's layout: model and optimizer states under global_step<N>/
    assert last_trainer_checkpoint(tmp_path).name == "checkpoint-2"
    ds = _checkpoint(tmp_path, 12, deepspeed=True)
    assert last_trainer_checkpoint(tmp_path) == ds
    assert last_trainer_checkpoint(tmp_path / "nowhere") is None


# ----------------------------------------------------------------------------- LoRA targets


def test_lora_targets_are_checked_against_the_model(tiny_backbone):
    from bayling_duplex.train.config import LoraSettings
    from bayling_duplex.train.hf_args import check_lora_targets

    model = tiny_backbone[0]
    check_lora_targets(model, LoraSettings())  # the defaults exist in the tiny model
    with pytest.raises(ConfigError, match=r"lora\.target_modules: \['nope'\].*q_proj"):
        check_lora_targets(model, LoraSettings(target_modules=["q_proj", "nope"]))
