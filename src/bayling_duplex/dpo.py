"""The DPO stage (not built yet)."""

from __future__ import annotations


def run_dpo(conf, run_dir) -> None:
    raise SystemExit(
        "the DPO stage is not implemented yet (tracked in its own issue); nothing was trained"
    )
