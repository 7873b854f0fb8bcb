"""Process-level facts and safe writes that every layer may use.

Which process writes (rank 0 of a launch), JSON written atomically, and a
dataclass tree as plain data (for JSON files and fingerprints). No torch, no
Hydra: the format core imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


def rank() -> int:
    """This process's global rank under a torch/accelerate/deepspeed launcher (0 without one)."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def plain(obj):
    """A dataclass (tree) as plain dicts/lists, for writing and fingerprints.

    OmegaConf containers are converted too (duck-typed, so this module needs no omegaconf).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple) or type(obj).__name__ == "ListConfig":
        return [plain(v) for v in obj]
    if isinstance(obj, dict) or type(obj).__name__ == "DictConfig":
        return {k: plain(v) for k, v in obj.items()}
    return obj


def wait_for_rank0(ready, what: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> None:
    """On the other ranks of a launch: wait until ``ready()`` is true (rank 0 is writing
    ``what``); ``TimeoutError`` naming it after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout_s:.0f} s waiting for rank 0 to write {what}"
            )
        time.sleep(poll_s)
