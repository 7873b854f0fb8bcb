"""The run folder: where a job writes its resolved config, logs and checkpoints.

Rules (style.md §9): the folder never depends on the clock (every rank of a
multi-process launch runs Hydra and must land in the same folder), a non-empty
folder is refused unless the run resumes or overwriting is asked for, and only
rank 0 writes.

Resuming (docs/training.md, "Resume") compares the new config with the stored
``config.yaml`` and refuses a change of any key that changes the run (all keys
but :data:`RESUME_MAY_CHANGE`) unless ``run.allow_config_change=true``; the stored
``config.yaml`` is never overwritten, the resumed run's config is written beside
it as ``config.resume-<n>.yaml``. A command that fails before it wrote any
result (:data:`RESULTS`) removes what it wrote (:func:`release_run_dir`), so
its corrected rerun finds the folder as it was.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bayling_duplex.runtime import is_main_process, rank, write_json  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

WANDB_MODES = ("offline", "online", "disabled")

# a run name is one folder name: letters, digits and . _ - + = , @, not starting with . or -
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=,@-]*")
RUN_NAME_MAX = 128
# runs/<stage>/sweeps/<run.name>/<job> holds --multirun jobs (configs/sft.yaml, dpo.yaml)
SWEEPS = "sweeps"


@dataclass
class WandbConfig:
    # offline writes a local run folder; online needs an API key; disabled.
    # None: $WANDB_MODE when the environment sets it, else offline (docs/training.md, Logging)
    mode: str | None = None
    project: str = "bayling-duplex"
    entity: str | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ValueError(f"run.wandb.mode must be one of {WANDB_MODES}, got {self.mode!r}")


def check_run_name(name) -> None:
    """Refuse a ``run.name`` that is not one safe folder name (ValueError naming the key)."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or len(name) > RUN_NAME_MAX:
        raise ValueError(
            f"run.name must be one folder name of letters, digits and . _ - + = , @ (not "
            f"starting with . or -, at most {RUN_NAME_MAX} characters; no / \\ or ..), got {name!r}"
        )
    if name == SWEEPS:
        raise ValueError(
            f"run.name={SWEEPS} is reserved: runs/<stage>/{SWEEPS}/ holds the --multirun jobs"
        )


def override_values(argv: list[str], key: str) -> list[str]:
    """The values the command-line overrides in ``argv`` give ``key`` (each value of a
    sweep such as ``key=a,b``); overrides Hydra cannot parse are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, values = OverridesParser.create(), []
    for arg in argv:
        if arg.startswith("-") or arg.lstrip("+~").split("=", 1)[0] != key:
            continue
        try:
            override = parser.parse_overrides([arg])[0]
        except Exception:  # Hydra reports it, with its own message
            continue
        if override.is_delete():
            continue
        if override.is_sweep_override():
            values += list(override.sweep_string_iterator())
        else:
            values.append(str(override.value()))
    return values


def run_name_error(argv: list[str]) -> str | None:
    """Why a ``run.name=…`` override in ``argv`` is refused (None: none is). Called before
    Hydra composes: Hydra creates the run folder from the name before the job starts."""
    for name in override_values(argv, "run.name"):
        try:
            check_run_name(name)
        except ValueError as e:
            return str(e)
    return None


@dataclass
class RunConfig:
    """Where and how a job runs. The folder is Hydra's output dir: ``runs/<stage>/<name>``
    (a ``--multirun`` job: ``runs/<stage>/sweeps/<name>/<job number>``)."""

    name: str = "default"
    resume: bool = False  # continue in a non-empty folder from its last checkpoint
    overwrite: bool = False  # wipe a non-empty folder first
    # on resume: accept a config whose run-changing keys differ from the stored config.yaml
    allow_config_change: bool = False
    seed: int = 0
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ValueError("run.resume and run.overwrite exclude each other")
        check_run_name(self.name)


class RunDirError(RuntimeError):
    pass


RESOLVED_CONFIG = "config.yaml"
# what a command leaves that counts as its result: never removed after a failure
RESULTS = ("checkpoint-*", "final", "adapter", "summary.json", "report.json")
# keys a resume may change without run.allow_config_change: none of them changes the
# trained weights (a "prefix." entry covers every key under it)
RESUME_MAY_CHANGE = (
    "run.resume",
    "run.overwrite",
    "run.allow_config_change",
    "run.wandb.",
    "train.logging_steps",
    "train.save_steps",
    "train.save_total_limit",
    "train.stop_after_steps",
    "train.dataloader_workers",
)


def _flat(obj, prefix: str = "") -> dict:
    """A nested dict as ``{dotted key: leaf value}`` (lists are leaves)."""
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


_ABSENT = "<absent>"


def config_changes(stored: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for each run-changing key that differs between two resolved configs."""
    a, b = _flat(stored), _flat(new)
    return [
        f"{k}: {a.get(k, _ABSENT)!r} -> {b.get(k, _ABSENT)!r}"
        for k in sorted(set(a) | set(b))
        if not _may_change(k) and a.get(k, _ABSENT) != b.get(k, _ABSENT)
    ]


