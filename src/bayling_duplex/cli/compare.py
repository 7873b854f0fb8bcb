"""``python -m bayling_duplex.cli.compare A B``: two evaluations of the same held-out
dialogues, paired (docs/evaluation.md, "Intervals and paired comparisons").

``A`` and ``B`` are ``report.json`` files or the folders holding them (an ``eval`` run, or a
DPO run's before/after report). Each report holds one or more models' per-dialogue
outcomes; ``--a-model``/``--b-model`` choose which (default: ``model``, else the report's
only trained model: ``dpo`` in a DPO report). Prints the table of every paired figure,
``B − A`` with its 95 % bootstrap interval, and writes it with ``--out``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PREFERRED = ("model", "dpo")


def _load(path: Path, model: str | None) -> tuple[str, list]:
    from bayling_duplex.eval.metrics import DialogueOutcome

    report_path = path / "report.json" if path.is_dir() else path
    if not report_path.is_file():
        raise FileNotFoundError(f"{path}: no report.json (run python -m bayling_duplex.eval)")
    report = json.loads(report_path.read_text())
    models = [k for k, v in report.items() if isinstance(v, dict) and "dialogues" in v]
    if model is None:
        model = next((m for m in PREFERRED if m in models), None)
        if model is None:
            raise ValueError(f"{report_path}: name the model to compare: one of {models}")
    if model not in models:
        raise ValueError(f"{report_path}: no model {model!r}; it holds {models}")
    return f"{report_path.parent.name}/{model}", [
        DialogueOutcome(**d) for d in report[model]["dialogues"]
    ]


def markdown(result: dict) -> str:
    from bayling_duplex.eval.ablation import difference_cell

    a, b = result["runs"]["a"], result["runs"]["b"]
    lines = [
        f"# {b} − {a}, paired on {result['dialogues']} dialogues",
        "",
        f"Unmatched dialogues: {result['unmatched']['a']} in A, {result['unmatched']['b']} in B. "
        "Rates in points; 95 % paired bootstrap intervals; **better**/**worse** where the "
        "interval excludes 0.",
        "",
        f"| figure | n | {a} | {b} | difference |",
        "|---|---|---|---|---|",
    ]
    for f in result["figures"].values():
        scale = 100 if f["kind"] == "rate" else 1
        va = "–" if f["a"] is None else f"{f['a'] * scale:.2f}"
        vb = "–" if f["b"] is None else f"{f['b'] * scale:.2f}"
        lines.append(
            f"| {f['label']} ({f['better']}) | {f['n']} | {va} | {vb} | {difference_cell(f)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from bayling_duplex.eval.comparison import compare

    p = argparse.ArgumentParser(prog="python -m bayling_duplex.cli.compare", description=__doc__)
    p.add_argument("a", type=Path, help="report.json (or its folder) of the first run")
    p.add_argument("b", type=Path, help="report.json (or its folder) of the second run")
    p.add_argument("--a-model", help="the model of A's report (default: model, else dpo)")
    p.add_argument("--b-model", help="the model of B's report (default: model, else dpo)")
    p.add_argument("--out", type=Path, help="write the table (markdown) and its .json here")
    args = p.parse_args(argv)
    try:
        name_a, a = _load(args.a, args.a_model)
        name_b, b = _load(args.b, args.b_model)
        if name_a == name_b:
            name_a, name_b = f"A:{name_a}", f"B:{name_b}"
        result = compare(a, b, names=(name_a, name_b))
        if not result["dialogues"]:
            raise ValueError("the two reports share no dialogue id: not the same evaluation set")
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        print(f"written: {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
