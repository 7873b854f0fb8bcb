"""``python -m bayling_duplex.cli.ablation <sweep folder> [--baseline LABEL]``: the DPO
ablation table (docs/dpo.md, "Ablation") of a finished sweep's runs, written as
``ablation.md`` and ``ablation.json`` into the sweep folder and printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from bayling_duplex.eval.ablation import write_ablation

    p = argparse.ArgumentParser(prog="python -m bayling_duplex.cli.ablation", description=__doc__)
    p.add_argument("sweep", type=Path, help="the sweep folder (runs/dpo/sweeps/<run.name>)")
    p.add_argument("runs", nargs="*", type=Path, help="run folders (default: the sweep's jobs)")
    p.add_argument("--baseline", help="label of the run the others are compared with (gold)")
    a = p.parse_args(argv)
    try:
        out = write_ablation(a.sweep, a.runs or None, a.baseline)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(out.read_text())
    print(f"written: {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
