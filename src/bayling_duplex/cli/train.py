"""``python -m bayling_duplex.train {sft,dpo} [overrides] [--multirun] [--cfg job] [--help]``.

A thin script: it composes the stage's typed config, prepares the run folder
and hands over to the stage's recipe module. A command that fails before it
wrote a result leaves the run folder as it found it (``run_dir.release_run_dir``);
Ctrl-C ends with one line saying what ``run.resume=true`` continues from (exit 130).
A ``--multirun`` job runs in ``runs/<stage>/sweeps/<run.name>/<job number>`` under
its own ``run.name``: ``<run.name>-<job number>`` and the values swept for it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, plain, run_hydra_command, to_dataclass
from bayling_duplex.cli.run_dir import (
    RUN_NAME_MAX,
    RunDirError,
    prepare_run_dir,
    release_run_dir,
    run_dir_entries,
    run_name_error,
)
from bayling_duplex.format.vocab import VocabError

log = logging.getLogger("bayling_duplex.train")

# Errors a user can fix from the command line: printed as one line, no traceback.
USER_ERRORS = (ConfigError, RunDirError, VocabError, FileNotFoundError)
# (dataset.DataMismatchError is a FileNotFoundError)
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT)


def _output_dir() -> tuple[str, tuple[str, ...]]:
    """Hydra's output folder and the files Hydra itself put there (its job log)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return hc.runtime.output_dir, (f"{hc.job.name}.log",)


def _swept_keys(argv: list[str]) -> list[str]:
    """The keys ``argv`` sweeps (``key=a,b``, ``key=range(…)`` …)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, keys = OverridesParser.create(), []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_overrides([arg])[0]
        except Exception:  # Hydra reports it
            continue
        if override.is_sweep_override():
            keys.append(override.key_or_group)
    return keys


def sweep_job_name(base: str, num: int, task_overrides: list[str], swept: list[str]) -> str:
    """``run.name`` of a ``--multirun`` job: ``<base>-<num>`` and the values swept for it,
    e.g. ``default-1-lr=0.002`` (characters unsafe in a folder name become ``_``)."""
    parts = [f"{base}-{num}"]
    for override in task_overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in swept and key != "run.name":
            parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return re.sub(r"[^A-Za-z0-9._+=,@-]", "_", "-".join(parts))[:RUN_NAME_MAX]


def _for_this_job(conf):
    """``conf`` with a ``run.name`` of its own when this is one job of a ``--multirun`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return conf
    name = sweep_job_name(
        conf.run.name, hc.job.num, list(hc.overrides.task), _swept_keys(sys.argv[1:])
    )
    return dataclasses.replace(conf, run=dataclasses.replace(conf.run, name=name))


def _interrupted_message(e: KeyboardInterrupt, out: str) -> str:
    from bayling_duplex.model.checkpoint import last_trainer_checkpoint

    if str(e):  # TrainingInterrupted: the step and the checkpoint saved at it
        return str(e)
    checkpoint = last_trainer_checkpoint(out)
    if checkpoint is None:
        return "stopped before any checkpoint was saved: rerun the command to start again"
    return f"stopped; resume with run.resume=true (it continues from {checkpoint})"


def _run_stage(cfg: DictConfig, stage: str) -> None:
    from bayling_duplex.cli.cluster import export_submitit_env
    from bayling_duplex.cli.schemas import ROOTS

    export_submitit_env()
    out, hydra_files = _output_dir()
    before = run_dir_entries(out, hydra_files)  # what earlier runs left: never removed
    try:
        # 1. typed, strict config (a sweep job gets its own run.name)
        conf = _for_this_job(to_dataclass(cfg, ROOTS[stage]))
        # 2. run folder with the resolved config
        run_dir = prepare_run_dir(out, conf.run, plain(conf), ignore=hydra_files)
        if conf.run.overwrite:
            before = set()  # what was there is gone, as asked
        # 3. the stage itself
        if stage == "sft":
            from bayling_duplex.train.sft import run_sft

            run_sft(conf, run_dir)
        else:
            from bayling_duplex.train.dpo import run_dpo

            run_dpo(conf, run_dir)
    except USER_ERRORS as e:
        release_run_dir(out, before, hydra_files)
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        release_run_dir(out, before, hydra_files)
        message = _interrupted_message(e, out)
        log.warning("%s", message)
        print(message, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except Exception:
        release_run_dir(out, before, hydra_files)  # a crash before any result: no claim either
        raise


def sft_main(cfg: DictConfig) -> None:
    _run_stage(cfg, "sft")


def dpo_main(cfg: DictConfig) -> None:
    _run_stage(cfg, "dpo")


STAGES = {"sft": ("sft", sft_main), "dpo": ("dpo", dpo_main)}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    bad_name = run_name_error(argv[1:])  # before Hydra makes a folder of it
    if bad_name:
        print(f"error: {bad_name}", file=sys.stderr)
        raise SystemExit(2)
    run_hydra_command("train", STAGES, argv)


if __name__ == "__main__":
    main()
