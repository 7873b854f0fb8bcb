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
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.runtime import write_json

DUPLEX_META = "duplex.json"
SUMMARY = "summary.json"
FINAL = "final"

log = logging.getLogger("bayling_duplex.checkpoint")


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing, unfinished, or of another format than asked for."""


@dataclass(frozen=True)
class CheckpointMeta:
    """The content of ``duplex.json``."""

    format: FormatSpec
    data: str
    stage: str
    init: str | None = None
    # the fitted speech codec the data was coded with (its folder is copied into the
    # checkpoint as ``codec/``): {"name", "fingerprint", ...}; None for fixed codecs
    codec: dict | None = None

    def to_json(self) -> dict:
        return {
            "format": self.format.to_json(),
            "data": self.data,
            "stage": self.stage,
            "init": self.init,
            "codec": self.codec,
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
            codec=obj.get("codec"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is malformed: {e}") from None


CODEC_DIR = "codec"


def copy_codec(source: str | Path, final: str | Path) -> None:
    """Copy a fitted codec's folder ``source`` into checkpoint ``final`` as ``codec/``, so a
    checkpoint decodes and is evaluated with the codec its data was coded with."""
    src, dst = Path(source), Path(final) / CODEC_DIR
    if not (src / "codec.json").is_file():
        raise CheckpointError(f"{src} holds no fitted codec (codec.json)")
    tmp = dst.with_name(f".{CODEC_DIR}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def codec_dir(checkpoint: str | Path) -> Path | None:
    """The checkpoint's fitted codec folder, or None when its data used a fixed codec.

    Refuses (:class:`CheckpointError`) a checkpoint whose ``duplex.json`` names a codec
    but whose ``codec/`` folder is missing or holds another one (by fingerprint)."""
    meta = read_meta(checkpoint)
    if not meta.codec:
        return None
    folder = Path(checkpoint) / CODEC_DIR
    info = folder / "codec.json"
    if not info.is_file():
        raise CheckpointError(
            f"{checkpoint} was trained on data coded by {meta.codec.get('name')}, but its "
            f"{CODEC_DIR}/ folder is missing"
        )
    have = json.loads(info.read_text()).get("fingerprint")
    if have != meta.codec.get("fingerprint"):
        raise CheckpointError(
            f"{folder} holds codec {have}, but {checkpoint}/{DUPLEX_META} names "
            f"{meta.codec.get('fingerprint')}: the codec folder was replaced"
        )
    return folder


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


def run_summary(final: str | Path) -> dict | None:
    """The ``summary.json`` of the run ``final/`` belongs to (None: none, or not JSON)."""
    path = Path(final).parent / SUMMARY
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def unfinished_reason(final: str | Path) -> str | None:
    """Why a run's ``final/`` does not count as a finished run; None when it does.

    Finished: ``final/`` holds its ``duplex.json``, and the run's ``summary.json``
    (both written last, after the weights) records training steps, names the
    checkpoint and does not say ``stopped_early``. A throwaway run of 0 steps or
    one stopped by ``train.stop_after_steps`` is never "the latest"."""
    final = Path(final)
    summary = run_summary(final)
    if summary is not None and summary.get("stopped_early"):
        return f"stopped early at step {summary.get('steps')} ({SUMMARY}: stopped_early)"
    if summary is not None and summary.get("steps") == 0:
        return f"0 training steps ({SUMMARY})"
    if not final.is_dir():
        return f"no {FINAL}/ (still running, killed, or stopped early)"
    if not (final / DUPLEX_META).is_file():
        return f"{FINAL}/ has no {DUPLEX_META} (not finished)"
    if not (final.parent / SUMMARY).is_file():
        return f"no {SUMMARY} (not finished)"
    if summary is None:
        return f"{SUMMARY} is not a JSON object"
    steps = summary.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        return f"{SUMMARY} records no training steps (steps: {steps!r})"
    if not summary.get("checkpoint"):
        return f"{SUMMARY} names no checkpoint"
    return None


def is_finished(final: str | Path) -> bool:
    """Whether a run's ``final/`` is a finished run's checkpoint (:func:`unfinished_reason`)."""
    return unfinished_reason(final) is None


def latest_finished(stage: str, runs: str | Path = "runs") -> Path:
    """``final/`` of the newest finished run of ``stage`` under ``runs`` (by its ``summary.json``).

    Runs that are not finished (:func:`unfinished_reason`) are skipped; when none
    is left the error lists each skipped run and why."""
    runs = Path(runs)
    run_dirs = sorted(p for p in (runs / stage).glob("*") if p.is_dir())
    finals, skipped = [], []
    for run in run_dirs:
        reason = unfinished_reason(run / FINAL)
        if reason is None:
            finals.append(run / FINAL)
        else:
            skipped.append(f"  {run}: {reason}")
    if not finals:
        seen = (
            "; skipped:\n" + "\n".join(skipped)
            if skipped
            else f" (no run folders in {runs / stage})"
        )
        raise CheckpointError(
            f"no finished {stage} run under {runs / stage}/*/{FINAL} (with {DUPLEX_META} and a "
            f"{SUMMARY} recording its steps and checkpoint){seen}\ntrain one first:\n"
            f"  python -m bayling_duplex.train {stage}"
        )
    newest = max(finals, key=lambda p: (p.parent / SUMMARY).stat().st_mtime)
    if skipped:
        log.info("latest %s run: %s; skipped:\n%s", stage, newest, "\n".join(skipped))
    return newest


def describe(path: str | Path) -> dict:
    """What a report records about a checkpoint: the resolved folder, its ``duplex.json``
    (stage, data, init, format) and the steps of the run it came from (``summary.json``)."""
    path = Path(path).resolve()
    out: dict = {"path": str(path), "duplex_json": (path / DUPLEX_META).is_file()}
    meta = None
    if out["duplex_json"]:
        try:
            meta = read_meta(path)
        except CheckpointError as e:
            out["error"] = str(e)
    out.update(
        stage=meta.stage if meta else None,
        data=meta.data if meta else None,
        init=meta.init if meta else None,
        format=meta.format.to_json() if meta else None,
    )
    summary = run_summary(path) if path.name == FINAL else None
    out["steps"] = summary.get("steps") if summary else None
    out["stopped_early"] = summary.get("stopped_early") if summary else None
    return out


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
    """The newest complete ``checkpoint-<step>`` folder the Trainer saved in ``run_dir``
    (None: none).

    Complete: ``trainer_state.json`` (the Trainer writes it last) is readable JSON, and
    the folder holds the model (weights, an adapter or DeepSpeed's model states) and the
    optimizer (``optimizer.pt`` or DeepSpeed's optimizer states). A newer half-written
    folder (a run killed while saving) is skipped with a warning naming it."""
    import logging

    def missing(ckpt: Path) -> str | None:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return "no readable trainer_state.json"
        ds = [f.name for d in ckpt.glob("global_step*") if d.is_dir() for f in d.iterdir()]
        weights = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors")
        indexed = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
        if not any((ckpt / w).is_file() for w in weights + indexed) and not any(
            n.endswith("model_states.pt") for n in ds
        ):
            return "no model weights"
        if not (ckpt / "optimizer.pt").is_file() and not any(
            n.endswith("optim_states.pt") for n in ds
        ):
            return "no optimizer state"
        return None

    ckpts = [p for p in Path(run_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        reason = missing(ckpt)
        if reason is None:
            return ckpt
        logging.getLogger("bayling_duplex.checkpoint").warning(
            "skipping the incomplete checkpoint %s (%s): resume looks at the one before",
            ckpt,
            reason,
        )
    return None


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
