"""Timeline → interleaved full-duplex sequence, its checker and its inverse (format §3–§5, §9).

Everything here is pure: records and ids in, arrays out; no tokenizer, device,
disk or codec. The caller tokenizes each response's text (no specials) and
passes the ids.

Per block ``k`` the sequence is ``U_k X_k A_k``: ``B`` user audio tokens,
``T`` text-channel tokens about frames ``[(k+1)B, (k+2)B)`` and ``B`` assistant
audio tokens for the same frames. Each token also gets a class
(:class:`TokenClass`) that the loss weights by; user audio is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, Timeline
from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.format.vocab import DuplexVocab

IGNORE_INDEX = -100


class TokenClass(IntEnum):
    """What a position holds; the loss weights are per class (format §5)."""

    USER_AUDIO = 0  # U_k: never a target
    SILENCE_SLOT = 1  # [SILENCE] in the text channel
    CONTROL = 2  # <|assistant|>, [PAD], [EPAD]
    TEXT = 3  # a response's text token
    SPEECH = 4  # assistant audio frame inside a response
    SILENT_AUDIO = 5  # assistant audio frame outside every response
    # never stored: the collator marks the [SILENCE] slots of the blocks that hear a
    # hesitation pause (train.loss_weights.pause_silence, train/collate.py)
    PAUSE_SILENCE = 6


@dataclass(frozen=True)
class PlacedResponse:
    """Where a response landed in the text channel (flat slot indices ``k·T + j``)."""

    speak_slot: int
    epad_slot: int
    kept_text: tuple[int, ...]  # the text ids actually placed (cut when interrupted)


@dataclass(frozen=True)
class DuplexSequence:
    """One interleaved dialogue. ``input_ids``, ``classes`` and ``labels`` have length ``K·(2B+T)``."""

    input_ids: np.ndarray  # int64 [L]
    classes: np.ndarray  # int8 [L], TokenClass values
    num_blocks: int
    placements: tuple[PlacedResponse, ...] = ()

    @property
    def labels(self) -> np.ndarray:
        """Targets: the token itself, or -100 on user audio."""
        return np.where(self.classes == TokenClass.USER_AUDIO, IGNORE_INDEX, self.input_ids)


# --------------------------------------------------------------------------- placing text


def place_responses(
    t: Timeline, text_ids: list[list[int]], layout: BlockLayout
) -> list[PlacedResponse]:
    """Apply the text-channel rules of format §4 to every response.

    Raises :class:`RecordError` when a response starts in the first block or
    its ``<|assistant|>`` slot is not after the previous ``[EPAD]``.
    """
    placed: list[PlacedResponse] = []
    prev_epad = -1
    for i, (r, ids) in enumerate(zip(t.responses, text_ids, strict=True)):
        if r.start_frame < layout.frames_per_block:
            raise RecordError(
                t.id,
                "response_in_first_block",
                f"responses[{i}] starts at frame {r.start_frame} < B={layout.frames_per_block}",
            )
        a = layout.slot_index_of_frame(r.start_frame)
        if a <= prev_epad:
            raise RecordError(
                t.id,
                "slot_collision",
                f"responses[{i}] starts in slot {a}, not after the previous [EPAD] slot {prev_epad}",
            )
        p = layout.slot_index_of_frame(r.end_frame)
        n = len(ids)
        if r.interrupted:
            # text is cut: tokens at or after the [EPAD] slot are dropped; [EPAD] never
            # shares the <|assistant|> slot (a response shorter than one slot)
            epad = max(p, a + 1)
            kept = tuple(ids[: max(0, epad - a - 1)])
        else:
            # text is never lost: [EPAD] waits for the last token if speech ended first
            epad = max(p, a + n + 1)
            kept = tuple(ids)
        placed.append(PlacedResponse(a, epad, kept))
        prev_epad = epad
    return placed


def num_blocks_for(t: Timeline, placed: list[PlacedResponse], layout: BlockLayout) -> int:
    """The fewest blocks that hold the user channel and every ``[EPAD]``."""
    B, T = layout.frames_per_block, layout.slots_per_block
    k = -(-t.num_frames // B)
    for pr in placed:
        k = max(k, pr.epad_slot // T + 1)
    return max(k, 1)


# --------------------------------------------------------------------------- checks


def check_timeline(
    t: Timeline, text_ids: list[list[int]], spec: FormatSpec, num_audio: int
) -> None:
    """Every rule of format §9 that a record can break; raises :class:`RecordError`."""
    rid = t.id
    if len(t.user_codes) != t.num_frames:
        raise RecordError(
            rid,
            "code_count",
            f"user_codes has {len(t.user_codes)} codes, num_frames is {t.num_frames}",
        )
    if t.num_frames == 0:
        raise RecordError(rid, "empty_speech", "num_frames is 0")
    for name, codes in [
        ("user_codes", t.user_codes),
        *((f"responses[{i}].codes", r.codes) for i, r in enumerate(t.responses)),
    ]:
        if codes and (min(codes) < 0 or max(codes) >= num_audio):
            bad = next(c for c in codes if c < 0 or c >= num_audio)
            raise RecordError(
                rid, "code_out_of_range", f"{name} holds code {bad}, outside [0, {num_audio})"
            )
    prev_end = 0
    for i, s in enumerate(t.user_segments):
        if s.end_frame <= s.start_frame:
            raise RecordError(
                rid, "empty_speech", f"user_segments[{i}] is empty ({s.start_frame}, {s.end_frame})"
            )
        if s.start_frame < prev_end:
            raise RecordError(
                rid,
                "segment_order",
                f"user_segments[{i}] starts at {s.start_frame}, before the previous end {prev_end}",
            )
        if s.end_frame > t.num_frames:
            raise RecordError(
                rid,
                "segment_order",
                f"user_segments[{i}] ends at {s.end_frame} > num_frames {t.num_frames}",
            )
        prev_end = s.end_frame
    prev_end = 0
    for i, (r, ids) in enumerate(zip(t.responses, text_ids, strict=True)):
        if r.end_frame <= r.start_frame:
            raise RecordError(
                rid,
                "empty_speech",
                f"responses[{i}] has no speech ({r.start_frame}, {r.end_frame})",
            )
        if len(r.codes) != r.end_frame - r.start_frame:
            raise RecordError(
                rid,
                "code_count",
                f"responses[{i}] has {len(r.codes)} codes for {r.end_frame - r.start_frame} frames",
            )
        if r.start_frame < prev_end:
            raise RecordError(
                rid,
                "response_order",
                f"responses[{i}] starts at {r.start_frame}, before the previous end {prev_end}",
            )
        if not ids:
            raise RecordError(
                rid, "empty_text", f"responses[{i}] text {r.text!r} tokenizes to nothing"
            )
        prev_end = r.end_frame
    place_responses(t, text_ids, spec.layout)  # first-block and slot-collision rules


def check_sequence(seq: DuplexSequence, layout: BlockLayout, vocab: DuplexVocab) -> None:
    """Invariants of a built sequence; raises ``AssertionError``-like ``ValueError`` on breach."""
    B, T = layout.frames_per_block, layout.slots_per_block
    L = seq.input_ids.shape[0]
    if layout.seq_len(seq.num_blocks) != L or seq.classes.shape[0] != L:
        raise ValueError(f"length {L} is not K·(2B+T) = {layout.seq_len(seq.num_blocks)}")
    grid_ids = seq.input_ids.reshape(seq.num_blocks, layout.block_len)
    grid_cls = seq.classes.reshape(seq.num_blocks, layout.block_len)
    audio = (grid_ids >= vocab.audio_start_id) & (grid_ids < vocab.audio_end_id)
    if not audio[:, :B].all() or not audio[:, B + T :].all():
        raise ValueError("an audio position holds a non-audio id")
    if audio[:, B : B + T].any():
        raise ValueError("a text slot holds an audio id")
    if (
        not (grid_cls[:, :B] == TokenClass.USER_AUDIO).all()
        or (grid_cls[:, B:] == TokenClass.USER_AUDIO).any()
    ):
        raise ValueError("user-audio classes do not match the user positions")
    text = grid_ids[:, B : B + T].reshape(-1)
    speaking = False
    for tok in text.tolist():
        if tok == vocab.speak_id:
            if speaking:
                raise ValueError("<|assistant|> inside a response")
            speaking = True
        elif tok == vocab.epad_id:
            if not speaking:
                raise ValueError("[EPAD] without an open response")
            speaking = False
        elif tok == vocab.silence_id and speaking:
            raise ValueError("[SILENCE] inside a response")
    if speaking:
        raise ValueError("a response has no [EPAD]")


# --------------------------------------------------------------------------- build


def interleave(
    t: Timeline,
    text_ids: list[list[int]],
    spec: FormatSpec,
    vocab: DuplexVocab,
    max_seq_len: int | None = None,
) -> DuplexSequence:
    """Build the sequence of timeline ``t``; ``text_ids[i]`` are response ``i``'s text ids.

    Checks the record first (:func:`check_timeline`): a bad record raises
    :class:`RecordError` with its id and reason; so does one whose sequence would
    be longer than ``max_seq_len`` tokens (``too_long``), before it is allocated.
    """
    check_timeline(t, text_ids, spec, vocab.num_audio)
    layout = spec.layout
    B, T = layout.frames_per_block, layout.slots_per_block
    placed = place_responses(t, text_ids, layout)
    K = num_blocks_for(t, placed, layout)
    if max_seq_len is not None and layout.seq_len(K) > max_seq_len:
        raise RecordError(
            t.id,
            "too_long",
            f"its sequence has {K} blocks = {layout.seq_len(K)} tokens, more than "
            f"recipe.limits.max_seq_len={max_seq_len}",
        )

    # user channel: frames [0, K·B), silence past the record's end
    user = np.concatenate(
        [np.asarray(t.user_codes, dtype=np.int64), spec.silence(t.num_frames, K * B)]
    )

    # assistant channel: frames [B, (K+1)·B); responses over silence
    asst = spec.silence(B, (K + 1) * B)
    asst_cls = np.full(K * B, TokenClass.SILENT_AUDIO, dtype=np.int8)
    for r in t.responses:
        asst[r.start_frame - B : r.end_frame - B] = r.codes
        asst_cls[r.start_frame - B : r.end_frame - B] = TokenClass.SPEECH

    # text channel: K·T slots
    text = np.full(K * T, vocab.silence_id, dtype=np.int64)
    text_cls = np.full(K * T, TokenClass.SILENCE_SLOT, dtype=np.int8)
    for pr in placed:
        text[pr.speak_slot] = vocab.speak_id
        n = len(pr.kept_text)
        text[pr.speak_slot + 1 : pr.speak_slot + 1 + n] = pr.kept_text
        text_cls[pr.speak_slot + 1 : pr.speak_slot + 1 + n] = TokenClass.TEXT
        text[pr.speak_slot + 1 + n : pr.epad_slot] = vocab.pad_id
        text[pr.epad_slot] = vocab.epad_id
        text_cls[pr.speak_slot] = TokenClass.CONTROL
        text_cls[pr.speak_slot + 1 + n : pr.epad_slot + 1] = TokenClass.CONTROL

    ids = np.concatenate(
        [
            user.reshape(K, B) + vocab.audio_start_id,
            text.reshape(K, T),
            asst.reshape(K, B) + vocab.audio_start_id,
        ],
        axis=1,
    ).reshape(-1)
    classes = np.concatenate(
        [
            np.full((K, B), TokenClass.USER_AUDIO, dtype=np.int8),
            text_cls.reshape(K, T),
            asst_cls.reshape(K, B),
        ],
        axis=1,
    ).reshape(-1)
    return DuplexSequence(ids, classes, K, tuple(placed))


# --------------------------------------------------------------------------- inverse


@dataclass(frozen=True)
class ResponseEvent:
    """A response read back from a text channel (slot indices are flat ``k·T + j``)."""

    speak_slot: int
    epad_slot: int | None  # None: still open at the end of the sequence
    text_ids: tuple[int, ...]


@dataclass(frozen=True)
class Channels:
    """A sequence split back into its three channels."""

    user_codes: np.ndarray  # [K·B] speech codes, frames [0, K·B)
    text_slots: np.ndarray  # [K·T] token ids
    assistant_codes: np.ndarray  # [K·B] speech codes, frames [B, (K+1)·B)


def split_channels(input_ids: np.ndarray, layout: BlockLayout, vocab: DuplexVocab) -> Channels:
    """Inverse of the block layout. ``input_ids`` must hold whole blocks."""
    B, T = layout.frames_per_block, layout.slots_per_block
    if len(input_ids) % layout.block_len:
        raise ValueError(
            f"sequence length {len(input_ids)} is not a multiple of 2B+T={layout.block_len}"
        )
    grid = np.asarray(input_ids).reshape(-1, layout.block_len)
    return Channels(
        user_codes=(grid[:, :B] - vocab.audio_start_id).reshape(-1),
        text_slots=grid[:, B : B + T].reshape(-1),
        assistant_codes=(grid[:, B + T :] - vocab.audio_start_id).reshape(-1),
    )


def response_events(text_slots, vocab: DuplexVocab) -> list[ResponseEvent]:
    """Read responses off a text channel: each ``<|assistant|>`` up to its ``[EPAD]``.

    Tolerant of what a model may generate: a second ``<|assistant|>`` before an
    ``[EPAD]`` closes nothing (it is ignored); an ``[EPAD]`` with no open response
    is ignored; text ids are the non-control tokens in between.
    """
    events: list[ResponseEvent] = []
    start: int | None = None
    words: list[int] = []
    controls = set(vocab.control_ids)
    for i, tok in enumerate(np.asarray(text_slots).tolist()):
        if tok == vocab.speak_id and start is None:
            start, words = i, []
        elif tok == vocab.epad_id and start is not None:
            events.append(ResponseEvent(start, i, tuple(words)))
            start = None
        elif start is not None and tok not in controls and not vocab.is_audio(tok):
            words.append(tok)
    if start is not None:
        events.append(ResponseEvent(start, None, tuple(words)))
    return events
