"""Typed dialogue records and their JSON-lines form (schema version 1, docs/data.md).

Two record kinds:

* :class:`Script` — a spoken dialogue without timing: turns of user speech
  codes (+ text) and assistant text + speech codes. Synthesis places it on a
  timeline.
* :class:`Timeline` — the format's exchange record (format §9): the user
  channel frame by frame, what the user says where, and the assistant's
  responses with their frames. The interleaver turns it into a sequence.

Parsing checks types and shapes only and raises :class:`RecordError` with the
record id and a reason key; the semantic rules that need the block layout or
the vocabulary (codes in range, slots that collide …) live in
:func:`bayling_duplex.format.interleave.check_timeline`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
SEGMENT_KINDS = ("turn", "backchannel")


class RecordError(ValueError):
    """A malformed record: ``record_id``, a short ``reason`` key and a human ``detail``."""

    def __init__(self, record_id: str, reason: str, detail: str) -> None:
        super().__init__(f"record {record_id!r}: {reason}: {detail}")
        self.record_id = record_id
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class UserSegment:
    """What the user says on frames ``[start_frame, end_frame)``."""

    start_frame: int
    end_frame: int
    kind: str = "turn"  # turn | backchannel
    text: str | None = None


@dataclass(frozen=True)
class Response:
    """One assistant response: speech on ``[start_frame, end_frame)``, its full text."""

    start_frame: int
    end_frame: int
    text: str
    codes: tuple[int, ...]  # the speech actually played: end_frame - start_frame codes
    interrupted: bool = False


@dataclass(frozen=True)
class Timeline:
    """A timed two-channel dialogue (format §9)."""

    id: str
    num_frames: int
    user_codes: tuple[int, ...]
    user_segments: tuple[UserSegment, ...]
    responses: tuple[Response, ...]
    scenario: str | None = None  # optional: turn_taking, interruption, backchannel, hesitation


@dataclass(frozen=True)
class ScriptTurn:
    """One exchange: the user's speech (codes, text) and the assistant's answer."""

    user_codes: tuple[int, ...]
    assistant_text: str
    assistant_codes: tuple[int, ...]
    user_text: str | None = None
    # frame offsets inside user_codes where a word ends: where a hesitation pause may go
    user_word_ends: tuple[int, ...] = ()


@dataclass(frozen=True)
class Script:
    """A dialogue without timing: synthesis turns it into a :class:`Timeline`."""

    id: str
    turns: tuple[ScriptTurn, ...]


# --------------------------------------------------------------------------- parsing


def _need(obj: dict, key: str, types: type | tuple[type, ...], rid: str):
    if key not in obj:
        raise RecordError(rid, "missing_field", f"field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise RecordError(rid, "wrong_type", f"field {key!r} has type {type(value).__name__}")
    return value


def _as_tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def _codes(value, key: str, rid: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RecordError(rid, "wrong_type", f"field {key!r} must be a list of ints")
    if not all(type(c) is int for c in value):
        raise RecordError(rid, "wrong_type", f"field {key!r} must hold ints only")
    return tuple(value)


def _frame(obj: dict, key: str, rid: str) -> int:
    value = _need(obj, key, int, rid)
    if value < 0:
        raise RecordError(rid, "wrong_type", f"field {key!r} must be >= 0, got {value}")
    return value


def _record_id(obj) -> str:
    if not isinstance(obj, dict):
        raise RecordError("?", "wrong_type", "a record must be a JSON object")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(
            str(rid) if rid is not None else "?",
            "missing_field",
            "field 'id' must be a non-empty string",
        )
    return rid


def timeline_from_json(obj) -> Timeline:
    """Parse a timeline object; raise :class:`RecordError` on a missing or wrong-typed field."""
    rid = _record_id(obj)
    num_frames = _frame(obj, "num_frames", rid)
    user_codes = _codes(_need(obj, "user_codes", list, rid), "user_codes", rid)
    segments = []
    for i, seg in enumerate(_need(obj, "user_segments", list, rid)):
        if not isinstance(seg, dict):
            raise RecordError(rid, "wrong_type", f"user_segments[{i}] must be an object")
        kind = seg.get("kind", "turn")
        if kind not in SEGMENT_KINDS:
            raise RecordError(
                rid, "wrong_type", f"user_segments[{i}].kind must be one of {SEGMENT_KINDS}"
            )
        text = seg.get("text")
        if text is not None and not isinstance(text, str):
            raise RecordError(rid, "wrong_type", f"user_segments[{i}].text must be a string")
        segments.append(
            UserSegment(_frame(seg, "start_frame", rid), _frame(seg, "end_frame", rid), kind, text)
        )
    responses = []
    for i, r in enumerate(_need(obj, "responses", list, rid)):
        if not isinstance(r, dict):
            raise RecordError(rid, "wrong_type", f"responses[{i}] must be an object")
        interrupted = r.get("interrupted", False)
        if not isinstance(interrupted, bool):
            raise RecordError(rid, "wrong_type", f"responses[{i}].interrupted must be a boolean")
        responses.append(
            Response(
                start_frame=_frame(r, "start_frame", rid),
                end_frame=_frame(r, "end_frame", rid),
                text=_need(r, "text", str, rid),
                codes=_codes(_need(r, "codes", list, rid), f"responses[{i}].codes", rid),
                interrupted=interrupted,
            )
        )
    scenario = obj.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise RecordError(rid, "wrong_type", "field 'scenario' must be a string")
    return Timeline(rid, num_frames, user_codes, tuple(segments), tuple(responses), scenario)


def timeline_to_json(t: Timeline) -> dict:
    obj = {
        "id": t.id,
        "num_frames": t.num_frames,
        "user_codes": list(t.user_codes),
        "user_segments": [
            {"start_frame": s.start_frame, "end_frame": s.end_frame, "kind": s.kind}
            | ({"text": s.text} if s.text is not None else {})
            for s in t.user_segments
        ],
        "responses": [
            {
                "start_frame": r.start_frame,
                "end_frame": r.end_frame,
                "text": r.text,
                "interrupted": r.interrupted,
                "codes": list(r.codes),
            }
            for r in t.responses
        ],
    }
    if t.scenario is not None:
        obj["scenario"] = t.scenario
    return obj


def script_from_json(obj) -> Script:
    """Parse a script object (``{"id", "turns": [{"user_codes", "assistant_text", "assistant_codes", …}]}``)."""
    rid = _record_id(obj)
    turns = []
    raw = _need(obj, "turns", list, rid)
    if not raw:
        raise RecordError(rid, "empty_speech", "a script needs at least one turn")
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise RecordError(rid, "wrong_type", f"turns[{i}] must be an object")
        user_text = t.get("user_text")
        if user_text is not None and not isinstance(user_text, str):
            raise RecordError(rid, "wrong_type", f"turns[{i}].user_text must be a string")
        word_ends = _codes(t.get("user_word_ends", []), f"turns[{i}].user_word_ends", rid)
        turns.append(
            ScriptTurn(
                user_codes=_codes(_need(t, "user_codes", list, rid), f"turns[{i}].user_codes", rid),
                assistant_text=_need(t, "assistant_text", str, rid),
                assistant_codes=_codes(
                    _need(t, "assistant_codes", list, rid), f"turns[{i}].assistant_codes", rid
                ),
                user_text=user_text,
                user_word_ends=word_ends,
            )
        )
    return Script(rid, tuple(turns))


def script_to_json(s: Script) -> dict:
    return {
        "id": s.id,
        "turns": [
            {
                "user_codes": list(t.user_codes),
                "assistant_text": t.assistant_text,
                "assistant_codes": list(t.assistant_codes),
            }
            | ({"user_text": t.user_text} if t.user_text is not None else {})
            | ({"user_word_ends": list(t.user_word_ends)} if t.user_word_ends else {})
            for t in s.turns
        ],
    }


# --------------------------------------------------------------------------- JSON lines


def write_jsonl(path: str | Path, objs: Iterable[dict]) -> int:
    """Write objects one per line (atomically: temp file, then rename). Returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for obj in objs:
            f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    tmp.replace(path)
    return n


def read_jsonl(
    path: str | Path, start_byte: int = 0, limit: int | None = None
) -> Iterator[tuple[int, object]]:
    """Yield ``(line_number, parsed object or RecordError)`` from ``start_byte``.

    A line that is not JSON yields a :class:`RecordError` (reason ``bad_json``)
    instead of stopping the read: one bad line must not lose the others.
    """
    with Path(path).open("rb") as f:
        f.seek(start_byte)
        for n, raw in enumerate(f):
            if limit is not None and n >= limit:
                return
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                yield n, RecordError(f"{Path(path).name}:{start_byte}+{n}", "bad_json", str(e))
