"""The block grid of a dialogue, for a person to check a recipe by eye (format §7).

One row per block ``k``: the user frames it covers, the text channel ``X_k`` and
the assistant frames ``[(k+1)B, (k+2)B)``. Frame annotations come from the
timeline's segments and responses; the text channel comes from the sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bayling_duplex.format.interleave import DuplexSequence, split_channels
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import Timeline
from bayling_duplex.format.vocab import DuplexVocab


def _spans_in(spans: list[tuple[str, int, int]], lo: int, hi: int, idle: str) -> str:
    """Describe which labelled ``[start, end)`` spans touch frames ``[lo, hi)`` (ends exclusive)."""
    notes = []
    for label, s, e in spans:
        if e <= lo or s >= hi:
            continue
        if lo <= s and e <= hi:
            notes.append(f"{label} on [{s},{e})")
        elif lo <= s:
            notes.append(f"{label} starts at {s}")
        elif e <= hi:
            notes.append(f"{label} ends at {e}")  # exclusive end, as the format document writes it
        else:
            notes.append(label)
    return ", ".join(notes) if notes else idle


def render_grid(
    seq: DuplexSequence,
    layout: BlockLayout,
    vocab: DuplexVocab,
    token_text: Callable[[int], str],
    timeline: Timeline | None = None,
) -> str:
    """A Markdown table of the block grid. ``token_text(id)`` shows one text-channel id."""
    B, T = layout.frames_per_block, layout.slots_per_block
    ch = split_channels(seq.input_ids, layout, vocab)
    user_spans: list[tuple[str, int, int]] = []
    asst_spans: list[tuple[str, int, int]] = []
    if timeline is not None:
        n_turn = 0
        for seg in timeline.user_segments:
            if seg.kind == "turn":
                n_turn += 1
                user_spans.append((f"turn {n_turn}", seg.start_frame, seg.end_frame))
            else:
                user_spans.append(("backchannel", seg.start_frame, seg.end_frame))
        for i, r in enumerate(timeline.responses, 1):
            label = f"response {i}" + (" (cut)" if r.interrupted else "")
            asst_spans.append((label, r.start_frame, r.end_frame))
    rows = ["| block k | user frames | X_k | assistant frames |", "|---|---|---|---|"]
    for k in range(seq.num_blocks):
        slots = ch.text_slots[k * T : (k + 1) * T]
        x = " ".join(token_text(int(t)) for t in slots)
        u_lo, u_hi = k * B, (k + 1) * B
        a_lo, a_hi = (k + 1) * B, (k + 2) * B
        user = f"[{u_lo},{u_hi}) " + (
            _spans_in(user_spans, u_lo, u_hi, "silence") if timeline else ""
        )
        asst = f"[{a_lo},{a_hi}) " + (
            _spans_in(asst_spans, a_lo, a_hi, "silence") if timeline else ""
        )
        rows.append(f"| {k} | {user.strip()} | {x} | {asst.strip()} |")
    return "\n".join(rows)


def tokenizer_token_text(tokenizer, vocab: DuplexVocab) -> Callable[[int], str]:
    """Show control tokens by their string and text tokens decoded (spaces trimmed)."""
    controls = {vocab.silence_id, vocab.speak_id, vocab.pad_id, vocab.epad_id}

    def show(tid: int) -> str:
        if tid in controls:
            return tokenizer.convert_ids_to_tokens(tid)
        text = tokenizer.decode([tid]).strip()
        return text if text else repr(tokenizer.decode([tid]))

    return show


def codes_preview(codes: np.ndarray, limit: int = 12) -> str:
    head = " ".join(str(int(c)) for c in codes[:limit])
    return head + (" …" if len(codes) > limit else "")
