"""Manifests of spoken dialogues as audio files, and the records their codes become.

The input of ``python -m bayling_duplex.speech tokenize`` (docs/data.md,
"Audio manifests"). One JSON object per line, in one of two kinds.

**Script manifest** (``--kind scripts``): a multi-turn dialogue without timing,
one clip per utterance, as in a speech-to-speech corpus::

    {"id": "dlg-000001",
     "turns": [
       {"user_audio": "wav/dlg-000001/q0.wav", "user_text": "What time is it?",
        "assistant_text": "It is nine.", "assistant_audio": "wav/dlg-000001/a0.wav",
        "user_words": [{"word": "What", "start_s": 0.10, "end_s": 0.31}, …]}]}

``user_text`` and ``user_words`` (a word alignment of the user clip, seconds from
its start) are optional. With ``user_words`` the record gets ``user_word_ends``
(where a hesitation pause may be inserted); without it they stay empty.

**Timeline manifest** (``--kind timelines``): a recorded two-channel conversation
with its timing, either one multi-channel file (``audio`` with 0-based
``user_channel`` and ``assistant_channel``) or one file per side (``user_audio``,
``assistant_audio``)::

    {"id": "call-0001", "audio": "calls/0001.wav", "user_channel": 0, "assistant_channel": 1,
     "user_segments": [{"start_s": 0.4, "end_s": 2.1, "kind": "turn", "text": "Hi …"}],
     "responses": [{"start_s": 2.4, "end_s": 5.0, "text": "Hello …", "interrupted": false}]}

Relative paths resolve against an audio root (by default the manifest's folder).
Seconds become frames outward: ``start_frame = floor(start_s · rate)``,
``end_frame = ceil(end_s · rate)``. Parsing raises
:class:`~bayling_duplex.format.records.RecordError` with the record id and a reason key;
everything here is pure (no audio is read).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from bayling_duplex.format.records import (
    SEGMENT_KINDS,
    RecordError,
    Response,
    Script,
    ScriptTurn,
    Timeline,
    UserSegment,
    script_to_json,
)

_EPS = 1e-6  # seconds × rate that land a hair off a frame boundary


@dataclass(frozen=True)
class WordSpan:
    """One aligned word of a user clip, in seconds from the clip's start."""

    start_s: float
    end_s: float
    word: str | None = None


@dataclass(frozen=True)
class TurnAudio:
    """One exchange of a script manifest: the clips (resolved paths) and texts."""

    user_audio: str
    assistant_audio: str
    assistant_text: str
    user_text: str | None = None
    user_words: tuple[WordSpan, ...] | None = None  # None: no alignment


@dataclass(frozen=True)
class ScriptEntry:
    id: str
    turns: tuple[TurnAudio, ...]

    def audio_files(self) -> list[tuple[str, int | None]]:
        """``(path, channel)`` of every clip in order: user, assistant, user, assistant, …"""
        return [(p, None) for t in self.turns for p in (t.user_audio, t.assistant_audio)]


@dataclass(frozen=True)
class Span:
    """A timed stretch of a recording: a user segment or a response, in seconds."""

    start_s: float
    end_s: float
    text: str | None = None
    kind: str = "turn"  # user segments: turn | backchannel
    interrupted: bool = False  # responses


@dataclass(frozen=True)
class TimelineEntry:
    id: str
    user: tuple[str, int | None]  # (path, channel or None for a mono downmix)
    assistant: tuple[str, int | None]
    user_segments: tuple[Span, ...]
    responses: tuple[Span, ...]

    def audio_files(self) -> list[tuple[str, int | None]]:
        return [self.user, self.assistant]


# --------------------------------------------------------------------------- parsing


def _id(obj: object) -> str:
    if not isinstance(obj, dict):
        raise RecordError("?", "wrong_type", "a manifest line must be a JSON object")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(str(rid), "missing_field", "field 'id' must be a non-empty string")
    return rid


def _get(obj: dict, key: str, types, rid: str, where: str, required: bool = True):
    if key not in obj or obj[key] is None:
        if required:
            raise RecordError(rid, "missing_field", f"{where}{key!r} is missing")
        return None
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RecordError(rid, "wrong_type", f"{where}{key!r} has type bool")
    if not isinstance(value, types):
        raise RecordError(rid, "wrong_type", f"{where}{key!r} has type {type(value).__name__}")
    return value


