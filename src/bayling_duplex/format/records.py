"""Typed dialogue records and their JSON-lines form (schema version 1, docs/data.md).

Two record kinds:

* :class:`Script` — a spoken dialogue without timing: turns of user speech
  codes (+ text) and assistant text + speech codes. Synthesis places it on a
  timeline.
* :class:`Timeline` — the format's exchange record (format §9): the user
  channel frame by frame, what the user says where, and the assistant's
  responses with their frames. The interleaver turns it into a sequence.

Parsing checks types, shapes and sizes (:class:`RecordLimits`) and raises
:class:`RecordError` with the record id (or, without a usable one, its place,
``file:line``) and a reason key; the semantic rules that need the block layout or
the vocabulary (codes in range, slots that collide …) live in
:func:`bayling_duplex.format.interleave.check_timeline`. :func:`read_jsonl` reads
lines strictly (UTF-8, strict JSON), naming a bad line by ``file:line``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SCHEMA_VERSION = 1
SEGMENT_KINDS = ("turn", "backchannel")


class RecordError(ValueError):
    """A malformed record: ``record_id``, a short ``reason`` key and a human ``detail``."""

    def __init__(self, record_id: str, reason: str, detail: str) -> None:
        super().__init__(f"record {record_id!r}: {reason}: {detail}")
        self.record_id = record_id
        self.reason = reason
        self.detail = detail


@dataclass
class RecordLimits:
    """The sizes a source record may have (``recipe.limits``, docs/data.md §2).

    Checked where a record is read, before anything is built from it, so one huge
    line cannot exhaust a build worker's memory: a record over a limit is rejected
    (``too_long``: longer than the sequence limit allows; ``too_large``: a field
    over its size limit), naming the field and the limit's key.
    """

    # tokens of one interleaved sequence (K·(2B+T)): the build rejects a longer one (too_long)
    max_seq_len: int = 8192
    # num_frames, every frame index and every code list's length; None: what max_seq_len
    # allows in the recipe's layout ((max_seq_len // (2B+T) + 1)·B), see :meth:`for_layout`
    max_frames: int | None = None
    max_text_chars: int = 16384  # any text: assistant_text, user_text, responses[k].text, …
    max_items: int = 1024  # entries of turns, user_segments, responses, user_word_ends
    max_id_chars: int = 256  # the record id (and the scenario label)
    max_line_bytes: int = 16 << 20  # one JSON line (16 MiB), not parsed when longer

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"recipe.limits.{f.name} must be a positive int, got {value!r}")

    def for_layout(self, layout) -> RecordLimits:
        """These limits with ``max_frames`` filled in from ``max_seq_len`` and a block layout.

        No timeline longer than that fits in ``max_seq_len`` tokens: the user channel
        needs ``ceil(num_frames / B)`` blocks, and a response ends at most one block
        after the last.
        """
        if self.max_frames is not None:
            return self
        blocks = self.max_seq_len // layout.block_len
        return dataclasses.replace(self, max_frames=(blocks + 1) * layout.frames_per_block)


NO_LIMITS = RecordLimits(
    max_seq_len=1 << 62,
    max_frames=None,
    max_text_chars=1 << 62,
    max_items=1 << 62,
    max_id_chars=1 << 62,
    max_line_bytes=1 << 62,
)


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
    # frames of a lead-in ("I was wondering about something ...") spoken before the
    # question proper, 0 without one: set by the speech demo for the evaluation's
    # breakdowns, not part of the script record format
    user_lead_in_frames: int = 0


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


def _over_limit(
    rid: str, reason: str, what: str, limits: RecordLimits, key: str, tail: str = ""
) -> RecordError:
    """``"<what>, more than recipe.limits.<key>=<value>"``: the one wording of a size rejection
    (frame limits also say which ``max_seq_len`` they come from)."""
    if key == "max_frames":
        tail = f" (what recipe.limits.max_seq_len={limits.max_seq_len} allows){tail}"
    return RecordError(
        rid, reason, f"{what}, more than recipe.limits.{key}={getattr(limits, key)}{tail}"
    )


def _count(value: list, label: str, rid: str, limits: RecordLimits) -> list:
    if len(value) > limits.max_items:
        raise _over_limit(
            rid, "too_large", f"{label} has {len(value)} entries", limits, "max_items"
        )
    return value


def _codes(value, key: str, rid: str, limits: RecordLimits = NO_LIMITS) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise RecordError(rid, "wrong_type", f"field {key!r} must be a list of ints")
    if limits.max_frames is not None and len(value) > limits.max_frames:
        raise _over_limit(rid, "too_long", f"{key} has {len(value)} codes", limits, "max_frames")
    if not all(type(c) is int for c in value):
        raise RecordError(rid, "wrong_type", f"field {key!r} must hold ints only")
    return tuple(value)


def _frame(obj: dict, key: str, rid: str, limits: RecordLimits = NO_LIMITS) -> int:
    value = _need(obj, key, int, rid)
    if value < 0:
        raise RecordError(rid, "wrong_type", f"field {key!r} must be >= 0, got {value}")
    if limits.max_frames is not None and value > limits.max_frames:
        raise _over_limit(
            rid, "too_long", f"field {key!r} is {_short(value)}", limits, "max_frames"
        )
    return value


def _short(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "…"


def _unicode(value: str, label: str, rid: str) -> str:
    """``value`` if it is valid Unicode text (JSON's ``\\ud800`` escapes can make lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(
            rid, "bad_utf8", f"{label} holds a lone surrogate at character {e.start}"
        ) from None
    return value


