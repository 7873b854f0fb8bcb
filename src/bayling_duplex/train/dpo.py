"""The DPO stage: ``python -m bayling_duplex.train dpo`` (docs/dpo.md).

The paper's light second stage teaches *when* to start and stop: pairs with the
same content and different timing (:mod:`bayling_duplex.data.pairs`), trained
with TRL's ``DPOTrainer`` against a frozen copy of the SFT checkpoint (or, under
LoRA, the adapter-free base). Steps of :func:`run_dpo`:

1. the SFT checkpoint (``init``), its tokenizer and its format;
2. pairs, built once into ``pairs.path`` (fingerprinted like the SFT data);
3. policy and reference model;
4. TRL's trainer fed pre-tokenized pairs and scored-token masks;
5. train, then the held-out pairs' rewards;
6. save ``final/`` (merged when LoRA);
7. behaviour evaluation before (SFT) and after (DPO) on the same held-out dialogues.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from bayling_duplex.data.pair_build import PAIR_COLUMNS, load_pairs
from bayling_duplex.train.config import (  # noqa: F401 (TRL_LOSS_TYPES re-exported)
    TRL_LOSS_TYPES,
    DpoSettings,
    LoraSettings,
    OptimConfig,
    TrainConfig,
    dpo_optim,
    dpo_train,
)
from bayling_duplex.train.hf_args import lora_config, training_kwargs

log = logging.getLogger("bayling_duplex.dpo")


def load_init(path: Path, conf):
    """``(model, tokenizer, vocab)`` of the SFT checkpoint a run starts from (LoRA merged)."""
    from bayling_duplex.model import checkpoint

    return checkpoint.load(path, conf.vocab, conf.model.dtype)


# ----------------------------------------------------------------------------- trainer


@dataclass
class PreferenceCollator:
    """Pairs → TRL's batch: the chosen rows, then the rejected rows, right-padded.

    TRL turns ``completion_mask`` into labels (-100 where 0) and sums the
    log-probabilities of the rest, so putting the scored-token masks there keeps
    user audio (and the prompt) out of both policy and reference log-probs. Example
    (pad ``P``)::

        {"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5, 6],
         "chosen_mask": [0, 1], "rejected_mask": [0, 1]}
        {"prompt_ids": [7], "chosen_ids": [8, 9], "rejected_ids": [8, 10],
         "chosen_mask": [0, 1], "rejected_mask": [0, 1]}
        ->
        input_ids        [[1, 2, 3, 4], [7, 8, 9, P], [1, 2, 5, 6], [7, 8, 10, P]]
        attention_mask   [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
        completion_mask  [[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 0]]

    Precomputed ``ref_chosen_logps`` / ``ref_rejected_logps`` pass through.
    """

    pad_id: int

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs, masks = [], []
        for side in ("chosen", "rejected"):
            for r in rows:
                seqs.append([*r["prompt_ids"], *r[f"{side}_ids"]])
                masks.append([0] * len(r["prompt_ids"]) + list(r[f"{side}_mask"]))
        n = max(len(s) for s in seqs)
        out = {
            "input_ids": torch.full((len(seqs), n), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(seqs), n), dtype=torch.long),
            "completion_mask": torch.zeros((len(seqs), n), dtype=torch.long),
        }
        for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
            out["input_ids"][i, : len(s)] = torch.as_tensor(s)
            out["attention_mask"][i, : len(s)] = 1
            out["completion_mask"][i, : len(m)] = torch.as_tensor(m)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in rows[0]:
                out[key] = torch.tensor([r[key] for r in rows])
        return out


@functools.cache
def trainer_class() -> type:
    """:class:`DuplexDPOTrainer`, defined on first use: importing TRL takes seconds."""
    from trl import DPOTrainer

    class DuplexDPOTrainer(DPOTrainer):
        """TRL's ``DPOTrainer`` on pre-tokenized duplex pairs; one method overridden.

        ``_prepare_dataset``: TRL's version extracts a prompt from text, appends EOS
        and tokenizes ``prompt``/``chosen``/``rejected`` strings. Duplex pairs are
        already ids cut on block boundaries, an EOS is a token the format does not
        have, and the scored-token masks must survive; so here preparation only
        checks the columns. The masks reach the loss through
        :class:`PreferenceCollator` (TRL's ``completion_mask``). Everything else is
        TRL's: losses, beta, reference model (frozen copy, adapter-free base under
        PEFT, or precomputed log-probs), DeepSpeed, PEFT.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            missing = [c for c in PAIR_COLUMNS if c not in dataset.column_names]
            if missing:
                raise ValueError(f"{dataset_name} pairs lack the columns {missing}")
            return dataset

    return DuplexDPOTrainer


def dpo_arguments(conf, run_dir: Path, has_eval: bool):
    """TRL's ``DPOConfig`` for this run: the generic mapping and TRL's DPO keywords."""
    from trl import DPOConfig as TrlDPOConfig

    d = conf.dpo
    loss_type, loss_weights = d.losses()
    return TrlDPOConfig(
        **training_kwargs(
            conf.train,
            conf.optim,
            conf.run,
            conf.deepspeed.config,
            run_dir,
            has_eval,
            beta=d.beta,
            loss_type=loss_type,
            loss_weights=loss_weights,
            precompute_ref_log_probs=d.precompute_ref,
            max_length=None,  # pairs are cut on block boundaries when made; never truncate
            # TRL's own flag (it defaults to true): always say, like activation_checkpointing
            gradient_checkpointing=conf.train.gradient_checkpointing,
        )
    )


# ----------------------------------------------------------------------------- stage


def run_dpo(conf, run_dir: Path) -> dict:
    """Train ``conf.rounds`` rounds; write ``final/``, ``summary.json`` and the before/after
    report into ``run_dir`` (one round: the round *is* the run folder; more: ``round_<n>/``
    each, ``final/`` a copy of the last round's, and the rounds side by side)."""
    from bayling_duplex.model import checkpoint
    from bayling_duplex.runtime import is_main_process, write_json
    from bayling_duplex.train.hf_args import configure_wandb, finish_wandb

    run_dir = Path(run_dir)
    finish_wandb()  # an earlier job of this process (a sweep) may have left its run open
    configure_wandb(conf.run.wandb, run_dir)
    init = checkpoint.resolve(conf.init, "sft")
    if conf.rounds == 1:
        summary = train_round(conf, init, init, run_dir, 1, {})
        finish_wandb()
        return summary
    policy, rounds, sft_eval = init, [], {}
    for n in range(1, conf.rounds + 1):
        round_dir = run_dir / f"round_{n}"
        done = round_dir / "summary.json"
        if conf.run.resume and done.is_file() and (round_dir / "final" / "duplex.json").is_file():
            log.info("round %d is complete in %s: continuing from its final/", n, round_dir)
            summary = json.loads(done.read_text())
        else:
            summary = train_round(conf, init, policy, round_dir, n, sft_eval)
        rounds.append(summary)
        policy = round_dir / "final"
    summary = {
        "stage": "dpo",
        "run_dir": str(run_dir),
        "init": str(init),
        "rounds": [_round_line(r) for r in rounds],
        "checkpoint": str(run_dir / "final"),
    }
    if is_main_process():
        import shutil

        shutil.rmtree(run_dir / "final", ignore_errors=True)
        shutil.copytree(policy, run_dir / "final")
        write_json(run_dir / "summary.json", summary)
        (run_dir / "summary.md").write_text(_rounds_markdown(summary, rounds))
        print("DPO rounds: " + json.dumps(summary["rounds"], indent=1))
    finish_wandb()
    return summary


def _round_line(r: dict) -> dict:
    keep = (
        "round",
        "policy",
        "steps",
        "train_pairs",
        "train_seconds",
        "pair_seconds",
        "checkpoint",
    )
    line = {k: r.get(k) for k in keep}
    if r.get("behaviour"):
        line["headline"] = r["behaviour"]["dpo"]
        line["paired"] = r["behaviour"].get("paired")
    return line


def train_round(
    conf, init: Path, policy: Path, run_dir: Path, round_no: int, sft_eval: dict
) -> dict:
    """One round: pairs (of ``policy`` where on-policy), TRL's DPO from ``policy`` against a
    frozen copy of it, ``final/``, and the behaviour of ``init`` (SFT) and ``final`` on the
    same held-out dialogues. ``sft_eval`` caches the SFT side between rounds."""
    import time

    from bayling_duplex.eval.runner import checkpoint_codec
    from bayling_duplex.model import checkpoint
    from bayling_duplex.model.checkpoint import CheckpointMeta
    from bayling_duplex.runtime import is_main_process, write_json
    from bayling_duplex.train.hf_args import check_lora_targets
    from bayling_duplex.train.sft_trainer import RunLoss, StopOnInterrupt, train_resumable

    run_dir.mkdir(parents=True, exist_ok=True)
    # 1. the policy (round 1: the SFT checkpoint), its tokenizer and its format
    spec = checkpoint.read_format(init)
    model, tokenizer, vocab = load_init(policy, conf)
    if conf.lora.enabled:
        check_lora_targets(model, conf.lora)  # before the pairs are made
    # 2. pairs made with this tokenizer and format, coded by the SFT data's codec
    t0 = time.perf_counter()
    codec = checkpoint_codec(init)
    train_ds, eval_ds, manifest = pair_sets(
        conf, model, tokenizer, vocab, spec, codec, init, policy
    )
    pair_seconds = time.perf_counter() - t0
    # 3. reference: a frozen copy, unless LoRA (adapters off) or precomputed log-probs
    ref = None
    if not conf.lora.enabled and not conf.dpo.precompute_ref:
        ref = load_init(policy, conf)[0].eval().requires_grad_(False)
    # 4. TRL's trainer on our pairs
    args = dpo_arguments(conf, run_dir, eval_ds is not None)
    run_loss, interrupt = RunLoss(), StopOnInterrupt()
    trainer = trainer_class()(
        model=model,
        ref_model=ref,
        args=args,
        data_collator=PreferenceCollator(pad_id=vocab.silence_id),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=lora_config(conf.lora) if conf.lora.enabled else None,
        callbacks=[run_loss, interrupt],
    )
    run_loss.trainer = trainer
    # 5. train (Ctrl-C: the step ends, a checkpoint is saved, TrainingInterrupted), then
    # the held-out pairs
    result, resume, seconds = train_resumable(trainer, run_dir, conf.run.resume, interrupt)
    metrics = trainer.evaluate() if eval_ds is not None else {}
    # 6. save (every rank: ZeRO-3 gathers the weights collectively)
    final = run_dir / "final"
    trainer.save_model(str(run_dir / "adapter" if conf.lora.enabled else final))
    summary = {
        "stage": "dpo",
        "round": round_no,
        "run_dir": str(run_dir),
        "init": str(init),
        "policy": str(policy),
        "pair_source": conf.pairs.source,
        "steps": trainer.state.global_step,
        "resumed_from": str(resume) if resume else None,
        # the mean over every step of the run, resumed or not
        "train_loss": run_loss.train_loss(result.training_loss, trainer.state.global_step),
        "train_seconds": round(seconds, 1),
        "pair_seconds": round(pair_seconds, 1),
        "train_pairs": len(train_ds),
        "pairs": {s: {k: v[k] for k in ("pairs", "kinds")} for s, v in manifest["splits"].items()},
        "pair_sources": manifest.get("sources"),
        **{k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)},
        "checkpoint": str(final),
    }
    if not is_main_process():
        return summary
    # rank 0 alone loads plain models from here on; under ZeRO-3, transformers would
    # otherwise partition them at load time, a collective the other ranks never join
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    if conf.lora.enabled:
        merge_adapter(policy, run_dir / "adapter", final, conf)
    tokenizer.save_pretrained(final)
    codec_info = checkpoint.read_meta(init).codec
    if codec_info:  # the SFT checkpoint's codec travels on
        checkpoint.copy_codec(checkpoint.codec_dir(init), final)
    data_name = manifest["name"]
    checkpoint.write_meta(final, CheckpointMeta(spec, data_name, "dpo", str(policy), codec_info))
    # 7. behaviour before and after, on the same held-out dialogues
    if conf.eval.enabled:
        summary["behaviour"] = behaviour_before_after(
            conf, init, final, spec, run_dir, summary, sft_eval
        )
    summary["log_history"] = trainer.state.log_history
    write_json(run_dir / "summary.json", summary)
    short = {k: v for k, v in summary.items() if k != "log_history"}
    print("DPO summary: " + json.dumps(short, indent=1))
    return summary


