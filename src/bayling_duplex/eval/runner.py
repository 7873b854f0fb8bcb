"""Run the behaviour evaluation of a model: decode the dialogues in batches and judge them.

The report files are :mod:`bayling_duplex.eval.report`'s.
"""

from __future__ import annotations

import re
from dataclasses import asdict

import numpy as np

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.eval.metrics import DialogueOutcome, EvalItem, judge, summarize
from bayling_duplex.eval.report import flat_metrics
from bayling_duplex.format.interleave import response_events
from bayling_duplex.format.layout import BlockLayout


def evaluate_model(
    model,
    tokenizer,
    vocab,
    layout: BlockLayout,
    items: list[tuple[EvalItem, np.ndarray]],
    decode: DecodeConfig,
    batch_size: int = 16,
    progress: bool = False,
):
    """Decode every item (batched) and score it; returns ``(summary, outcomes, decoded)``."""
    from tqdm.auto import tqdm

    def text_of(ids) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True) if ids else ""

    def is_correct(key: str, ids) -> bool:
        """The reference answer appears as whole words in the response text."""
        pattern = rf"(?<![\w]){re.escape(key.lower())}(?![\w])"
        return re.search(pattern, text_of(ids).lower()) is not None

    was_training = model.training
    model.eval()
    decoder = DuplexDecoder(model, vocab, layout, decode)
    outcomes: list[DialogueOutcome] = []
    decoded = []
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))  # similar lengths per batch
    bar = tqdm(total=len(items), desc="eval dialogues", disable=not progress)
    results: dict[int, object] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        for i, r in zip(idx, decoder.decode_batch([items[i][1] for i in idx]), strict=True):
            results[i] = r
        bar.update(len(idx))
    bar.close()
    for i, (item, _) in enumerate(items):
        r = results[i]
        events = response_events(r.text_ids, vocab)
        o = judge(item, events, is_correct, layout)
        o.extra |= {
            "item": asdict(item),
            "responses": [
                [
                    layout.slot_start_s(e.speak_slot),
                    None if e.epad_slot is None else layout.slot_start_s(e.epad_slot),
                    text_of(e.text_ids),
                ]
                for e in events
            ],
        }
        outcomes.append(o)
        decoded.append(r)
    if was_training:
        model.train()
    return summarize(outcomes), outcomes, decoded


def behaviour_callback(
    items, tokenizer, vocab, layout: BlockLayout, decode: DecodeConfig, batch_size: int = 16
):
    """A ``TrainerCallback`` that runs the behaviour evaluation at each evaluation and logs it.

    Every rank decodes (under ZeRO-3 a forward needs all ranks); the Trainer logs on rank 0.
    """
    from transformers import TrainerCallback

    class BehaviourEval(TrainerCallback):
        def __init__(self) -> None:
            self.trainer = None
            self.last: dict[str, float] = {}

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if self.trainer is None or model is None:
                return control
            summary, _, _ = evaluate_model(
                self.trainer.model, tokenizer, vocab, layout, items, decode, batch_size
            )
            self.last = flat_metrics(summary)
            self.trainer.log(dict(self.last))
            return control

    return BehaviourEval()


def checkpoint_codec(path):
    """The fitted codec a checkpoint's data was coded with (``<checkpoint>/codec``), or None."""
    from pathlib import Path

    from bayling_duplex.model import checkpoint

    if not Path(path).is_dir() or not (Path(path) / checkpoint.DUPLEX_META).is_file():
        return None
    folder = checkpoint.codec_dir(path)
    if folder is None:
        return None
    from bayling_duplex.audio.units import UnitCodec

    return UnitCodec.load(folder)


def no_marker_check(
    outcomes_as_built: list[DialogueOutcome],
    outcomes_trimmed: list[DialogueOutcome],
    max_loss_points: float = 5.0,
) -> dict:
    """SR@3s of the same turn-taking dialogues as built and with the last frame of every
    user turn's speech removed, paired, with the interval of the difference. A model
    that answers on something planted at the very end of a turn loses here."""
    from bayling_duplex.eval.metrics import paired_difference

    trimmed = {o.id: o for o in outcomes_trimmed}
    pairs = [(o, trimmed[o.id]) for o in outcomes_as_built if o.id in trimmed]
    d = paired_difference(
        [a.taken == "success" for a, _ in pairs], [b.taken == "success" for _, b in pairs]
    )
    loss = None if d["difference"] is None else round(-100 * d["difference"], 2)
    return {
        "dialogues": d["n"],
        "SR@3s_as_built": d["a"],
        "SR@3s_last_frame_removed": d["b"],
        "difference": d["difference"],
        "difference_interval95": d["interval95"],
        "loss_points": loss,
        "max_loss_points": max_loss_points,
        "passed": loss is not None and loss <= max_loss_points,
    }


def _playing_end(o: DialogueOutcome, t_s: float):
    """(found, end) of the response playing at ``t_s`` in an outcome's recorded responses."""
    for start, end, *_ in o.extra.get("responses", []):
        if start <= t_s and (end is None or end > t_s):
            return True, end
    return False, None


def backchannel_check(
    outcomes_as_built: list[DialogueOutcome],
    outcomes_without: list[DialogueOutcome],
    frame_s: float,
) -> dict:
    """Did the backchannel cut the response, or did the response end where it ends anyway?

    ``outcomes_without``: the same backchannel dialogues decoded with the backchannel
    clips left out of the user's audio (same noise, same timeline). Every judged dialogue
    the judge counts as not kept (the response stopped within a block of the onset) is
    compared with its counterfactual: where the response without the backchannel ends no
    later, the backchannel did not shorten it (a natural end, e.g. the model's answer
    a little shorter than the reference's). ``robustness_causal`` counts only stops the
    backchannel caused; ``robustness_as_judged`` is the headline figure."""
    from bayling_duplex.eval.metrics import bootstrap_interval

    without = {o.id: o for o in outcomes_without}
    judged = [o for o in outcomes_as_built if o.backchannel_kept is not None and o.id in without]
    kept_causal, natural, caused, differ = [], 0, 0, 0
    for o in judged:
        b_s = o.extra["item"]["backchannel"][0] * frame_s
        found, end_cf = _playing_end(without[o.id], b_s)
        if o.backchannel_kept:
            kept_causal.append(True)
            continue
        _, end_bc = _playing_end(o, b_s)
        if not found:  # the two decodes differ before the onset: cannot tell, count as cut
            differ += 1
            kept_causal.append(False)
        elif end_cf is not None and end_bc is not None and end_bc >= end_cf:
            natural += 1
            kept_causal.append(True)
        else:
            caused += 1
            kept_causal.append(False)

    def rate(xs):
        return round(sum(xs) / len(xs), 4) if xs else None

    iv = bootstrap_interval([float(x) for x in kept_causal])
    return {
        "dialogues": len(judged),
        "robustness_as_judged": rate([bool(o.backchannel_kept) for o in judged]),
        "robustness_causal": rate(kept_causal),
        "robustness_causal_interval95": None if iv is None else [round(v, 4) for v in iv],
        "not_kept": natural + caused + differ,
        "natural_ends": natural,
        "cut_by_backchannel": caused,
        "differ_before_onset": differ,
    }
