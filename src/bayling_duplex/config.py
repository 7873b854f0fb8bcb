"""Typed configuration below the command line: strict checks and where the configs are.

:func:`to_dataclass` walks a composed config against its dataclass schema and
fails naming the first unknown (or moved) key, then converts it, surfacing the
``__post_init__`` message of a bad value; :func:`repo_root` finds ``configs/`` and
``data_recipes/`` (a checkout, or the copies shipped in the wheel). The Hydra
front end (:mod:`bayling_duplex.cli.hydra`) and the data layer (which reads
recipes outside a Hydra app) both use it. Needs omegaconf, not Hydra or torch.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration key that does not exist or a value that is not allowed."""


ROOT_ENV = "BAYLING_DUPLEX_ROOT"
_PACKAGE = Path(__file__).resolve().parent  # .../bayling_duplex
SHIPPED = _PACKAGE / "_shipped"  # copies of configs/ and data_recipes/ made by the wheel build


def _holds_configs(folder: Path) -> bool:
    return (folder / "configs").is_dir() and (folder / "data_recipes").is_dir()


def _checkout_root() -> Path | None:
    """The clone whose ``src/`` holds this package (an editable install or ``PYTHONPATH=src``)."""
    if _PACKAGE.parent.name != "src":
        return None  # installed into site-packages (or a --target folder): not a checkout
    root = _PACKAGE.parent.parent
    return root if _holds_configs(root) else None


def repo_root() -> Path:
    """The folder holding ``configs/`` and ``data_recipes/``.

    Looked up in this order: the ``BAYLING_DUPLEX_ROOT`` environment variable; the
    checkout this package is imported from (an editable install reads the live
    files); the copies shipped inside an installed wheel (``bayling_duplex/_shipped/``).
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env).resolve()
        if not _holds_configs(root):
            raise ConfigError(
                f"{ROOT_ENV}={env} has no configs/ and data_recipes/ folders; point it at "
                "the project's clone or unset it"
            )
        return root
    root = _checkout_root()
    if root is not None:
        return root
    if _holds_configs(SHIPPED):
        return SHIPPED
    raise ConfigError(
        "cannot find the project's configs/ and data_recipes/ folders; looked in: "
        f"${ROOT_ENV} (not set); a checkout holding this package as src/bayling_duplex "
        f"next to configs/ and data_recipes/ (none: the package is {_PACKAGE}); the copy "
        f"shipped in the installed package, {SHIPPED} (missing: the package was not built "
        "by the project's setup.py). Reinstall with `pip install .` or from a wheel, "
        f"install the clone editable (pip install -e .), or set {ROOT_ENV} to the clone"
    )


def config_dir() -> Path:
    """The Hydra config folder (``configs/`` of :func:`repo_root`)."""
    return repo_root() / "configs"


def recipes_dir() -> Path:
    """The data recipe folder (``data_recipes/`` of :func:`repo_root`)."""
    return repo_root() / "data_recipes"


def _dataclass_of(tp) -> type | None:
    """The dataclass inside an annotation like ``Foo``, ``Foo | None`` or ``Optional[Foo]``."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def find_unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, schema name)`` for each key of ``cfg`` its dataclass does not declare."""
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    unknown: list[tuple[str, str]] = []
    for key in cfg:
        dotted = f"{prefix}{key}"
        if key not in names:
            unknown.append((dotted, schema.__name__))
            continue
        sub = _dataclass_of(hints[key])
        value = cfg._get_node(key)
        if sub is not None and isinstance(value, DictConfig) and not value._is_none():
            unknown += find_unknown_keys(value, sub, dotted + ".")
    return unknown


# Keys that moved (docs/training.md, "Config keys that moved"): an old key fails at once,
# naming its new place, wherever it is set (a YAML file, an override, ``+key=``).
MOVED_KEYS: dict[str, str] = {
    # DPO's generic loop and optimizer keys: the same train.* and optim.* as SFT's
    "dpo.lr": "optim.lr",
    "dpo.weight_decay": "optim.weight_decay",
    "dpo.warmup_ratio": "optim.warmup_ratio",
    "dpo.scheduler": "optim.scheduler",
    "dpo.max_grad_norm": "optim.max_grad_norm",
    "dpo.epochs": "train.epochs",
    "dpo.max_steps": "train.max_steps",
    "dpo.batch_size": "train.batch_size",
    "dpo.grad_accum": "train.grad_accum",
    "dpo.precision": "train.precision",
    "dpo.gradient_checkpointing": "train.gradient_checkpointing",
    "dpo.logging_steps": "train.logging_steps",
    "dpo.save_steps": "train.save_steps",
    "dpo.save_total_limit": "train.save_total_limit",
    "dpo.eval_steps": "train.eval_steps",
}


def moved_keys_message(keys) -> str | None:
    """``"dpo.lr moved to optim.lr"`` for the moved keys among ``keys``; None when none moved."""
    moved = [f"{k} moved to {MOVED_KEYS[k]}" for k in dict.fromkeys(keys) if k in MOVED_KEYS]
    return "; ".join(moved) + " (docs/training.md)" if moved else None


def to_dataclass(cfg: DictConfig, schema: type):
    """Check ``cfg`` strictly against ``schema`` and convert it to the dataclass instance."""
    unknown = find_unknown_keys(cfg, schema)
    moved = moved_keys_message(k for k, _ in unknown)
    if moved:
        raise ConfigError(moved)
    if unknown:
        key, owner = unknown[0]
        more = [k for k, _ in unknown[1:]]
        raise ConfigError(
            f"unknown config key {key!r} ({owner} has no field {key.rsplit('.', 1)[-1]!r})"
            + (f"; also unknown: {more}" if more else "")
        )
    try:
        obj = OmegaConf.to_object(cfg)
    except Exception as e:  # omegaconf wraps __post_init__ errors: surface the message
        cause = e.__cause__ or e
        raise ConfigError(str(cause).split("\n")[0]) from e
    return obj
