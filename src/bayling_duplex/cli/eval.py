"""``python -m bayling_duplex.eval [checkpoint=…] [overrides]``: the behaviour evaluation.

Builds the evaluation dialogues from held-out scripts, decodes them in batches
with the streaming decoder, and writes ``report.json``, ``summary.md`` and PNG
plots into ``runs/eval/<run.name>``. By default it evaluates the newest SFT run
and, side by side, the untrained backbone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, plain, run_hydra_command, to_dataclass
from bayling_duplex.cli.run_dir import RunDirError, prepare_run_dir, run_name_error
from bayling_duplex.cli.schemas import EvalConfig
from bayling_duplex.format.vocab import VocabError

log = logging.getLogger("bayling_duplex.eval")


def load_for_eval(conf: EvalConfig, which: str, run_dir: Path):
    """``(model, tokenizer, vocab, spec)`` for a checkpoint folder or the untrained backbone."""
    from bayling_duplex.model import checkpoint
    from bayling_duplex.model.backbone import load_backbone

    if which == "untrained":
        model, tok, vocab = load_backbone(conf.model, conf.vocab, run_dir / "backbone")
        return model, tok, vocab, conf.format.spec()
    model, tok, vocab = checkpoint.load(which, conf.vocab)
    return model, tok, vocab, checkpoint.read_format(which, default=conf.format.spec())


def describe_model(conf: EvalConfig, which: str, spec) -> dict:
    """What report.json and summary.md record about ``which`` (a folder, or ``untrained``)."""
    from bayling_duplex.model import checkpoint

    if which == "untrained":
        m = conf.model
        backbone = f"model.kind={m.kind}"
        if m.path:
            backbone += f", model.path={m.path}"
        elif m.kind == "tiny":
            backbone += f", hidden {m.tiny.hidden_size}, {m.tiny.num_layers} layers"
        return {
            "path": None,
            "untrained": True,
            "backbone": backbone,
            "steps": 0,
            "format": spec.to_json(),
        }
    desc = checkpoint.describe(which)
    if desc["format"] is None:
        desc["format"] = spec.to_json()
        desc["format_from"] = "the config's format.*"
    return desc


def run_eval(conf: EvalConfig, run_dir: Path) -> dict:
    from bayling_duplex.eval.dialogues import build_eval_sets
    from bayling_duplex.eval.metrics import length_cue
    from bayling_duplex.eval.report import write_report
    from bayling_duplex.eval.runner import (
        backchannel_check,
        checkpoint_codec,
        evaluate_model,
        no_marker_check,
    )
    from bayling_duplex.model import checkpoint

    target = (
        conf.checkpoint
        if conf.checkpoint == "untrained"
        else str(checkpoint.resolve(conf.checkpoint, conf.stage).resolve())
    )
    if conf.checkpoint != target:
        log.info("checkpoint=%s resolved to %s", conf.checkpoint, target)
    codec = None if target == "untrained" else checkpoint_codec(target)
    names = {"model": target} if target != "untrained" else {}
    if conf.compare_untrained or target == "untrained":
        names["untrained"] = "untrained"
    reports, outcomes, models, evalsets, checks = {}, {}, {}, None, {}
    for label, which in names.items():
        model, tok, vocab, spec = load_for_eval(conf, which, run_dir)
        models[label] = describe_model(conf, which, spec)

        def tokenize(texts, t=tok):
            return t(texts, add_special_tokens=False)["input_ids"]

        if evalsets is None:
            seen = {}  # evalset key -> what it takes from training
            if conf.evalset.split == "train":
                seen["split"] = "questions and lead-ins"
            if conf.evalset.voice_split == "train" and codec is not None:  # spoken sets only
                seen["voice_split"] = "voices"
            if seen:
                log.warning(
                    "evalset.%s=train: these dialogues use training %s, so the figures are "
                    "a diagnostic, not held-out results",
                    " and evalset.".join(seen),
                    " and ".join(seen.values()),
                )
            evalsets = build_eval_sets(conf.evalset, spec, tokenize, codec=codec)
            cue = length_cue([it for it, _ in evalsets.items])
            if cue is not None:
                checks["hesitation_length_cue"] = cue
        items = evalsets.items
        log.info("evaluating %s (%s) on %d dialogues", label, which, len(items))
        reports[label], outcomes[label], _ = evaluate_model(
            model, tok, vocab, spec.layout, items, conf.decode, conf.batch_size, progress=True
        )
        if label == "model" and evalsets.audio is not None and conf.no_marker_check:
            trimmed = build_eval_sets(
                conf.evalset, spec, tokenize, codec=codec, trim_end_frames=1, only=("turn_taking",)
            )
            log.info(
                "no-marker check: %d turn-taking dialogues, last frame removed", len(trimmed.items)
            )
            _, trimmed_outcomes, _ = evaluate_model(
                model, tok, vocab, spec.layout, trimmed.items, conf.decode, conf.batch_size
            )
            checks["no_marker"] = no_marker_check(
                [o for o in outcomes[label] if o.scenario == "turn_taking"], trimmed_outcomes
            )
        judged_bc = [o for o in outcomes[label] if o.backchannel_kept is not None]
        if label == "model" and evalsets.audio is not None and conf.backchannel_check and judged_bc:
            quiet = build_eval_sets(
                conf.evalset, spec, tokenize, codec=codec, drop_backchannels=True,
                only=("backchannel",),
            )  # fmt: skip
            log.info("backchannel check: %d dialogues without their backchannel", len(quiet.items))
            _, quiet_outcomes, _ = evaluate_model(
                model, tok, vocab, spec.layout, quiet.items, conf.decode, conf.batch_size
            )
            checks["backchannel"] = backchannel_check(
                outcomes[label], quiet_outcomes, spec.layout.frame_s
            )
    listening = None
    if evalsets.audio is not None:
        reports.update(_vad_baselines(conf, evalsets, spec.layout, outcomes, models))
        listening = _listening(conf, run_dir, evalsets, outcomes, codec)
    if "model" in outcomes and "untrained" in outcomes:
        # the one pair worth its table: what training changed, on the same dialogues
        from bayling_duplex.eval.comparison import compare

        checks["paired"] = {
            "model vs untrained": compare(
                outcomes["untrained"], outcomes["model"], names=("untrained", "model")
            )
        }
    write_report(
        run_dir,
        reports,
        outcomes,
        items,
        spec.layout,
        conf.plots,
        evalsets.counts,
        models,
        listening=listening,
        html=True,
        checks=checks,
    )
    summary = {"checkpoint": target, "models": models, "reports": reports, "checks": checks}
    print((run_dir / "summary.md").read_text())
    print(
        f"report: {run_dir / 'report.json'}, {run_dir / 'report.html'}; "
        f"plots: {run_dir / 'latency.png'}, {run_dir / 'timelines.png'}"
    )
    return summary


def _vad_baselines(conf: EvalConfig, evalsets, layout, outcomes, models) -> dict:
    """The VAD cascades on the same dialogues' user audio, as reports beside the model's."""
    if not conf.baselines:
        return {}
    from bayling_duplex.eval.vad_baseline import run_vad_baselines

    items = [it for it, _ in evalsets.items]
    log.info("VAD baselines %s on %d dialogues", conf.baselines, len(items))
    got = run_vad_baselines(
        list(zip(items, evalsets.audio, strict=True)),
        layout,
        [it.answer_s for it in items],
        detectors=tuple(conf.baselines),
        end_silence_s=tuple(conf.baseline_end_silence_s),
        progress=True,
    )
    reports = {}
    for name, r in got.items():
        reports[name] = r["summary"]
        outcomes[name] = r["outcomes"]
        detector, ms = name.rsplit("-", 1)
        models[name] = {
            "path": None,
            "baseline": True,
            "backbone": f"VAD cascade: {detector} VAD, answers after {ms} of silence, "
            "stops on any user speech (eval/vad_baseline.py)",
        }
    return reports


def _listening(conf: EvalConfig, run_dir: Path, evalsets, outcomes, codec) -> list[dict] | None:
    """Stereo WAVs of a few dialogues (the user's microphone; the model's decoded text
    re-synthesized at its decoded onsets) and what the user channel's unit codes sound like."""
    if conf.listen <= 0 or "model" not in outcomes:
        return None
    from bayling_duplex.audio.tts import synthesize
    from bayling_duplex.data.load import recipe_from_file
    from bayling_duplex.eval.listen import write_listening

    voice = recipe_from_file(conf.evalset.recipe).speech.assistant()
    items = evalsets.items
    listening = write_listening(
        run_dir,
        [(it, wav) for (it, _), wav in zip(items, evalsets.audio, strict=True)],
        outcomes["model"],
        lambda text: synthesize(text, voice).wav,
        codes_audio=lambda i: codec.decode_diagnostic(items[i][1]) if codec is not None else None,
        n=conf.listen,
    )
    for d in listening:
        d["model"] = "model"
    return listening