def run_dir_entries(path: str | Path, ignore: tuple[str, ...] = ()) -> set[str]:
    """The names in the folder (none when it does not exist), ``ignore`` left out."""
    path = Path(path)
    return {p.name for p in path.iterdir() if p.name not in ignore} if path.is_dir() else set()


def _resume_config_path(path: Path) -> Path:
    n = 1
    while (path / f"config.resume-{n}.yaml").exists():
        n += 1
    return path / f"config.resume-{n}.yaml"


def prepare_run_dir(
    path: str | Path, run: RunConfig, resolved: dict, ignore: tuple[str, ...] = ()
) -> Path:
    """Check the folder against the run's rules and write the resolved config (rank 0).

    A folder holding anything but ``ignore`` (Hydra's own job log, opened
    before the job starts) counts as non-empty. On resume, a stored
    ``config.yaml`` is compared with ``resolved`` (:func:`config_changes`) and
    kept; the resumed config goes to ``config.resume-<n>.yaml``.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not is_main_process():
        return path  # rank 0 alone judges the folder: the others would see its config.yaml
    existing = [path / name for name in sorted(run_dir_entries(path, ignore))]
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
    stored = path / RESOLVED_CONFIG
    target = stored
    if run.resume and stored.is_file():
        old = OmegaConf.to_container(OmegaConf.load(stored), resolve=False)
        changes = config_changes(old, resolved)
        if changes and not run.allow_config_change:
            raise RunDirError(
                f"run.resume=true with a config that differs from {stored} in "
                f"{len(changes)} key(s) (stored -> now): {'; '.join(changes)}. Resume with "
                "the stored values, pass run.allow_config_change=true to continue with the new "
                "ones, or start a new run (run.name=…)"
            )
        if changes:
            log.warning("resuming %s with a changed config: %s", path, "; ".join(changes))
        target = _resume_config_path(path)
    path.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), target)
    return path


def has_results(names) -> bool:
    """Whether any of the folder entries ``names`` is a result (:data:`RESULTS`)."""
    from fnmatch import fnmatch

    return any(fnmatch(n, pattern) for n in names for pattern in RESULTS)


def release_run_dir(path: str | Path, before: set[str], ignore: tuple[str, ...] = ()) -> list[str]:
    """After a command failed: remove what it wrote into ``path`` (the entries not in
    ``before``), unless one of them is a result; the folder itself when that leaves
    it empty. Nothing that was there before is touched. Returns the removed names (rank 0)."""
    path = Path(path)
    if not is_main_process() or not path.is_dir():
        return []
    new = sorted(run_dir_entries(path, ignore) - set(before))
    if has_results(new):
        return []
    for name in new:
        p = path / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if not before and not any(path.iterdir()):
        path.rmdir()
    if new:
        log.info("removed what the failed command wrote into %s: %s", path, new)
    return new
