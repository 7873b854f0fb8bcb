"""The SFT stage (not built yet)."""

from __future__ import annotations


def run_sft(conf, run_dir) -> None:
    raise SystemExit(
        "the SFT stage is not implemented yet (tracked in its own issue); nothing was trained"
    )