def pair_sets(conf, model, tokenizer, vocab, spec, codec, init: Path, policy: Path):
    """``(train, heldout, manifest)`` of ``pairs.source``: the gold-perturbation pairs, the
    on-policy pairs of ``policy``, or both concatenated."""
    from bayling_duplex.data.pair_build import combine_pair_sets

    sets = {}
    if conf.pairs.source in ("gold", "mix"):
        sets["gold"] = load_pairs(conf, tokenizer, vocab, spec, codec)
    if conf.pairs.source in ("on_policy", "mix"):
        from bayling_duplex.data.onpolicy import load_onpolicy_pairs
        from bayling_duplex.model import checkpoint

        sft_codec = checkpoint.read_meta(init).codec
        sets["on_policy"] = load_onpolicy_pairs(conf, model, vocab, spec, policy, sft_codec)
    if len(sets) == 1:
        ((train, heldout, manifest),) = sets.values()
        return train, heldout, manifest
    return combine_pair_sets(sets)


def merge_adapter(init: Path, adapter: Path, final: Path, conf) -> None:
    """``final/``: the SFT weights with the DPO adapter merged in (what decoding loads)."""
    from peft import PeftModel

    base = load_init(init, conf)[0]
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(final)


# ----------------------------------------------------------------------------- behaviour

