"""The checkpoint contract: what a trained checkpoint carries besides its weights.

A finished run of a training stage is ``runs/<stage>/<name>/`` holding
``summary.json`` and ``final/``; ``final/`` holds the weights, the tokenizer
and ``duplex.json``::

    {"format": {"frames_per_block": 10, "slots_per_block": 5,
                "frame_rate_hz": 12.5, "silence_codes": [0]},
     "data": "demo", "stage": "sft", "init": null}

``format`` is the :class:`~bayling_duplex.format.spec.FormatSpec` of the data the
model learnt (decoding needs its layout and silence codes), ``data`` the
dataset's name, ``init`` the checkpoint a DPO run started from. This module is
the only place that writes or reads the file, that decides which run is the
latest finished one, and that loads a checkpoint (merging a LoRA adapter into its
base) for training, evaluation or inference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.runtime import write_json

DUPLEX_META = "duplex.json"
SUMMARY = "summary.json"
FINAL = "final"


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing, unfinished, or of another format than asked for."""


@dataclass(frozen=True)
class CheckpointMeta:
    """The content of ``duplex.json``."""

    format: FormatSpec
    data: str
    stage: str
    init: str | None = None

    def to_json(self) -> dict:
        return {
            "format": self.format.to_json(),
            "data": self.data,
            "stage": self.stage,
            "init": self.init,
        }


def write_meta(final: str | Path, meta: CheckpointMeta) -> None:
    """Write ``final/duplex.json`` (atomically)."""
    write_json(Path(final) / DUPLEX_META, meta.to_json())


def read_meta(checkpoint: str | Path) -> CheckpointMeta:
    """``duplex.json`` of ``checkpoint``; :class:`CheckpointError` when it has none."""
    path = Path(checkpoint) / DUPLEX_META
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {DUPLEX_META}: it was not written by a training stage of "
            "this project, so its format (layout, silence codes) is unknown"
        )
    obj = json.loads(path.read_text())
    try:
        return CheckpointMeta(
            format=FormatSpec.from_json(obj["format"]),
            data=obj.get("data", ""),
            stage=obj.get("stage", ""),
            init=obj.get("init"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is malformed: {e}") from None


def read_format(checkpoint: str | Path, default: FormatSpec | None = None) -> FormatSpec:
    """The checkpoint's format; ``default`` when it has no ``duplex.json`` (if given)."""
    if default is not None and not (Path(checkpoint) / DUPLEX_META).is_file():
        return default
    return read_meta(checkpoint).format


def check_format(expected: FormatSpec, checkpoint: str | Path, what: str) -> None:
    """Refuse a checkpoint whose format differs from ``expected`` in any field."""
    diff = expected.differences(read_format(checkpoint))
    if diff:
        raise CheckpointError(
            f"{what} has another format than the checkpoint {checkpoint} "
            f"({'; '.join(diff)}, {what} first): use data of the checkpoint's format"
        )


def is_finished(final: str | Path) -> bool:
    """A run's ``final/`` counts as finished when it has its ``duplex.json`` and the run
    its ``summary.json`` (both are written last, after the weights)."""
    final = Path(final)
    return (final / DUPLEX_META).is_file() and (final.parent / SUMMARY).is_file()


def latest_finished(stage: str, runs: str | Path = "runs") -> Path:
    """``final/`` of the newest finished run of ``stage`` under ``runs``."""
    runs = Path(runs)
    finals = [p for p in (runs / stage).glob(f"*/{FINAL}") if is_finished(p)]
    if not finals:
        raise CheckpointError(
            f"no finished {stage} run under {runs / stage}/*/{FINAL} (with {DUPLEX_META} and "
            f"{SUMMARY}); train one first:\n  python -m bayling_duplex.train {stage}"
        )
    return max(finals, key=lambda p: (p.parent / SUMMARY).stat().st_mtime)


def resolve(checkpoint: str, stage: str, runs: str | Path = "runs") -> Path:
    """A checkpoint argument as a folder: ``latest`` is the newest finished ``stage`` run;
    anything else must be a folder holding a model (``config.json``) or an adapter."""
    path = latest_finished(stage, runs) if checkpoint == "latest" else Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {checkpoint!r}: no folder {path}")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise CheckpointError(
            f"checkpoint {checkpoint!r}: {path} holds no model (no config.json or adapter_config.json)"
        )
    return path


def last_trainer_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder the Trainer saved in ``run_dir`` (None: none)."""
    ckpts = [p for p in Path(run_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def load(path: str | Path, vocab_cfg, dtype: str = "fp32"):
    """``(model, tokenizer, vocab)`` of a trained checkpoint; a LoRA one is merged into its base."""
    from bayling_duplex.model.backbone import load_tokenizer, load_trained, torch_dtype

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        return load_trained(path, vocab_cfg, dtype)
    from peft import AutoPeftModelForCausalLM

    from bayling_duplex.format.vocab import resolve_vocab

    model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    tokenizer = load_tokenizer(path)
    merged = model.merge_and_unload().requires_grad_(True)  # PEFT had frozen the base
    return merged, tokenizer, resolve_vocab(tokenizer, vocab_cfg)
