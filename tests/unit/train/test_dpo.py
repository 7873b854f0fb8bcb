"""The DPO stage: collator, TRL fed our masks, the loss prefers chosen, every parameter moves,
a CPU run of ``run_dpo`` (full and LoRA) with its before/after report, bad input, TRL pinned."""

from __future__ import annotations

import copy
import inspect
import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import TINY_MODEL, compose_conf, save_tiny_sft

from bayling_duplex.train.dpo import TRL_LOSS_TYPES, PreferenceCollator, trainer_class

TINY = [
    *TINY_MODEL,
    "data=demo",
    "run.wandb.mode=disabled",
]
GOLD = "pairs.source=gold"  # these runs train on gold pairs; on-policy: test_dpo_onpolicy.py
SMALL_RUN = [
    "pairs.train=24",
    "pairs.heldout=8",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.logging_steps=1",
    "eval.evalset.turn_taking=2",
    "eval.evalset.interruption=2",
    "eval.evalset.backchannel=1",
    "eval.evalset.hesitation=1",
    "eval.plots=4",
]


@pytest.fixture(scope="module")
def sft_final(tmp_path_factory):
    """A tiny "SFT checkpoint": the extended tiny backbone saved as a trained run saves it."""
    root = tmp_path_factory.mktemp("dpo-sft")
    final = save_tiny_sft(compose_conf("dpo", TINY), root, root / "runs" / "sft" / "tiny" / "final")
    (final.parent / "summary.json").write_text("{}")
    return final


@pytest.fixture(scope="module")
def pairs(sft_final):
    """A few demo pairs made with the checkpoint's tokenizer: (dataset, model, tokenizer, vocab)."""
    import datasets

    from bayling_duplex.data.load import recipe_from_file
    from bayling_duplex.data.pair_build import make_split_pairs
    from bayling_duplex.data.pairs import PairConfig
    from bayling_duplex.model.checkpoint import read_format
    from bayling_duplex.train.dpo import load_init

    conf = compose_conf("dpo", TINY)
    model, tok, vocab = load_init(sft_final, conf)
    recipe = recipe_from_file("demo")
    rows, stats, _ = make_split_pairs(
        recipe.train, 8, recipe, PairConfig(), tok, vocab, read_format(sft_final)
    )
    assert stats["pairs"] == 8
    return datasets.Dataset.from_dict(rows), model, tok, vocab


def dpo_conf(sft_final, tmp_path, *extra: str):
    return compose_conf(
        "dpo", [*TINY, GOLD, f"init={sft_final}", f"pairs.path={tmp_path / 'pairs'}", *extra]
    )


def make_trainer(conf, ds, model, tok, vocab, out, ref=True):
    from bayling_duplex.train.dpo import dpo_arguments
    from bayling_duplex.train.hf_args import lora_config

    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if ref else None
    return trainer_class()(
        model=model,
        ref_model=ref_model,
        args=dpo_arguments(conf, out, has_eval=False),
        data_collator=PreferenceCollator(pad_id=vocab.silence_id),
        train_dataset=ds,
        processing_class=tok,
        peft_config=lora_config(conf.lora) if conf.lora.enabled else None,
    )