HEADLINE = (
    ("SR@3s", "up"),
    ("early_start", "down"),
    ("no_response", "down"),
    ("latency_mean_s", "down"),
    ("ISR@2s", "up"),
    ("overlap_mean_s", "down"),
    ("backchannel_robustness", "up"),
    ("hesitation_robustness", "up"),
    ("accuracy", "up"),
)


def headline(report: dict) -> dict[str, float | None]:
    from bayling_duplex.eval.report import flat_metrics

    flat = {k.split("/", 1)[1]: v for k, v in flat_metrics(report).items()}
    flat["backchannel_robustness"] = report["backchannel_robustness"]
    flat["hesitation_robustness"] = report["hesitation_robustness"]
    return {k: flat.get(k) for k, _ in HEADLINE}


def behaviour_before_after(
    conf, init: Path, final: Path, spec, run_dir: Path, summary: dict, cache: dict | None = None
) -> dict:
    """Evaluate ``init`` (SFT) and ``final`` (DPO) on the same dialogues; write the report
    (report.json and summary.md name both checkpoints: :func:`~bayling_duplex.model.checkpoint.describe`).

    ``result["paired"]``: :func:`~bayling_duplex.eval.comparison.compare` of the two on the
    same dialogues (DPO − SFT, with the paired interval of each difference), also in
    report.json's checks and as a table in summary.md. ``cache`` keeps the SFT side (and
    the dialogues) between rounds."""
    from bayling_duplex.eval.comparison import compare
    from bayling_duplex.eval.dialogues import build_eval_sets
    from bayling_duplex.eval.report import markdown_summary, write_report
    from bayling_duplex.eval.runner import checkpoint_codec, evaluate_model
    from bayling_duplex.model.backbone import load_trained
    from bayling_duplex.model.checkpoint import describe

    # final/'s summary.json is written after this report: its steps come from this run
    models = {"sft": describe(init), "dpo": {**describe(final), "steps": summary.get("steps")}}
    cache = {} if cache is None else cache
    reports, outcomes, evalsets = {}, {}, cache.get("evalsets")
    for label, path in (("sft", init), ("dpo", final)):
        if label == "sft" and "sft" in cache:
            reports["sft"], outcomes["sft"] = cache["sft"]
            continue
        model, tok, vocab = (
            load_init(path, conf)
            if label == "sft"
            else load_trained(path, conf.vocab, conf.model.dtype)
        )
        if evalsets is None:
            evalsets = build_eval_sets(
                conf.eval.evalset,
                spec,
                lambda t, tk=tok: tk(t, add_special_tokens=False)["input_ids"],
                codec=checkpoint_codec(init),
            )
            cache["evalsets"] = evalsets
        items = evalsets.items
        log.info("behaviour evaluation of %s (%s) on %d dialogues", label, path, len(items))
        reports[label], outcomes[label], _ = evaluate_model(
            model, tok, vocab, spec.layout, items, conf.eval.decode, conf.eval.batch_size
        )
        if label == "sft":
            cache["sft"] = (reports["sft"], outcomes["sft"])
    items = evalsets.items
    paired = compare(outcomes["sft"], outcomes["dpo"], names=("SFT", "DPO"))
    write_report(
        run_dir,
        reports,
        outcomes,
        items,
        spec.layout,
        conf.eval.plots,
        evalsets.counts,
        models,
        checks={"paired": {"DPO vs SFT": paired}},
    )
    before, after = headline(reports["sft"]), headline(reports["dpo"])
    delta = {
        k: None if before[k] is None or after[k] is None else round(after[k] - before[k], 4)
        for k in before
    }
    kept = all(
        after[k] is None or before[k] is None or after[k] >= before[k] - 1e-9
        for k in ("SR@3s", "ISR@2s")
    )
    result = {"sft": before, "dpo": after, "delta": delta, "sr_isr_kept": kept, "paired": paired}
    (run_dir / "summary.md").write_text(
        _markdown(summary, result, models)
        + "\n"
        + markdown_summary(reports, evalsets.counts, models)
    )
    if not kept:
        log.warning("DPO lowered SR@3s or ISR@2s: %s", delta)
    return result


