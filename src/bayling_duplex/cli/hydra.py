"""Typed configuration: the Hydra front end shared by every command.

Each command (``train sft``, ``train dpo``, ``data build`` …) has one root
dataclass schema registered in Hydra's ConfigStore as ``<root>_schema``; the
YAML root of the same name under ``configs/`` names that schema first in its
defaults list. Component configs live next to their components (lingua's rule).

Composition order is defaults < YAML < command line. Hydra itself lets
``+new_key=…`` through, so :func:`to_dataclass` walks the composed config
against the schema and fails naming the first unknown key; values are then
validated by each dataclass's ``__post_init__``. Nothing below the entry point
sees a ``DictConfig``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bayling_duplex.runtime import plain  # noqa: F401 (re-exported)


class ConfigError(ValueError):
    """A configuration key that does not exist or a value that is not allowed."""


def repo_root() -> Path:
    """The folder holding ``configs/`` and ``data_recipes/`` (``BAYLING_DUPLEX_ROOT`` overrides)."""
    env = os.environ.get("BAYLING_DUPLEX_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "configs").is_dir() and (parent / "data_recipes").is_dir():
            return parent
    raise ConfigError(
        "cannot find the project's configs/ folder; install the project editable from its "
        "clone (pip install -e .) or set BAYLING_DUPLEX_ROOT to the clone"
    )


def config_dir() -> Path:
    return repo_root() / "configs"


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


def to_dataclass(cfg: DictConfig, schema: type):
    """Check ``cfg`` strictly against ``schema`` and convert it to the dataclass instance."""
    unknown = find_unknown_keys(cfg, schema)
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



def run_hydra_command(
    prog: str,
    commands: dict[str, tuple[str, Callable]],
    argv: list[str] | None = None,
) -> None:
    """Front end for ``python -m bayling_duplex.<prog> COMMAND [hydra args]``.

    ``commands`` maps a command word to ``(root config name, main(cfg: DictConfig))``.
    Hydra cannot take a bare positional word, so this pops it and composes the
    matching root config; everything after it is Hydra's (overrides, ``--multirun``,
    ``--cfg job``, ``--help``).
    """
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher appends --local_rank=N; Hydra would take it for an override
    for arg in [a for a in argv if a.startswith(("--local_rank", "--local-rank"))]:
        argv.remove(arg)
        if "=" in arg:
            os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
    listing = "\n".join(f"  {name}" for name in commands)
    if not argv or (argv[0] in ("-h", "--help") and len(argv) == 1):
        print(
            f"usage: python -m bayling_duplex.{prog} COMMAND [overrides] [--multirun] [--cfg job] [--help]\n"
            f"commands:\n{listing}"
        )
        raise SystemExit(0 if argv else 2)
    word = argv.pop(0)
    if word not in commands:
        print(
            f"unknown command {word!r} for bayling_duplex.{prog}; the commands are:\n{listing}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    config_name, main = commands[word]
    from bayling_duplex.cli import schemas

    schemas.register()
    sys.argv = [f"bayling_duplex.{prog} {word}", *argv]
    wrapped = hydra.main(
        version_base="1.3", config_path=str(config_dir()), config_name=config_name
    )(main)
    wrapped()
