"""Our settings as Hugging Face arguments, once for both stages.

:func:`training_kwargs` maps ``train.*``, ``optim.*``, the run settings and the
DeepSpeed config to the ``TrainingArguments`` keywords every stage sets alike; a
stage passes only its own keywords on top (SFT: length-grouped sampling; DPO:
TRL's beta, losses, reference log-probs …) and builds its arguments class
(``transformers.TrainingArguments``, TRL's ``DPOConfig``) from the result.
:func:`lora_config` is the one LoRA builder; :func:`ensure_single_process_env`
and :func:`has_accelerator` are the launch environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bayling_duplex.train.config import LoraSettings, OptimConfig, TrainConfig


def ensure_single_process_env() -> None:
    """The distributed environment of a single process, where no launcher set one."""
    # DeepSpeed without a launcher looks for MPI unless these are set (stack-notes.md)
    for k, v in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))


def has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()


def training_kwargs(
    train: TrainConfig,
    optim: OptimConfig,
    run,
    deepspeed: dict[str, Any] | None,
    run_dir: str | Path,
    has_eval: bool,
    **extra: Any,
) -> dict[str, Any]:
    """``TrainingArguments`` keywords for a run: the generic ones, then the stage's ``extra``.

    ``run`` is the run settings (``run.seed``, ``run.name``, ``run.wandb.mode``),
    ``deepspeed`` the inline DeepSpeed config or None. A stage's ``extra`` may not
    set a generic keyword again (ValueError): the generic keys mean the same in
    every stage. With DeepSpeed, the single-process launch environment is set
    where no launcher set one.
    """
    if deepspeed is not None:
        ensure_single_process_env()
    t, o = train, optim
    kwargs: dict[str, Any] = {
        "output_dir": str(run_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps,
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": o.lr,
        "weight_decay": o.weight_decay,
        "warmup_steps": o.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "lr_scheduler_type": o.scheduler,
        "max_grad_norm": o.max_grad_norm,
        "adam_beta2": o.adam_beta2,
        # always both: TRL defaults bf16 to True even on CPU
        "bf16": t.precision == "bf16",
        "fp16": t.precision == "fp16",
        "activation_checkpointing": t.gradient_checkpointing,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": "steps" if has_eval and t.eval_steps > 0 else "no",
        "eval_steps": t.eval_steps if t.eval_steps > 0 else None,
        # the collators read columns the model's forward does not take (classes, masks)
        "remove_unused_columns": False,
        "dataloader_num_workers": t.dataloader_workers,
        "seed": run.seed,
        "data_seed": run.seed,
        "report_to": [] if run.wandb.mode == "disabled" else ["wandb"],
        "run_name": run.name,
        "deepspeed": deepspeed,
        "disable_tqdm": False,
        "save_only_model": False,
        "use_cpu": not has_accelerator(),
    }
    clash = sorted(set(extra) & set(kwargs))
    if clash:
        raise ValueError(f"{clash} are generic keywords, set by training_kwargs from train/optim")
    return {**kwargs, **extra}


def lora_config(settings: LoraSettings, trainable_tokens: list[int] | None = None):
    """peft's ``LoraConfig`` for ``settings``.

    ``trainable_tokens`` (SFT: the duplex tokens): their input and output rows
    stay trainable next to the adapters, since the base never learnt them. DPO
    passes none: SFT already taught the duplex rows, and TRL's fused LM head reads
    ``lm_head.weight`` directly (an adapter there is refused).
    """
    from peft import LoraConfig

    rows = {}
    if trainable_tokens is not None:
        ids = list(trainable_tokens)
        rows["trainable_token_indices"] = {"embed_tokens": ids, "lm_head": ids}
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
        **rows,
    )


def configure_wandb(w, run_dir: Path) -> None:
    """wandb's environment from ``run.wandb`` (the Trainer's integration reads it)."""
    os.environ["WANDB_MODE"] = w.mode
    os.environ.setdefault("WANDB_PROJECT", w.project)
    if w.entity:
        os.environ.setdefault("WANDB_ENTITY", w.entity)
    os.environ.setdefault("WANDB_DIR", str(run_dir))
