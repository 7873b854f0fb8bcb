"""The DPO stage: ``python -m bayling_duplex.train dpo`` (docs/dpo.md).

The paper's light second stage teaches *when* to start and stop: pairs with the
same content and different timing (:mod:`bayling_duplex.data.pairs`), trained
with TRL's ``DPOTrainer`` against a frozen copy of the SFT checkpoint (or, under
LoRA, the adapter-free base). Steps of :func:`run_dpo`:

1. the SFT checkpoint (``init``), its tokenizer and its format;
2. pairs, built once into ``pairs.path`` (fingerprinted like the SFT data);
3. policy and reference model;
4. TRL's trainer fed pre-tokenized pairs and scored-token masks;
5. train, then the held-out pairs' rewards;
6. save ``final/`` (merged when LoRA);
7. behaviour evaluation before (SFT) and after (DPO) on the same held-out dialogues.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bayling_duplex.cli.run_dir import RunConfig
from bayling_duplex.data.pair_build import PAIR_COLUMNS, PairDataConfig, load_pairs
from bayling_duplex.decode.decoder import DecodeConfig
from bayling_duplex.eval.dialogues import EvalSetConfig
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig
from bayling_duplex.train.sft import PRECISIONS, LoraSettings

log = logging.getLogger("bayling_duplex.dpo")
# TRL 1.16's DPOConfig.loss_type values (tests/test_dpo.py pins them against TRL)
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


# ----------------------------------------------------------------------------- config


@dataclass
class DpoTrainConfig:
    """TRL's DPO hyperparameters and the loop around them."""

    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # TRL_LOSS_TYPES
    loss_weights: list[float] | None = None  # one per loss_type (None: all 1)
    # > 0 adds TRL's "sft" loss (NLL of the chosen side's scored tokens) with this weight: it
    # anchors the chosen decision token, which a pairwise margin alone can let drift (docs/dpo.md)
    sft_weight: float = 1.0
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # pairs per device (each is two sequences)
    grad_accum: int = 1
    precision: str = "fp32"  # fp32, bf16, fp16 (TRL would default to bf16 even on CPU)
    gradient_checkpointing: bool = False  # TRL would default to true
    # reference log-probs computed once before training: the reference model leaves memory
    precompute_ref: bool = False
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 1
    eval_steps: int = 0  # held-out pair rewards every this many steps (0: at the end only)

    def __post_init__(self) -> None:
        unknown = [t for t in self.loss_type if t not in TRL_LOSS_TYPES]
        if not self.loss_type or unknown:
            raise ValueError(f"dpo.loss_type must hold values of {TRL_LOSS_TYPES}, got {unknown}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("dpo.loss_weights needs one weight per dpo.loss_type")
        if self.sft_weight < 0 or (self.sft_weight > 0 and "sft" in self.loss_type):
            raise ValueError("dpo.sft_weight must be >= 0, and not set when loss_type has 'sft'")
        if self.beta <= 0 or self.lr <= 0:
            raise ValueError("dpo.beta and dpo.lr must be positive")
        if self.precision not in PRECISIONS:
            raise ValueError(f"dpo.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError("dpo.batch_size and dpo.grad_accum must be positive")

    def losses(self) -> tuple[list[str], list[float]]:
        """TRL's ``loss_type`` and ``loss_weights``, the SFT term appended when asked."""
        types = list(self.loss_type)
        weights = list(self.loss_weights or [1.0] * len(types))
        if self.sft_weight > 0:
            types.append("sft")
            weights.append(self.sft_weight)
        return types, weights


@dataclass
class DpoEvalConfig:
    """Behaviour evaluation of the SFT checkpoint and the DPO result on the same dialogues."""

    enabled: bool = True
    evalset: EvalSetConfig = field(default_factory=EvalSetConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    batch_size: int = 16
    plots: int = 8


@dataclass
class DpoConfig:
    """Root config of ``python -m bayling_duplex.train dpo``.

    ``model`` says how to load (dtype, attention); the weights come from ``init``.
    ``data.recipe`` names the recipe whose sources, format and synthesis the
    pairs are made from (``data.build_if_missing``: build them when missing).
    """

    stage: str = "dpo"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    data: TrainDataConfig = field(default_factory=lambda: TrainDataConfig())
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig())
    # the SFT checkpoint folder; "latest": the newest runs/sft/*/final
    init: str = "latest"
    pairs: PairDataConfig = field(default_factory=PairDataConfig)
    dpo: DpoTrainConfig = field(default_factory=DpoTrainConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: DpoEvalConfig = field(default_factory=DpoEvalConfig)


# ----------------------------------------------------------------------------- init checkpoint

DUPLEX_META = "duplex.json"


def latest_sft(runs: Path = Path("runs")) -> Path:
    """The newest finished SFT run's ``final/`` (one written with its ``duplex.json``)."""
    finals = [
        p
        for p in (runs / "sft").glob("*/final")
        if (p / DUPLEX_META).is_file() and (p.parent / "summary.json").is_file()
    ]
    if not finals:
        raise FileNotFoundError(
            f"no finished SFT run under {runs / 'sft'}/*/final (with {DUPLEX_META}); "
            "DPO starts from one, so train it first:\n  python -m bayling_duplex.train sft"
        )
    return max(finals, key=lambda p: (p.parent / "summary.json").stat().st_mtime)


def resolve_init(init: str) -> Path:
    path = latest_sft() if init == "latest" else Path(init)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"init={init!r}: {path} holds no checkpoint (no config.json)")
    return path


def load_init(path: Path, vocab_cfg: VocabConfig, model_cfg: ModelConfig):
    """``(model, tokenizer, vocab)`` of an SFT checkpoint; a LoRA one is merged into its base."""
    from bayling_duplex.model.backbone import DTYPES, load_trained

    if not (path / "adapter_config.json").is_file():
        return load_trained(path, vocab_cfg, model_cfg.dtype)
    from peft import AutoPeftModelForCausalLM

    from bayling_duplex.format.vocab import resolve_vocab
    from bayling_duplex.model.backbone import load_tokenizer

    model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[model_cfg.dtype])
    tokenizer = load_tokenizer(path)
    merged = model.merge_and_unload().requires_grad_(True)  # PEFT had frozen the base
    return merged, tokenizer, resolve_vocab(tokenizer, vocab_cfg)


def format_of(init: Path):
    """The checkpoint's format (layout and silence codes) from its ``duplex.json``."""
    from bayling_duplex.data.recipe import FormatConfig

    meta = init / DUPLEX_META
    if not meta.is_file():
        raise FileNotFoundError(f"{init} has no {DUPLEX_META}: its format is unknown")
    return FormatConfig(**json.loads(meta.read_text())["format"])


# ----------------------------------------------------------------------------- trainer


@dataclass
class PreferenceCollator:
    """Pairs → TRL's batch: the chosen rows, then the rejected rows, right-padded.

    TRL turns ``completion_mask`` into labels (-100 where 0) and sums the
    log-probabilities of the rest, so putting the scored-token masks there keeps
    user audio (and the prompt) out of both policy and reference log-probs. Example
    (pad ``P``)::

        {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5, 6],
         "chosen_mask": [0, 1], "rejected_mask": [0, 1]}
        {"prompt_ids": [7], "chosen_ids": [8, 9], "rejected_ids": [8, 10],
         "chosen_mask": [0, 1], "rejected_mask": [0, 1]}
        ->
        input_ids        [[1, 2, 3, 4], [7, 8, 9, P], [1, 2, 5, 6], [7, 8, 10, P]]
        attention_mask   [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
        completion_mask  [[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0]]

    Precomputed ``ref_chosen_logps`` / ``ref_rejected_logps`` pass through.
    """

    pad_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for side in ("chosen", "rejected"):
            for r in rows:
                seqs.append([*r["prompt_ids"], *r[f"{side}_ids"]])
                masks.append([0] * len(r["prompt_ids"]) + list(r[f"{side}_mask"]))
        n = max(len(s) for s in seqs)
        out = {
            "input_ids": torch.full((len(seqs), n), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(seqs), n), dtype=torch.long),
            "completion_mask": torch.zeros((len(seqs), n), dtype=torch.long),
        }
        for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            out["input_ids"][i, : len(s)] = torch.as_tensor(s)
            out["attention_mask"][i, : len(s)] = 1
            out["completion_mask"][i, : len(m)] = torch.as_tensor(m)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in rows[0]:
                out[key] = torch.tensor([r[key] for r in rows])
        return out