def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from bayling_duplex.cli.run_dir import release_run_dir, run_dir_entries

    hc = HydraConfig.get()
    out, hydra_files = hc.runtime.output_dir, (f"{hc.job.name}.log",)
    before = run_dir_entries(out, hydra_files)  # what earlier runs left: never removed
    try:
        conf = to_dataclass(cfg, EvalConfig)
        run_dir = prepare_run_dir(out, conf.run, plain(conf), ignore=hydra_files)
        if conf.run.overwrite:
            before = set()  # what was there is gone, as asked
        run_eval(conf, Path(run_dir))
    except (ConfigError, RunDirError, VocabError, FileNotFoundError, ValueError) as e:
        # a failure before report.json leaves the folder as it was: the corrected rerun runs
        release_run_dir(out, before, hydra_files)
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException:
        release_run_dir(out, before, hydra_files)
        raise


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["run"]:
        argv = ["run", *argv]  # a single command: `python -m bayling_duplex.eval [overrides]`
    bad_name = run_name_error(argv[1:])  # before Hydra makes a folder of it
    if bad_name:
        print(f"error: {bad_name}", file=sys.stderr)
        raise SystemExit(2)
    run_hydra_command("eval", {"run": ("eval", _main)}, argv)


if __name__ == "__main__":
    main()
