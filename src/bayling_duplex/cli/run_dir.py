"""The run folder: where a job writes its resolved config, logs and checkpoints.

Rules (style.md §9): the folder never depends on the clock (every rank of a
multi-process launch runs Hydra and must land in the same folder), a non-empty
folder is refused unless the run resumes or overwriting is asked for, and only
rank 0 writes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bayling_duplex.runtime import is_main_process, rank, write_json  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline writes a local run folder; online needs an API key; disabled
    project: str = "bayling-duplex"
    entity: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"run.wandb.mode must be one of {WANDB_MODES}, got {self.mode!r}")


@dataclass
class RunConfig:
    """Where and how a job runs. The folder is Hydra's output dir: ``runs/<stage>/<name>``."""

    name: str = "default"
    resume: bool = False  # continue in a non-empty folder from its last checkpoint
    overwrite: bool = False  # wipe a non-empty folder first
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("run.resume and run.overwrite exclude each other")
        if not self.name or "/" in self.name:
            raise ValueError(f"run.name must be a non-empty folder name, got {self.name!r}")


class RunDirError(RuntimeError):
    pass


RESOLVED_CONFIG = "config.yaml"


def prepare_run_dir(
    path: str | Path, run: RunConfig, resolved: dict, ignore: tuple[str, ...] = ()
) -> Path:
    """Check the folder against the run's rules and write the resolved config (rank 0).

    A folder holding anything but ``ignore`` (Hydra's own job log, opened
    before the job starts) counts as non-empty.
    """
    path = Path(path)
    if not is_main_process():
        return path  # rank 0 alone judges the folder: the others would see its config.yaml
    existing = [p for p in path.iterdir() if p.name not in ignore] if path.is_dir() else []
    if existing and not (run.resume or run.overwrite):
        raise RunDirError(
            f"run folder {path} is not empty ({len(existing)} entries); pass run.resume=true "
            "to continue it, run.overwrite=true to replace it, or run.name=… for a new one"
        )
    if existing and run.overwrite:
        for p in existing:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    OmegaConf.save(OmegaConf.create(resolved), path / RESOLVED_CONFIG)
    return path