def _text(
    obj: dict, key: str, label: str, rid: str, limits: RecordLimits, required: bool = True
) -> str | None:
    """A text field: a string of at most ``max_text_chars`` valid characters (``None`` if optional and absent)."""
    if required:
        value = _need(obj, key, str, rid)
    else:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise RecordError(rid, "wrong_type", f"{label} must be a string")
    if len(value) > limits.max_text_chars:
        raise _over_limit(
            rid, "too_large", f"{label} has {len(value)} characters", limits, "max_text_chars"
        )
    return _unicode(value, label, rid)


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def record_id(obj, limits: RecordLimits = NO_LIMITS, where: str | None = None) -> str:
    """The id of a record object, checked; ``where`` (``file:line``) names a record without a usable one.

    Raises :class:`RecordError` whose ``record_id`` is ``where`` (``"?"`` when not
    given) when ``obj`` is not an object or its id is missing, not a non-empty
    string, too long or not valid Unicode: such an id cannot name the record.
    """
    here = where or "?"
    if not isinstance(obj, dict):
        raise RecordError(
            here, "wrong_type", f"a record must be a JSON object, got {_json_type(obj)}"
        )
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        named = here if where is not None or rid is None else str(rid)
        raise RecordError(
            named,
            "missing_field",
            f"field 'id' must be a non-empty string, got {_short(rid)}"
            if "id" in obj
            else "field 'id' is missing",
        )
    if len(rid) > limits.max_id_chars:
        raise _over_limit(
            where or rid[:40] + "…",
            "too_large",
            f"id has {len(rid)} characters",
            limits,
            "max_id_chars",
            f": {_short(rid)}",
        )
    _unicode(rid, "field 'id'", here)
    return rid