def _path(obj: dict, key: str, root: Path, rid: str, where: str = "") -> str:
    value = _get(obj, key, str, rid, where)
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def _seconds(obj: dict, rid: str, where: str) -> tuple[float, float]:
    start = float(_get(obj, "start_s", (int, float), rid, where))
    end = float(_get(obj, "end_s", (int, float), rid, where))
    if not 0 <= start < end:
        raise RecordError(
            rid, "bad_timing", f"{where}needs 0 <= start_s < end_s, got {start}, {end}"
        )
    return start, end


def _words(value: object, rid: str, where: str) -> tuple[WordSpan, ...]:
    if not isinstance(value, list):
        raise RecordError(rid, "wrong_type", f"{where}'user_words' must be a list")
    words = []
    for i, w in enumerate(value):
        if not isinstance(w, dict):
            raise RecordError(rid, "wrong_type", f"{where}user_words[{i}] must be an object")
        start, end = _seconds(w, rid, f"{where}user_words[{i}].")
        text = _get(w, "word", str, rid, f"{where}user_words[{i}].", required=False)
        words.append(WordSpan(start, end, text))
    return tuple(sorted(words, key=lambda w: w.start_s))


def parse_script_entry(obj: object, root: Path) -> ScriptEntry:
    """A script manifest line; relative paths are resolved against ``root``."""
    rid = _id(obj)
    turns_raw = _get(obj, "turns", list, rid, "")
    if not turns_raw:
        raise RecordError(rid, "empty_speech", "a script needs at least one turn")
    turns = []
    for i, t in enumerate(turns_raw):
        where = f"turns[{i}]."
        if not isinstance(t, dict):
            raise RecordError(rid, "wrong_type", f"turns[{i}] must be an object")
        words = t.get("user_words")
        turns.append(
            TurnAudio(
                user_audio=_path(t, "user_audio", root, rid, where),
                assistant_audio=_path(t, "assistant_audio", root, rid, where),
                assistant_text=_get(t, "assistant_text", str, rid, where),
                user_text=_get(t, "user_text", str, rid, where, required=False),
                user_words=None if words is None else _words(words, rid, where),
            )
        )
    return ScriptEntry(rid, tuple(turns))


def _channel(obj: dict, key: str, rid: str) -> int:
    value = _get(obj, key, int, rid, "")
    if value < 0:
        raise RecordError(rid, "wrong_type", f"{key!r} must be >= 0, got {value}")
    return value


def parse_timeline_entry(obj: object, root: Path) -> TimelineEntry:
    """A timeline manifest line (one multi-channel file, or one file per side)."""
    rid = _id(obj)
    if "audio" in obj:
        path = _path(obj, "audio", root, rid)
        user = (path, _channel(obj, "user_channel", rid))
        assistant = (path, _channel(obj, "assistant_channel", rid))
        if user[1] == assistant[1]:
            raise RecordError(rid, "wrong_type", "user_channel and assistant_channel are equal")
    else:
        user = (_path(obj, "user_audio", root, rid), None)
        assistant = (_path(obj, "assistant_audio", root, rid), None)
    segments = []
    for i, s in enumerate(_get(obj, "user_segments", list, rid, "")):
        where = f"user_segments[{i}]."
        if not isinstance(s, dict):
            raise RecordError(rid, "wrong_type", f"user_segments[{i}] must be an object")
        kind = s.get("kind", "turn")
        if kind not in SEGMENT_KINDS:
            raise RecordError(rid, "wrong_type", f"{where}kind must be one of {SEGMENT_KINDS}")
        text = _get(s, "text", str, rid, where, required=False)
        segments.append(Span(*_seconds(s, rid, where), text=text, kind=kind))
    responses = []
    for i, r in enumerate(_get(obj, "responses", list, rid, "")):
        where = f"responses[{i}]."
        if not isinstance(r, dict):
            raise RecordError(rid, "wrong_type", f"responses[{i}] must be an object")
        interrupted = _get(r, "interrupted", bool, rid, where, required=False) or False
        text = _get(r, "text", str, rid, where)
        responses.append(Span(*_seconds(r, rid, where), text=text, interrupted=interrupted))
    return TimelineEntry(rid, user, assistant, tuple(segments), tuple(responses))


