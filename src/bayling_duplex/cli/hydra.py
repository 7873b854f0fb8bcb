"""The Hydra front end shared by every command (strict checks: :mod:`bayling_duplex.config`).

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

import os
import re
import sys
from collections.abc import Callable

from bayling_duplex.config import (  # noqa: F401 (the front end's names, re-exported)
    MOVED_KEYS,
    ConfigError,
    config_dir,
    find_unknown_keys,
    moved_keys_message,
    recipes_dir,
    repo_root,
    to_dataclass,
)
from bayling_duplex.runtime import plain  # noqa: F401 (re-exported)


def _override_keys(argv: list[str]) -> list[str]:
    """The keys of the ``key=value`` / ``+key=`` / ``++key=`` / ``~key`` overrides in ``argv``."""
    return [a.lstrip("+~").split("=", 1)[0] for a in argv if not a.startswith("-")]


def _moved_in_composition(config_name: str, argv: list[str]) -> str | None:
    """After Hydra refused to compose: the moved-key message when a moved key (set in a
    YAML file, where Hydra's own error names only the old key) is the reason."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            compose(config_name, overrides=[a for a in argv if "=" in a and a[0] != "-"])
    except Exception as e:
        return moved_keys_message(re.findall(r"full_key: (\S+)", f"{e}\n{e.__cause__}"))
    return None


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
    moved = moved_keys_message(_override_keys(argv))
    if moved:
        print(f"error: {moved}", file=sys.stderr)
        raise SystemExit(2)
    from bayling_duplex.cli import schemas

    schemas.register()
    sys.argv = [f"bayling_duplex.{prog} {word}", *argv]
    wrapped = hydra.main(
        version_base="1.3", config_path=str(config_dir()), config_name=config_name
    )(main)
    try:
        wrapped()
    except SystemExit as e:
        # Hydra printed why it could not compose; a moved key in a YAML file gets its new name
        moved = _moved_in_composition(config_name, argv) if e.code == 1 else None
        if moved:
            print(f"error: {moved}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