def _markdown(summary: dict, result: dict, models: dict | None = None) -> str:
    def checkpoint_line(label: str, m: dict) -> str:
        steps = "?" if m.get("steps") is None else m["steps"]
        init = f", init `{m['init']}`" if m.get("init") else ""
        return (
            f"- {label}: `{m['path']}` (stage {m.get('stage') or '?'}, "
            f"data {m.get('data') or '?'}{init}, {steps} steps)"
        )

    lines = [
        f"# DPO{' round ' + str(summary['round']) if summary.get('round', 1) > 1 else ''}: "
        "before (SFT) and after",
        "",
        f"- init: `{summary['init']}`; {summary['steps']} steps on {summary['train_pairs']} pairs "
        f"({summary['train_seconds']} s); pairs by kind: {summary['pairs']['train']['kinds']}",
    ]
    if models:
        lines += [
            checkpoint_line("before (SFT)", models["sft"]),
            checkpoint_line("after (DPO)", models["dpo"]),
        ]
    if "eval_rewards/accuracies" in summary:
        lines.append(
            f"- held-out pairs: reward accuracy {summary['eval_rewards/accuracies']:.3f}, "
            f"margin {summary['eval_rewards/margins']:.3f}"
        )
    lines.append(f"- SR@3s and ISR@2s kept: {'yes' if result['sr_isr_kept'] else '**no**'}")
    lines += ["", "| metric | SFT | DPO | change |", "|---|---|---|---|"]

    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for key, better in HEADLINE:
        b, a, d = result["sft"][key], result["dpo"][key], result["delta"][key]
        lines.append(f"| {key} ({better} is better) | {fmt(b)} | {fmt(a)} | {fmt(d)} |")
    if result.get("paired"):
        from bayling_duplex.eval.report import paired_table

        lines += [
            "",
            "## Paired: DPO vs SFT on the same dialogues",
            "",
            *paired_table(result["paired"], "SFT", "DPO"),
        ]
    return "\n".join(lines) + "\n"