def _label(obj: dict, key: str, rid: str, limits: RecordLimits) -> str | None:
    """An optional short name (``scenario``): a string of at most ``max_id_chars``."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(rid, "wrong_type", f"field {key!r} must be a string")
    if len(value) > limits.max_id_chars:
        raise _over_limit(
            rid, "too_large", f"field {key!r} has {len(value)} characters", limits, "max_id_chars"
        )
    return _unicode(value, f"field {key!r}", rid)


def timeline_from_json(obj, limits: RecordLimits = NO_LIMITS, where: str | None = None) -> Timeline:
    """Parse a timeline object; raise :class:`RecordError` on a missing, wrong-typed or oversized field.

    ``limits`` caps the sizes (:class:`RecordLimits`, none by default); ``where``
    (``file:line``) names a record whose own id is unusable.
    """
    rid = record_id(obj, limits, where)
    num_frames = _frame(obj, "num_frames", rid, limits)
    user_codes = _codes(_need(obj, "user_codes", list, rid), "user_codes", rid, limits)
    segments = []
    raw_segments = _count(_need(obj, "user_segments", list, rid), "user_segments", rid, limits)
    for i, seg in enumerate(raw_segments):
        if not isinstance(seg, dict):
            raise RecordError(rid, "wrong_type", f"user_segments[{i}] must be an object")
        kind = "turn" if seg.get("kind") is None else seg["kind"]  # None: a dataset's absent key
        if not isinstance(kind, str) or kind not in SEGMENT_KINDS:
            raise RecordError(
                rid, "wrong_type", f"user_segments[{i}].kind must be one of {SEGMENT_KINDS}"
            )
        text = _text(seg, "text", f"user_segments[{i}].text", rid, limits, required=False)
        segments.append(
            UserSegment(
                _frame(seg, "start_frame", rid, limits),
                _frame(seg, "end_frame", rid, limits),
                kind,
                text,
            )
        )
    responses = []
    for i, r in enumerate(_count(_need(obj, "responses", list, rid), "responses", rid, limits)):
        if not isinstance(r, dict):
            raise RecordError(rid, "wrong_type", f"responses[{i}] must be an object")
        interrupted = False if r.get("interrupted") is None else r["interrupted"]
        if not isinstance(interrupted, bool):
            raise RecordError(rid, "wrong_type", f"responses[{i}].interrupted must be a boolean")
        responses.append(
            Response(
                start_frame=_frame(r, "start_frame", rid, limits),
                end_frame=_frame(r, "end_frame", rid, limits),
                text=_text(r, "text", f"responses[{i}].text", rid, limits),
                codes=_codes(_need(r, "codes", list, rid), f"responses[{i}].codes", rid, limits),
                interrupted=interrupted,
            )
        )
    scenario = _label(obj, "scenario", rid, limits)
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


def script_from_json(obj, limits: RecordLimits = NO_LIMITS, where: str | None = None) -> Script:
    """Parse a script object (``{"id", "turns": [{"user_codes", "assistant_text", "assistant_codes", …}]}``).

    ``limits`` and ``where`` as in :func:`timeline_from_json`. A word end must lie
    inside its turn (``0 < e < len(user_codes)``).
    """
    rid = record_id(obj, limits, where)
    turns = []
    raw = _count(_need(obj, "turns", list, rid), "turns", rid, limits)
    if not raw:
        raise RecordError(rid, "empty_speech", "a script needs at least one turn")
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise RecordError(rid, "wrong_type", f"turns[{i}] must be an object")
        user_text = _text(t, "user_text", f"turns[{i}].user_text", rid, limits, required=False)
        user_codes = _codes(
            _need(t, "user_codes", list, rid), f"turns[{i}].user_codes", rid, limits
        )
        key = f"turns[{i}].user_word_ends"
        raw_ends = t.get("user_word_ends")
        word_ends = _codes([] if raw_ends is None else raw_ends, key, rid, limits)
        _count(list(word_ends), key, rid, limits)
        outside = next((e for e in word_ends if not 0 < e < len(user_codes)), None)
        if outside is not None:
            raise RecordError(
                rid,
                "word_end_out_of_range",
                f"{key} holds {_short(outside)}, outside the turn: a word end is a frame offset "
                f"inside its user_codes, 0 < e < {len(user_codes)}",
            )
        turns.append(
            ScriptTurn(
                user_codes=user_codes,
                assistant_text=_text(
                    t, "assistant_text", f"turns[{i}].assistant_text", rid, limits
                ),
                assistant_codes=_codes(
                    _need(t, "assistant_codes", list, rid),
                    f"turns[{i}].assistant_codes",
                    rid,
                    limits,
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


def line_id(path: str | Path, line: int) -> str:
    """How a record without a usable id is named: ``file:line`` (1-based line number)."""
    return f"{Path(path).name}:{line}"


def raw_lines(f: BinaryIO, max_line_bytes: int | None = None) -> Iterator[tuple[bytes | None, int]]:
    """``(line, size in bytes)`` of each line of ``f``; ``None`` for a line over ``max_line_bytes``.

    A line that is too long is skipped in pieces, never held whole in memory.
    """
    while True:
        raw = f.readline() if max_line_bytes is None else f.readline(max_line_bytes + 1)
        if not raw:
            return
        if max_line_bytes is None or len(raw) <= max_line_bytes:
            yield raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = f.readline(1 << 20)
            if not raw:
                break
            size += len(raw)
        yield None, size


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r} in an object")
    return obj


def parse_json_line(text: str):
    """Strict JSON: no ``NaN``/``Infinity``, no repeated key; raises ``ValueError`` (or
    ``RecursionError`` for absurd nesting)."""
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def read_jsonl(
    path: str | Path,
    start_byte: int = 0,
    limit: int | None = None,
    first_line: int = 1,
    max_line_bytes: int | None = None,
) -> Iterator[tuple[int, object]]:
    """Yield ``(n, parsed value or RecordError)`` for the lines from ``start_byte``.

    ``n`` counts the lines read (0-based, blank lines included; ``limit`` caps it);
    ``first_line`` is the 1-based line number of the line at ``start_byte``, so a
    line that cannot be read is named ``file:line`` (:func:`line_id`) and yields a
    :class:`RecordError` instead of stopping the read (one bad line must not lose
    the others): bytes that are not UTF-8 (``bad_utf8``), text that is not strict
    JSON (``bad_json``: also ``NaN``/``Infinity``, a repeated key, an integer past
    Python's digit limit, absurd nesting) or a line over ``max_line_bytes``
    (``too_large``). A UTF-8 byte order mark at a line's start is ignored.
    """
    with Path(path).open("rb") as f:
        f.seek(start_byte)
        for n, (raw, size) in enumerate(raw_lines(f, max_line_bytes)):
            if limit is not None and n >= limit:
                return
            where = line_id(path, first_line + n)
            if raw is None:
                yield (
                    n,
                    RecordError(
                        where,
                        "too_large",
                        f"the line has {size} bytes, more than recipe.limits.max_line_bytes="
                        f"{max_line_bytes}",
                    ),
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    n,
                    RecordError(
                        where, "bad_utf8", f"byte {e.start} of the line is not UTF-8 ({e.reason})"
                    ),
                )
                continue
            line = line.removeprefix("\ufeff").strip()
            if not line:
                continue
            try:
                yield n, parse_json_line(line)
            except (ValueError, RecursionError) as e:
                detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)
                yield n, RecordError(where, "bad_json", detail)
