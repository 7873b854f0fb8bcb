"""The SFT stage: ``python -m bayling_duplex.train sft`` (setup → train → save, in numbered steps)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bayling_duplex.train.loss import LossWeights

log = logging.getLogger("bayling_duplex.sft")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = (
        "cosine"  # any transformers SchedulerType: linear, cosine, constant_with_warmup …
    )
    max_grad_norm: float = 1.0
    adam_beta2: float = 0.98

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")


@dataclass
class TrainConfig:
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16  # per device
    grad_accum: int = 1
    precision: str = "fp32"  # fp32, bf16, fp16
    gradient_checkpointing: bool = False
    group_by_length: bool = True  # batches of similar length (little padding)
    pack: bool = False  # several dialogues per row, attention kept inside each dialogue
    logging_steps: int = 20
    save_steps: int = 500
    save_total_limit: int = 2
    # held-out losses (and behaviour) every this many steps (0: only at the end)
    eval_steps: int = 250
    eval_dialogues: int = 200  # held-out dialogues for that loss
    # behaviour evaluation (SR@3s, ISR@2s …) on this many held-out dialogues at each
    # evaluation, split over the four sets; 0 turns it off
    behaviour_dialogues: int = 48
    dataloader_workers: int = 0
    # stop (after saving a checkpoint) at this step: simulates a run that dies, for resume tests
    stop_after_steps: int | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError("train.batch_size and train.grad_accum must be positive")


@dataclass
class LoraSettings:
    enabled: bool = False  # full fine-tuning by default
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_up_proj",
            "down_proj",
        ]
    )


def apply_lora(model, settings: LoraSettings, token_ids: list[int]):
    """Wrap ``model`` with LoRA adapters; the duplex tokens' input and output rows stay trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        trainable_token_indices={"embed_tokens": token_ids, "lm_head": token_ids},
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def _ensure_single_process_env() -> None:
    # DeepSpeed without a launcher looks for MPI unless these are set (stack-notes.md)
    for k, v in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def training_arguments(conf, run_dir: Path, has_eval: bool):
    from transformers import TrainingArguments

    t, o = conf.train, conf.optim
    if conf.deepspeed.config is not None:
        _ensure_single_process_env()
    return TrainingArguments(
        output_dir=str(run_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        warmup_steps=o.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=o.scheduler,
        max_grad_norm=o.max_grad_norm,
        adam_beta2=o.adam_beta2,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval and t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="num_blocks",
        remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_workers,
        seed=conf.run.seed,
        data_seed=conf.run.seed,
        report_to=[] if conf.run.wandb.mode == "disabled" else ["wandb"],
        run_name=conf.run.name,
        deepspeed=conf.deepspeed.config,
        disable_tqdm=False,
        save_only_model=False,
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def stop_after(step: int):
    """A callback that saves and stops at ``step``: a run that dies mid-way, for resume tests."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAfter()


def run_sft(conf, run_dir: Path) -> dict:
    """Train; write checkpoints, ``final/`` and ``summary.json`` into ``run_dir``; return the summary."""
    from bayling_duplex.runtime import is_main_process, write_json
    from bayling_duplex.data.load import load_training_data
    from bayling_duplex.model.backbone import load_backbone
    from bayling_duplex.train.collate import DuplexCollator
    from bayling_duplex.train.sft_trainer import DuplexTrainer

    run_dir = Path(run_dir)
    _configure_wandb(conf, run_dir)
    # 1. backbone with the duplex vocabulary (tiny one cached in the run folder)
    model, tokenizer, vocab = load_backbone(conf.model, conf.vocab, run_dir / "backbone")
    # 2. data, checked against this vocabulary
    train_ds, eval_ds, manifest = load_training_data(
        conf.data, vocab, tokenizer, conf.train.eval_dialogues, conf.model, conf.vocab
    )
    # 3. optional LoRA
    if conf.lora.enabled:
        model = apply_lora(model, conf.lora, list(vocab.control_ids))
    # 4. trainer
    args = training_arguments(conf, run_dir, eval_ds is not None)
    callbacks = [stop_after(conf.train.stop_after_steps)] if conf.train.stop_after_steps else []
    behaviour = _behaviour_callback(conf, manifest, tokenizer, vocab)
    if behaviour is not None:
        callbacks.append(behaviour)
    trainer = DuplexTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DuplexCollator(pad_id=vocab.silence_id, pack=conf.train.pack),
        processing_class=tokenizer,
        callbacks=callbacks,
        loss_weights=conf.train.loss_weights.table(),
    )
    if behaviour is not None:
        behaviour.trainer = trainer
    resume = last_checkpoint(run_dir) if conf.run.resume else None
    if conf.run.resume and resume is None:
        log.warning("run.resume=true but %s holds no checkpoint: starting from scratch", run_dir)
    # 5. train
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    stopped_early = (
        bool(conf.train.stop_after_steps) and trainer.state.global_step < trainer.state.max_steps
    )
    metrics = trainer.evaluate() if eval_ds is not None and not stopped_early else {}
    # 6. save (every rank: ZeRO-3 gathers the weights collectively)
    final = run_dir / "final"
    if not stopped_early:
        trainer.save_model(str(final))
    summary = {
        "stage": "sft",
        "run_dir": str(run_dir),
        "steps": trainer.state.global_step,
        "stopped_early": stopped_early,
        "resumed_from": str(resume) if resume else None,
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "train_sequences": len(train_ds),
        "data": manifest["name"],
        **{k: round(v, 4) for k, v in metrics.items()},
        **(behaviour.last if behaviour is not None and not stopped_early else {}),
        "checkpoint": str(final) if not stopped_early else None,
        "log_history": trainer.state.log_history,
    }
    if is_main_process():
        if not stopped_early:
            tokenizer.save_pretrained(final)
            # what decoding needs to know about the data the model learnt
            write_json(
                final / "duplex.json",
                {
                    "format": {**manifest["layout"], "silence_codes": manifest["silence_codes"]},
                    "data": manifest["name"],
                    "stage": "sft",
                },
            )
        write_json(run_dir / "summary.json", summary)
        short = {k: v for k, v in summary.items() if k != "log_history"}
        print("SFT summary: " + json.dumps(short, indent=1))
    return summary


def _behaviour_callback(conf, manifest: dict, tokenizer, vocab):
    """The in-training behaviour evaluation, when asked for and when held-out scripts exist."""
    n = conf.train.behaviour_dialogues
    if n <= 0:
        return None
    if conf.data.eval_scripts is None and manifest["name"] != "demo":
        log.info("no data.eval_scripts: behaviour evaluation during training is off")
        return None
    from bayling_duplex.data.recipe import FormatConfig
    from bayling_duplex.decode.decoder import DecodeConfig
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_items
    from bayling_duplex.eval.runner import behaviour_callback

    quarter = max(1, n // 4)
    src = (
        {"source": "demo"}
        if conf.data.eval_scripts is None
        else {"source": "scripts_jsonl", "path": conf.data.eval_scripts}
    )
    evalset = EvalSetConfig(
        **src,
        turn_taking=quarter,
        interruption=quarter,
        backchannel=quarter,
        hesitation=n - 3 * quarter,
    )
    spec = FormatConfig(**{**manifest["layout"], "silence_codes": manifest["silence_codes"]}).spec()
    items = build_eval_items(
        evalset, spec, lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    return behaviour_callback(
        items, tokenizer, vocab, spec.layout, DecodeConfig(), conf.train.batch_size
    )


def _configure_wandb(conf, run_dir: Path) -> None:
    w = conf.run.wandb
    os.environ["WANDB_MODE"] = w.mode
    os.environ.setdefault("WANDB_PROJECT", w.project)
    if w.entity:
        os.environ.setdefault("WANDB_ENTITY", w.entity)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
