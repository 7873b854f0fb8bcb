"""``python -m bayling_duplex.train {sft,dpo} [overrides] [--multirun] [--cfg job] [--help]``.

A thin script: it composes the stage's typed config, prepares the run folder
and hands over to the stage's recipe module.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, plain, run_hydra_command, to_dataclass
from bayling_duplex.cli.run_dir import RunDirError, prepare_run_dir
from bayling_duplex.format.vocab import VocabError

log = logging.getLogger("bayling_duplex.train")

# Errors a user can fix from the command line: printed as one line, no traceback.
USER_ERRORS = (ConfigError, RunDirError, VocabError, FileNotFoundError)
# (dataset.DataMismatchError is a FileNotFoundError)


def _output_dir() -> tuple[str, tuple[str, ...]]:
    """Hydra's output folder and the files Hydra itself put there (its job log)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return hc.runtime.output_dir, (f"{hc.job.name}.log",)


def _run_stage(cfg: DictConfig, stage: str) -> None:
    from bayling_duplex.cli.cluster import export_submitit_env
    from bayling_duplex.cli.schemas import ROOTS

    export_submitit_env()
    try:
        # 1. typed, strict config
        conf = to_dataclass(cfg, ROOTS[stage])
        # 2. run folder with the resolved config
        out, hydra_files = _output_dir()
        run_dir = prepare_run_dir(out, conf.run, plain(conf), ignore=hydra_files)
        # 3. the stage itself
        if stage == "sft":
            from bayling_duplex.train.sft import run_sft

            run_sft(conf, run_dir)
        else:
            from bayling_duplex.train.dpo import run_dpo

            run_dpo(conf, run_dir)
    except USER_ERRORS as e:
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def sft_main(cfg: DictConfig) -> None:
    _run_stage(cfg, "sft")


def dpo_main(cfg: DictConfig) -> None:
    _run_stage(cfg, "dpo")


STAGES = {"sft": ("sft", sft_main), "dpo": ("dpo", dpo_main)}


def main(argv: list[str] | None = None) -> None:
    run_hydra_command("train", STAGES, argv)


if __name__ == "__main__":
    main()