def test_collator_batches_as_documented():
    rows = [
        {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5, 6]}
        | {"chosen_mask": [0, 1], "rejected_mask": [0, 1]},
        {"prompt_ids": [7], "chosen_ids": [8, 9], "rejected_ids": [8, 10]}
        | {"chosen_mask": [0, 1], "rejected_mask": [0, 1]},
    ]
    b = PreferenceCollator(pad_id=99)(rows)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4], [7, 8, 9, 99], [1, 2, 5, 6], [7, 8, 10, 99]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]] * 2
    assert b["completion_mask"].tolist() == [[0, 0, 0, 1], [0, 0, 1, 0]] * 2
    rows = [r | {"ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0} for r in rows]
    assert PreferenceCollator(pad_id=99)(rows)["ref_rejected_logps"].tolist() == [-2.0, -2.0]


def test_trl_version_and_the_parts_we_rely_on():
    """TRL is pinned: these are the hooks the duplex trainer and its collator depend on."""
    import trl
    from trl import DPOConfig, DPOTrainer

    assert trl.__version__ == "1.16.0"
    fields = DPOConfig.__dataclass_fields__
    for name in ("beta", "loss_type", "loss_weights", "precompute_ref_log_probs", "max_length"):
        assert name in fields
    assert DPOConfig(output_dir="x", use_cpu=True).bf16  # why we always set bf16 ourselves
    assert list(inspect.signature(DPOTrainer._prepare_dataset).parameters) == [
        "self",
        "dataset",
        "processing_class",
        "args",
        "dataset_name",
    ]
    loss_src = inspect.getsource(DPOTrainer._compute_loss)
    # the completion mask is what turns into labels: our scored-token mask goes there
    assert "masked_fill(completion_mask == 0, -100)" in loss_src
    for loss_type in TRL_LOSS_TYPES:
        assert f'"{loss_type}"' in loss_src


GENERIC = [
    "train.epochs=2",
    "train.max_steps=7",
    "train.batch_size=3",
    "train.grad_accum=2",
    "train.gradient_checkpointing=true",
    "train.logging_steps=5",
    "train.save_steps=50",
    "train.save_total_limit=3",
    "train.eval_steps=25",
    "train.dataloader_workers=1",
    "optim.lr=1e-4",
    "optim.weight_decay=0.01",
    "optim.warmup_ratio=0.2",
    "optim.scheduler=linear",
    "optim.max_grad_norm=0.5",
    "optim.adam_beta2=0.95",
    "run.wandb.mode=disabled",
    "run.seed=3",
]


def test_sft_and_dpo_arguments_come_from_the_one_mapping(tmp_path):
    """The same train.*/optim.* give SFT's TrainingArguments and DPO's DPOConfig the same
    generic keywords; each stage adds only its own."""
    from transformers import TrainingArguments
    from trl import DPOConfig

    from bayling_duplex.train.config import OptimConfig, TrainConfig
    from bayling_duplex.train.dpo import dpo_arguments
    from bayling_duplex.train.hf_args import training_kwargs
    from bayling_duplex.train.sft import training_arguments

    sft, dpo = compose_conf("sft", GENERIC), compose_conf("dpo", GENERIC)
    assert type(dpo.train) is TrainConfig and isinstance(sft.train, TrainConfig)
    assert type(dpo.optim) is type(sft.optim) is OptimConfig and dpo.optim == sft.optim
    generic = training_kwargs(dpo.train, dpo.optim, dpo.run, None, tmp_path, True)
    assert generic == training_kwargs(sft.train, sft.optim, sft.run, None, tmp_path, True)
    a, b = training_arguments(sft, tmp_path, True), dpo_arguments(dpo, tmp_path, True)
    assert type(a) is TrainingArguments and type(b) is DPOConfig
    for key in generic:
        assert getattr(a, key) == getattr(b, key), key
    assert (a.learning_rate, a.num_train_epochs, a.adam_beta2) == (1e-4, 2, 0.95)
    assert a.activation_checkpointing and a.eval_strategy == "steps" and a.eval_steps == 25
    # the stages' own keywords
    assert a.train_sampling_strategy == "group_by_length" and a.length_column_name == "num_blocks"
    assert (b.beta, b.loss_type, b.loss_weights) == (0.1, ["sigmoid", "sft"], [1.0, 1.0])
    assert b.gradient_checkpointing and b.max_length is None and not b.precompute_ref_log_probs
    # a stage cannot set a generic keyword its own way
    with pytest.raises(ValueError, match="learning_rate"):
        training_kwargs(dpo.train, dpo.optim, dpo.run, None, tmp_path, True, learning_rate=1.0)


def test_dpo_lora_has_no_trainable_token_rows():
    from bayling_duplex.train.config import LoraSettings
    from bayling_duplex.train.hf_args import lora_config

    assert lora_config(LoraSettings(r=4)).trainable_token_indices is None
    rows = lora_config(LoraSettings(r=4), [7, 8]).trainable_token_indices
    assert rows == {"embed_tokens": [7, 8], "lm_head": [7, 8]}


def test_trl_sums_exactly_the_scored_tokens_and_starts_at_log2(pairs, tmp_path):
    ds, model, tok, vocab = pairs
    conf = compose_conf("dpo", [*TINY, "dpo.sft_weight=0"])
    trainer = make_trainer(conf, ds, copy.deepcopy(model), tok, vocab, tmp_path)
    batch = PreferenceCollator(vocab.silence_id)([ds[i] for i in range(2)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        chosen, rejected = trainer.compute_ref_log_probs(trainer.ref_model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[
        ..., 0
    ]
    scored = batch["completion_mask"][:, 1:].bool()
    expected = (lp * scored).sum(1)
    torch.testing.assert_close(torch.cat([chosen, rejected]), expected, rtol=1e-4, atol=1e-3)
    # … and that is not what scoring every token after the prompt would give
    window = batch["attention_mask"][:, 1:].bool() & (batch["completion_mask"].cumsum(1)[:, 1:] > 0)
    assert not torch.allclose((lp * window).sum(1), expected)


def test_training_prefers_chosen_and_changes_every_parameter(pairs, tmp_path):
    ds, model, tok, vocab = pairs
    steps = ["train.max_steps=6", "optim.lr=3e-3", "optim.warmup_ratio=0", "train.batch_size=4"]
    conf = compose_conf("dpo", [*TINY, *steps, "dpo.sft_weight=0"])
    policy = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = make_trainer(conf, ds, policy, tok, vocab, tmp_path)
    trainer.train()
    for name, p in trainer.model.named_parameters():
        assert not torch.equal(before[name], p.detach()), f"{name} did not change"
    metrics = trainer.evaluate(ds)
    assert metrics["eval_rewards/margins"] > 0
    assert metrics["eval_rewards/accuracies"] > 0.5
    assert metrics["eval_loss"] < math.log(2)


def test_lora_trains_the_adapters_against_the_adapter_free_base(pairs, tmp_path):
    ds, model, tok, vocab = pairs
    conf = compose_conf(
        "dpo",
        [*TINY, "experiment=dpo_lora", "lora.r=4", "train.max_steps=3", "optim.warmup_ratio=0"],
    )
    trainer = make_trainer(conf, ds, copy.deepcopy(model), tok, vocab, tmp_path, ref=False)
    assert trainer.ref_model is None  # the reference is the model with its adapters off
    trainable = {
        n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad
    }
    assert trainable and all("lora_" in n for n in trainable)
    trainer.train()
    params = dict(trainer.model.named_parameters())
    for name, p in trainable.items():
        assert not torch.equal(p, params[name].detach()), f"{name} did not change"


def test_run_dpo_on_cpu_writes_the_checkpoint_and_the_before_after_report(sft_final, tmp_path):
    from bayling_duplex.data.load import DataMismatchError
    from bayling_duplex.model.backbone import load_trained
    from bayling_duplex.train.dpo import run_dpo

    conf = dpo_conf(sft_final, tmp_path, *SMALL_RUN)
    summary = run_dpo(conf, tmp_path / "run")
    final = tmp_path / "run" / "final"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "duplex.json"):
        assert (final / name).is_file()
    assert json.loads((final / "duplex.json").read_text())["stage"] == "dpo"
    assert summary["steps"] == 2 and summary["pairs"]["train"]["pairs"] == 24
    assert "eval_rewards/accuracies" in summary
    behaviour = summary["behaviour"]
    assert set(behaviour) == {"sft", "dpo", "delta", "sr_isr_kept", "paired"}
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report) == {"sft", "dpo"}
    assert "| SR@3s" in (tmp_path / "run" / "summary.md").read_text()
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["behaviour"]["delta"] == behaviour["delta"]
    manifest = json.loads((tmp_path / "pairs" / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["splits"]["train"]["pairs"] == 24
    load_trained(final, conf.vocab)  # decoding loads it like any checkpoint of this project
    # pairs of another configuration are refused, naming what differs
    other = dpo_conf(sft_final, tmp_path, *SMALL_RUN, "pairs.make.window_blocks=3")
    with pytest.raises(DataMismatchError, match="recipe"):
        run_dpo(other, tmp_path / "run2")


def test_lora_run_saves_the_adapter_and_a_merged_checkpoint(sft_final, tmp_path):
    from bayling_duplex.train.dpo import run_dpo

    conf = dpo_conf(
        sft_final, tmp_path, *SMALL_RUN, "experiment=dpo_lora", "lora.r=4", "eval.enabled=false"
    )
    run_dpo(conf, tmp_path / "run")
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "final" / "adapter_config.json").exists()


def test_a_lora_sft_checkpoint_is_merged_and_trained_as_init(tmp_path):
    from helpers import build_small_demo

    from bayling_duplex.train.dpo import run_dpo
    from bayling_duplex.train.sft import run_sft

    data = build_small_demo(tmp_path / "demo", tmp_path / "cache", train=16, heldout=4)
    sft = [*TINY, f"data.path={data}", "lora.enabled=true", "lora.r=4", "train.max_steps=1"]
    sft += ["train.eval_steps=0", "train.eval_dialogues=0", "train.behaviour_dialogues=0"]
    run_sft(compose_conf("sft", sft), tmp_path / "sft")
    assert (tmp_path / "sft" / "final" / "adapter_config.json").is_file()
    conf = dpo_conf(tmp_path / "sft" / "final", tmp_path, *SMALL_RUN, "eval.enabled=false")
    assert run_dpo(conf, tmp_path / "dpo")["steps"] == 2


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dpo.loss_type=[magic]", "dpo.loss_type"),
        ("dpo.loss_type=[sigmoid,sft]", "dpo.sft_weight"),
        ("train.precision=int8", "train.precision"),
        ("optim.lr=0", "optim.lr"),
        ("dpo.beta=0", "dpo.beta"),
        ("pairs.make.shift_blocks=[0,1]", "pairs.make.shift_blocks"),
        ("pairs.train=0", "pairs.train"),
    ],
)
def test_bad_values_fail_naming_the_key(override, key):
    from bayling_duplex.cli.hydra import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_conf("dpo", [override])


def test_latest_without_an_sft_run_says_how_to_make_one(tmp_path):
    from bayling_duplex.model.checkpoint import latest_finished

    with pytest.raises(FileNotFoundError, match=r"python -m bayling_duplex\.train sft"):
        latest_finished("sft", tmp_path / "runs")


def test_cli_default_without_sft_run_explains(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "bayling_duplex.train", "dpo", "run.wandb.mode=disabled"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert "python -m bayling_duplex.train sft" in res.stderr


def _small(*extra: str) -> list[str]:
    """SMALL_RUN with ``extra`` in place of its values for the same keys."""
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in SMALL_RUN if o.split("=", 1)[0] not in keys] + list(extra)


def test_resume_skips_a_half_written_checkpoint_and_reports_the_run_loss(sft_final, tmp_path):
    """A run killed after its checkpoint-2 (and while writing checkpoint-3) resumes from
    checkpoint-2; its train_loss is the mean over all steps, as in the uninterrupted run
    (logged every 3 steps: the loss of steps 1-2 was not logged when checkpoint-2 was saved)."""
    import shutil

    from bayling_duplex.train.dpo import run_dpo

    steps = _small(
        "train.max_steps=4",
        "train.save_steps=2",
        "train.logging_steps=3",
        "train.save_total_limit=3",
        "eval.enabled=false",
    )
    full = run_dpo(dpo_conf(sft_final, tmp_path, *steps), tmp_path / "full")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", cut / "checkpoint-2")
    (cut / "checkpoint-3").mkdir()  # killed while saving: weights, no trainer_state.json
    shutil.copy(cut / "checkpoint-2" / "model.safetensors", cut / "checkpoint-3")
    resumed = run_dpo(dpo_conf(sft_final, tmp_path, *steps, "run.resume=true"), cut)
    assert resumed["resumed_from"] == str(cut / "checkpoint-2") and resumed["steps"] == 4
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-5)
    assert json.loads((cut / "summary.json").read_text())["train_loss"] == resumed["train_loss"]


def test_dpo_ctrl_c_saves_the_step_and_names_the_checkpoint(sft_final, tmp_path, monkeypatch):
    import signal

    from bayling_duplex.train.dpo import run_dpo
    from bayling_duplex.train.sft_trainer import TrainingInterrupted

    cls = trainer_class()
    original, calls = cls.compute_loss, []

    def compute_loss(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "compute_loss", compute_loss)
    steps = _small("train.max_steps=4", "eval.enabled=false")
    with pytest.raises(TrainingInterrupted, match=r"^stopped at step 2; resume with run\.resume"):
        run_dpo(dpo_conf(sft_final, tmp_path, *steps), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "final").exists()


def test_lora_target_modules_are_checked_before_the_pairs_are_made(sft_final, tmp_path):
    from bayling_duplex.cli.hydra import ConfigError
    from bayling_duplex.train.dpo import run_dpo

    conf = dpo_conf(sft_final, tmp_path, "lora.enabled=true", "lora.target_modules=[nope]")
    with pytest.raises(ConfigError, match=r"lora\.target_modules: \['nope'\].*q_proj"):
        run_dpo(conf, tmp_path / "run")
    assert not (tmp_path / "pairs").exists()
