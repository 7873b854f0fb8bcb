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

    ``run`` is the run settings (``run.seed``, ``run.name``, ``run.wandb``: :func:`wandb_mode`),
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
        "report_to": [] if wandb_mode(run.wandb) == "disabled" else ["wandb"],
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


# configure_wandb's bookkeeping: the value it last set for each wandb variable, and the
# environment's own value it replaced. A later job in the same process (a --multirun
# sweep) then sets its own values instead of inheriting the previous job's.
_WANDB_OURS: dict[str, str | None] = {}
_WANDB_USER: dict[str, str | None] = {}


def _user_env(key: str) -> str | None:
    """``$key`` as the user's environment has it, not as an earlier job of this process set it."""
    current = os.environ.get(key)
    if key in _WANDB_OURS and current == _WANDB_OURS[key]:
        return _WANDB_USER.get(key)
    return current


def _set_env(key: str, value: str | None) -> None:
    user = _user_env(key)
    _WANDB_USER[key], _WANDB_OURS[key] = user, value
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


def wandb_mode(w) -> str:
    """The wandb mode of a run: ``run.wandb.mode`` when set (command line or YAML), else
    ``$WANDB_MODE`` when the user's environment sets it, else ``offline``."""
    return w.mode or _user_env("WANDB_MODE") or "offline"


def configure_wandb(w, run_dir: Path) -> None:
    """wandb's environment from ``run.wandb`` for one job (the Trainer's integration reads it).

    ``WANDB_MODE`` is :func:`wandb_mode`. ``WANDB_PROJECT``, ``WANDB_ENTITY`` and
    ``WANDB_DIR`` (default: the run folder) that the user's environment sets are kept;
    those an earlier job of this process set are replaced by this job's.
    """
    _set_env("WANDB_MODE", wandb_mode(w))
    for key, value in (
        ("WANDB_PROJECT", w.project),
        ("WANDB_ENTITY", w.entity),
        ("WANDB_DIR", str(run_dir)),
    ):
        _set_env(key, _user_env(key) or value)


def finish_wandb() -> None:
    """End this job's wandb run and wandb's process-wide settings: the Trainer's integration
    leaves the run open, and wandb keeps the environment it read at its first run, so the
    next job of a sweep in the same process would log into this run, in this folder."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is None or not hasattr(wandb, "teardown"):
        return
    if getattr(wandb, "run", None) is not None:
        wandb.finish()
    wandb.teardown()


def check_lora_targets(model, settings: LoraSettings) -> None:
    """Refuse ``lora.target_modules`` naming no module of ``model`` (ConfigError listing the
    names of its adaptable layers), before peft fails deep inside."""
    import torch

    from bayling_duplex.config import ConfigError

    names = [n for n, _ in model.named_modules() if n]
    missing = [
        t for t in settings.target_modules if not any(n == t or n.endswith("." + t) for n in names)
    ]
    if missing:
        kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
        layers = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds)}
        )
        raise ConfigError(
            f"lora.target_modules: {missing} name no module of the model "
            f"({type(model).__name__}); its layers are {layers}"
        )