# --------------------------------------------------------------------------- records


def word_ends(
    words: tuple[WordSpan, ...], num_frames: int, frame_rate_hz: float
) -> tuple[int, ...]:
    """Frame offsets inside a clip of ``num_frames`` codes where a pause may go.

    One per gap between consecutive aligned words: the frame boundary nearest to
    the middle of the gap, so an inserted pause cuts neither word. The clip's end
    is not a word end (as in :class:`~bayling_duplex.format.records.ScriptTurn`).
    """
    ends = {round((a.end_s + b.start_s) / 2 * frame_rate_hz) for a, b in pairwise(words)}
    return tuple(sorted(f for f in ends if 0 < f < num_frames))


def script_json(entry: ScriptEntry, codes: list[tuple[int, ...]], frame_rate_hz: float) -> dict:
    """The Script JSON line of ``entry`` given the codes of its clips (``entry.audio_files()`` order).

    Besides the schema's fields each turn keeps its source clips as
    ``user_audio`` / ``assistant_audio`` (absolute paths): waveform-level
    synthesis mixes them. Readers of the schema ignore both keys.
    """
    if len(codes) != 2 * len(entry.turns):
        raise ValueError(f"{len(entry.turns)} turns need {2 * len(entry.turns)} code lists")
    turns = []
    for i, t in enumerate(entry.turns):
        user, assistant = codes[2 * i], codes[2 * i + 1]
        for side, c in (("user", user), ("assistant", assistant)):
            if not c:
                raise RecordError(
                    entry.id, "empty_audio", f"turns[{i}] {side} audio has no samples"
                )
        ends = () if t.user_words is None else word_ends(t.user_words, len(user), frame_rate_hz)
        turns.append(ScriptTurn(user, t.assistant_text, assistant, t.user_text, ends))
    obj = script_to_json(Script(entry.id, tuple(turns)))
    for t, raw in zip(entry.turns, obj["turns"], strict=True):
        raw["user_audio"] = str(Path(t.user_audio).resolve())
        raw["assistant_audio"] = str(Path(t.assistant_audio).resolve())
    return obj


def _frames(span: Span, rate: float, num_frames: int, rid: str, what: str) -> tuple[int, int]:
    start = math.floor(span.start_s * rate + _EPS)
    end = min(math.ceil(span.end_s * rate - _EPS), num_frames)
    if start >= end:
        raise RecordError(
            rid,
            "bad_timing",
            f"{what} [{span.start_s}, {span.end_s}) s lies outside the {num_frames / rate:.2f} s recording",
        )
    return start, end


def timeline_from_codes(
    entry: TimelineEntry,
    user_codes: tuple[int, ...],
    assistant_codes: tuple[int, ...],
    frame_rate_hz: float,
) -> Timeline:
    """The Timeline of a two-channel recording whose channels gave these codes.

    Both channels must have the same number of frames (the caller pads the
    shorter waveform). Responses take the assistant channel's codes on their
    frames; the interleaver's own rules (``start_frame ≥ B``, slot collisions)
    are checked by the build, which rejects a record that breaks them.
    """
    if len(user_codes) != len(assistant_codes):
        raise ValueError(f"channels differ: {len(user_codes)} vs {len(assistant_codes)} frames")
    n, rid = len(user_codes), entry.id
    if n == 0:
        raise RecordError(rid, "empty_audio", "the recording has no samples")
    segments = []
    for i, s in enumerate(entry.user_segments):
        a, b = _frames(s, frame_rate_hz, n, rid, f"user_segments[{i}]")
        segments.append(UserSegment(a, b, s.kind, s.text))
    responses = []
    prev_end = 0
    for i, r in enumerate(sorted(entry.responses, key=lambda r: r.start_s)):
        a, b = _frames(r, frame_rate_hz, n, rid, f"responses[{i}]")
        if a < prev_end:
            raise RecordError(rid, "bad_timing", f"responses[{i}] overlaps the previous response")
        responses.append(Response(a, b, r.text or "", assistant_codes[a:b], r.interrupted))
        prev_end = b
    segments.sort(key=lambda s: s.start_frame)
    return Timeline(rid, n, user_codes, tuple(segments), tuple(responses))