@functools.cache
def trainer_class() -> type:
    """:class:`DuplexDPOTrainer`, defined on first use: importing TRL takes seconds, and every
    command imports this module (its root config is registered with the others)."""
    from trl import DPOTrainer

    class DuplexDPOTrainer(DPOTrainer):
        """TRL's ``DPOTrainer`` on pre-tokenized duplex pairs; one method overridden.

        ``_prepare_dataset``: TRL's version extracts a prompt from text, appends EOS
        and tokenizes ``prompt``/``chosen``/``rejected`` strings. Duplex pairs are
        already ids cut on block boundaries, an EOS is a token the format does not
        have, and the scored-token masks must survive; so here preparation only
        checks the columns. The masks reach the loss through
        :class:`PreferenceCollator` (TRL's ``completion_mask``). Everything else is
        TRL's: losses, beta, reference model (frozen copy, adapter-free base under
        PEFT, or precomputed log-probs), DeepSpeed, PEFT.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = [c for c in PAIR_COLUMNS if c not in dataset.column_names]
            if missing:
                raise ValueError(f"{dataset_name} pairs lack the columns {missing}")
            return dataset

    return DuplexDPOTrainer


def dpo_arguments(conf: DpoConfig, run_dir: Path, has_eval: bool):
    """TRL's ``DPOConfig`` for this run."""
    from trl import DPOConfig as TrlDPOConfig

    from bayling_duplex.train.sft import _ensure_single_process_env, _has_accelerator

    d = conf.dpo
    if conf.deepspeed.config is not None:
        _ensure_single_process_env()
    loss_type, loss_weights = d.losses()
    return TrlDPOConfig(
        output_dir=str(run_dir),
        beta=d.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        learning_rate=d.lr,
        weight_decay=d.weight_decay,
        warmup_steps=d.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=d.scheduler,
        max_grad_norm=d.max_grad_norm,
        num_train_epochs=d.epochs,
        max_steps=d.max_steps,
        per_device_train_batch_size=d.batch_size,
        per_device_eval_batch_size=d.batch_size,
        gradient_accumulation_steps=d.grad_accum,
        # TRL defaults both to True even on CPU: always say
        bf16=d.precision == "bf16",
        fp16=d.precision == "fp16",
        gradient_checkpointing=d.gradient_checkpointing,
        activation_checkpointing=d.gradient_checkpointing,
        max_length=None,  # pairs are cut on block boundaries when made; never truncate
        precompute_ref_log_probs=d.precompute_ref,
        remove_unused_columns=False,  # keep the mask columns for the collator
        logging_steps=d.logging_steps,
        save_strategy="steps",
        save_steps=d.save_steps,
        save_total_limit=d.save_total_limit,
        eval_strategy="steps" if has_eval and d.eval_steps > 0 else "no",
        eval_steps=d.eval_steps if d.eval_steps > 0 else None,
        seed=conf.run.seed,
        data_seed=conf.run.seed,
        report_to=[] if conf.run.wandb.mode == "disabled" else ["wandb"],
        run_name=conf.run.name,
        deepspeed=conf.deepspeed.config,
        use_cpu=not _has_accelerator(),
        disable_tqdm=False,
    )