def _rounds_markdown(summary: dict, rounds: list[dict]) -> str:
    """The rounds side by side: each round's headline figures and its paired change vs SFT."""
    lines = [
        f"# DPO: {len(rounds)} rounds from `{summary['init']}`",
        "",
        "Each round rolls out the policy it starts from, makes its pairs and trains against a "
        "frozen copy of that policy; every round is evaluated against the SFT checkpoint on "
        "the same held-out dialogues (`round_<n>/summary.md` has each round's full report).",
        "",
    ]
    heads = [r.get("behaviour", {}).get("dpo") for r in rounds]
    if all(heads):
        sft = rounds[0]["behaviour"]["sft"]
        lines += [
            "| metric | SFT | " + " | ".join(f"round {r['round']}" for r in rounds) + " |",
            "|---|---|" + "---|" * len(rounds),
        ]

        def fmt(v):
            return "–" if v is None else f"{v:.3f}"

        for key, better in HEADLINE:
            row = [fmt(sft[key])] + [fmt(h[key]) for h in heads]
            lines.append(f"| {key} ({better} is better) | " + " | ".join(row) + " |")
    lines += ["", "| round | pairs | pair build (s) | train (s) | steps |", "|---|---|---|---|---|"]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {r['train_pairs']} | {r.get('pair_seconds')} | "
            f"{r['train_seconds']} | {r['steps']} |"
        )
    return "\n".join(lines) + "\n"
