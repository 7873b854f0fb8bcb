"""``python -m bayling_duplex.eval [checkpoint=…] [overrides]``: the behaviour evaluation.

Builds the evaluation dialogues from held-out scripts, decodes them in batches
with the streaming decoder, and writes ``report.json``, ``summary.md`` and PNG
plots into ``runs/eval/<run.name>``. By default it evaluates the newest SFT run
and, side by side, the untrained backbone.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, plain, run_hydra_command, to_dataclass
from bayling_duplex.cli.run_dir import RunConfig, RunDirError, prepare_run_dir
from bayling_duplex.data.recipe import FormatConfig
from bayling_duplex.decode.decoder import DecodeConfig
from bayling_duplex.eval.dialogues import EvalSetConfig
from bayling_duplex.format.vocab import VocabConfig, VocabError
from bayling_duplex.model.backbone import ModelConfig

log = logging.getLogger("bayling_duplex.eval")
DUPLEX_META = "duplex.json"  # written beside a trained checkpoint: its layout and silence codes


@dataclass
class EvalConfig:
    # a checkpoint folder; "latest": the newest runs/<stage>/*/final; "untrained": the backbone as built
    checkpoint: str = "latest"
    stage: str = "sft"  # where "latest" looks
    compare_untrained: bool = True  # also evaluate the untrained backbone, side by side
    run: RunConfig = field(default_factory=RunConfig)
    evalset: EvalSetConfig = field(default_factory=EvalSetConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the backbone for "untrained"
    format: FormatConfig = field(
        default_factory=FormatConfig
    )  # used when the checkpoint has no duplex.json
    batch_size: int = 16
    plots: int = 8


def latest_checkpoint(stage: str, runs: Path = Path("runs")) -> Path:
    finals = [
        p.parent / "final"
        for p in (runs / stage).glob("*/summary.json")
        if (p.parent / "final").is_dir()
    ]
    if not finals:
        raise FileNotFoundError(
            f"no trained checkpoint under {runs / stage}/*/final; train one first:\n"
            f"  python -m bayling_duplex.train {stage}"
        )
    return max(finals, key=lambda p: (p.parent / "summary.json").stat().st_mtime)


def load_for_eval(conf: EvalConfig, which: str, run_dir: Path):
    """``(model, tokenizer, vocab, spec)`` for a checkpoint folder or the untrained backbone."""
    from bayling_duplex.model.backbone import load_backbone, load_trained

    if which == "untrained":
        model, tok, vocab = load_backbone(conf.model, conf.vocab, run_dir / "backbone")
        return model, tok, vocab, conf.format.spec()
    model, tok, vocab = load_trained(which, conf.vocab)
    meta = Path(which) / DUPLEX_META
    fmt = FormatConfig(**json.loads(meta.read_text())["format"]) if meta.is_file() else conf.format
    return model, tok, vocab, fmt.spec()


def run_eval(conf: EvalConfig, run_dir: Path) -> dict:
    from bayling_duplex.eval.dialogues import build_eval_items
    from bayling_duplex.eval.runner import evaluate_model, write_report

    target = str(latest_checkpoint(conf.stage)) if conf.checkpoint == "latest" else conf.checkpoint
    names = {"model": target} if target != "untrained" else {}
    if conf.compare_untrained or target == "untrained":
        names["untrained"] = "untrained"
    reports, outcomes, items = {}, {}, None
    for label, which in names.items():
        model, tok, vocab, spec = load_for_eval(conf, which, run_dir)
        if items is None:
            items = build_eval_items(
                conf.evalset,
                spec,
                lambda texts, t=tok: t(texts, add_special_tokens=False)["input_ids"],
            )
        log.info("evaluating %s (%s) on %d dialogues", label, which, len(items))
        reports[label], outcomes[label], _ = evaluate_model(
            model, tok, vocab, spec.layout, items, conf.decode, conf.batch_size, progress=True
        )
    write_report(run_dir, reports, outcomes, items, spec.layout, conf.plots)
    summary = {"checkpoint": target, "reports": reports}
    print((run_dir / "summary.md").read_text())
    print(
        f"report: {run_dir / 'report.json'}; plots: {run_dir / 'latency.png'}, {run_dir / 'timelines.png'}"
    )
    return summary


def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        conf = to_dataclass(cfg, EvalConfig)
        hc = HydraConfig.get()
        run_dir = prepare_run_dir(
            hc.runtime.output_dir, conf.run, plain(conf), ignore=(f"{hc.job.name}.log",)
        )
        run_eval(conf, Path(run_dir))
    except (ConfigError, RunDirError, VocabError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        argv = ["run", *argv]  # a single command: `python -m bayling_duplex.eval [overrides]`
    run_hydra_command("eval", {"run": ("eval", _main)}, argv)


if __name__ == "__main__":
    main()