def lora_config(settings: LoraSettings):
    """PEFT's config for TRL. No trainable token rows: SFT already taught the duplex rows,
    and TRL's fused LM head reads ``lm_head.weight`` directly (an adapter there is refused)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )


# ----------------------------------------------------------------------------- stage


def run_dpo(conf: DpoConfig, run_dir: Path) -> dict:
    """Train; write ``final/``, ``summary.json`` and the before/after report into ``run_dir``."""
    from bayling_duplex.runtime import is_main_process, write_json
    from bayling_duplex.train.sft import _configure_wandb, last_checkpoint

    run_dir = Path(run_dir)
    _configure_wandb(conf, run_dir)
    # 1. the SFT checkpoint, its tokenizer and its format
    init = resolve_init(conf.init)
    fmt = format_of(init)
    spec = fmt.spec()
    model, tokenizer, vocab = load_init(init, conf.vocab, conf.model)
    # 2. pairs made with this tokenizer and format
    train_ds, eval_ds, manifest = load_pairs(conf, tokenizer, vocab, spec)
    # 3. reference: a frozen copy, unless LoRA (adapters off) or precomputed log-probs
    ref = None
    if not conf.lora.enabled and not conf.dpo.precompute_ref:
        ref = load_init(init, conf.vocab, conf.model)[0].eval().requires_grad_(False)
    # 4. TRL's trainer on our pairs
    args = dpo_arguments(conf, run_dir, eval_ds is not None)
    trainer = trainer_class()(
        model=model,
        ref_model=ref,
        args=args,
        data_collator=PreferenceCollator(pad_id=vocab.silence_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(conf.lora) if conf.lora.enabled else None,
    )
    resume = last_checkpoint(run_dir) if conf.run.resume else None
    # 5. train, then the held-out pairs
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate() if eval_ds is not None else {}
    # 6. save (every rank: ZeRO-3 gathers the weights collectively)
    final = run_dir / "final"
    trainer.save_model(str(run_dir / "adapter" if conf.lora.enabled else final))
    summary = {
        "stage": "dpo",
        "run_dir": str(run_dir),
        "init": str(init),
        "steps": trainer.state.global_step,
        "resumed_from": str(resume) if resume else None,
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "train_pairs": len(train_ds),
        "pairs": {s: {k: v[k] for k in ("pairs", "kinds")} for s, v in manifest["splits"].items()},
        **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
        "checkpoint": str(final),
    }
    if not is_main_process():
        return summary
    # rank 0 alone loads plain models from here on; under ZeRO-3, transformers would
    # otherwise partition them at load time, a collective the other ranks never join
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if conf.lora.enabled:
        merge_adapter(init, run_dir / "adapter", final, conf)
    tokenizer.save_pretrained(final)
    write_json(
        final / DUPLEX_META,
        {
            "format": {**manifest["layout"], "silence_codes": manifest["silence_codes"]},
            "data": manifest["name"],
            "stage": "dpo",
            "init": str(init),
        },
    )
    # 7. behaviour before and after, on the same held-out dialogues
    if conf.eval.enabled:
        summary["behaviour"] = behaviour_before_after(conf, init, final, spec, run_dir, summary)
    summary["log_history"] = trainer.state.log_history
    write_json(run_dir / "summary.json", summary)
    short = {k: v for k, v in summary.items() if k != "log_history"}
    print("DPO summary: " + json.dumps(short, indent=1))
    return summary


def merge_adapter(init: Path, adapter: Path, final: Path, conf: DpoConfig) -> None:
    """``final/``: the SFT weights with the DPO adapter merged in (what decoding loads)."""
    from peft import PeftModel

    base = load_init(init, conf.vocab, conf.model)[0]
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(final)


# ----------------------------------------------------------------------------- behaviour

HEADLINE = (
    ("SR@3s", "up"),
    ("early_start", "down"),
    ("no_response", "down"),
    ("latency_mean_s", "down"),
    ("ISR@2s", "up"),
    ("overlap_mean_s", "down"),
    ("backchannel_robustness", "up"),
    ("hesitation_robustness", "up"),
    ("accuracy", "up"),
)


def headline(report: dict) -> dict[str, float | None]:
    from bayling_duplex.eval.runner import flat_metrics

    flat = {k.split("/", 1)[1]: v for k, v in flat_metrics(report).items()}
    flat["backchannel_robustness"] = report["backchannel_robustness"]
    flat["hesitation_robustness"] = report["hesitation_robustness"]
    return {k: flat.get(k) for k, _ in HEADLINE}


def behaviour_before_after(
    conf: DpoConfig, init: Path, final: Path, spec, run_dir: Path, summary: dict
) -> dict:
    """Evaluate ``init`` (SFT) and ``final`` (DPO) on the same dialogues; write the report."""
    from bayling_duplex.eval.dialogues import build_eval_items
    from bayling_duplex.eval.runner import evaluate_model, markdown_summary, write_report
    from bayling_duplex.model.backbone import load_trained

    reports, outcomes, items = {}, {}, None
    for label, path in (("sft", init), ("dpo", final)):
        model, tok, vocab = (
            load_init(path, conf.vocab, conf.model)
            if label == "sft"
            else load_trained(path, conf.vocab, conf.model.dtype)
        )
        if items is None:
            items = build_eval_items(
                conf.eval.evalset,
                spec,
                lambda t, tk=tok: tk(t, add_special_tokens=False)["input_ids"],
            )
        log.info("behaviour evaluation of %s (%s) on %d dialogues", label, path, len(items))
        reports[label], outcomes[label], _ = evaluate_model(
            model, tok, vocab, spec.layout, items, conf.eval.decode, conf.eval.batch_size
        )
    write_report(run_dir, reports, outcomes, items, spec.layout, conf.eval.plots)
    before, after = headline(reports["sft"]), headline(reports["dpo"])
    delta = {
        k: None if before[k] is None or after[k] is None else round(after[k] - before[k], 4)
        for k in before
    }
    kept = all(
        after[k] is None or before[k] is None or after[k] >= before[k] - 1e-9
        for k in ("SR@3s", "ISR@2s")
    )
    result = {"sft": before, "dpo": after, "delta": delta, "sr_isr_kept": kept}
    (run_dir / "summary.md").write_text(
        _markdown(summary, result) + "\n" + markdown_summary(reports)
    )
    if not kept:
        log.warning("DPO lowered SR@3s or ISR@2s: %s", delta)
    return result


def _markdown(summary: dict, result: dict) -> str:
    lines = [
        "# DPO: before (SFT) and after",
        "",
        f"- init: `{summary['init']}`; {summary['steps']} steps on {summary['train_pairs']} pairs "
        f"({summary['train_seconds']} s); pairs by kind: {summary['pairs']['train']['kinds']}",
    ]
    if "eval_rewards/accuracies" in summary:
        lines.append(
            f"- held-out pairs: reward accuracy {summary['eval_rewards/accuracies']:.3f}, "
            f"margin {summary['eval_rewards/margins']:.3f}"
        )
    lines.append(f"- SR@3s and ISR@2s kept: {'yes' if result['sr_isr_kept'] else '**no**'}")
    lines += ["", "| metric | SFT | DPO | change |", "|---|---|---|---|"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for key, better in HEADLINE:
        b, a, d = result["sft"][key], result["dpo"][key], result["delta"][key]
        lines.append(f"| {key} ({better} is better) | {fmt(b)} | {fmt(a)} | {fmt(d)} |")
    return "\n".join(lines) + "\n"


# At the bottom: schemas imports this module for its root config, and these two
# component configs live there (both import orders then resolve).
from bayling_duplex.cli.schemas import DeepSpeedConfig, TrainDataConfig  # noqa: E402
