"""Record JSON: round trips, and one rejection per malformed input, naming the record."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import (
    NO_LIMITS,
    RecordError,
    RecordLimits,
    Response,
    Script,
    ScriptTurn,
    Timeline,
    UserSegment,
    read_jsonl,
    record_id,
    script_from_json,
    script_to_json,
    timeline_from_json,
    timeline_to_json,
    write_jsonl,
)

TIMELINE = Timeline(
    id="dlg-000001",
    num_frames=70,
    user_codes=tuple([0, 0] + [47] * 17 + [0] * 18 + [81] * 12 + [0] * 21),
    user_segments=(
        UserSegment(2, 19, "turn", "Hi, what time is it?"),
        UserSegment(25, 27, "backchannel", None),
        UserSegment(37, 49, "turn", "Wait, Beijing time!"),
    ),
    responses=(
        Response(20, 40, "The time is 9 PM.", tuple(range(20)), interrupted=True),
        Response(50, 68, "9 PM. — 北京时间", tuple(range(18))),
    ),
    scenario="interruption",
)
SCRIPT = Script(
    "s-1",
    (
        ScriptTurn((9, 10, 0, 11), "Hello there.", (12, 13), "Hi?", (3,)),
        ScriptTurn((14,), "Bye.", (15, 16, 17)),
    ),
)


def through_text(obj: dict) -> dict:
    """As written to and read back from a JSON line."""
    return json.loads(json.dumps(obj, ensure_ascii=False))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "timeline",
    [
        TIMELINE,
        Timeline("bare", 3, (0, 1, 2), (), ()),  # no segments, no responses, no scenario
    ],
    ids=["full", "bare"],
)
def test_timeline_round_trip(timeline):
    obj = timeline_to_json(timeline)
    assert timeline_from_json(through_text(obj)) == timeline
    assert timeline_to_json(timeline_from_json(obj)) == obj
    assert ("scenario" in obj) == (timeline.scenario is not None)


def test_timeline_json_is_the_documented_shape():
    obj = timeline_to_json(TIMELINE)
    assert obj["responses"][0] == {
        "start_frame": 20,
        "end_frame": 40,
        "text": "The time is 9 PM.",
        "interrupted": True,
        "codes": list(range(20)),
    }
    assert obj["user_segments"][1] == {"start_frame": 25, "end_frame": 27, "kind": "backchannel"}


def test_timeline_defaults_when_optional_fields_are_absent():
    obj = timeline_to_json(TIMELINE)
    for seg in obj["user_segments"]:
        seg.pop("kind")
        seg.pop("text", None)
    for r in obj["responses"]:
        r.pop("interrupted")
    obj.pop("scenario")
    t = timeline_from_json(obj)
    assert all(s.kind == "turn" and s.text is None for s in t.user_segments)
    assert not any(r.interrupted for r in t.responses)
    assert t.scenario is None


@pytest.mark.parametrize("script", [SCRIPT, Script("one", (ScriptTurn((1,), "a", (2,)),))])
def test_script_round_trip(script):
    obj = script_to_json(script)
    assert script_from_json(through_text(obj)) == script
    assert script_to_json(script_from_json(obj)) == obj


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "records.jsonl"
    objs = [timeline_to_json(TIMELINE), script_to_json(SCRIPT)]
    assert write_jsonl(path, objs) == 2
    assert not (tmp_path / "records.jsonl.tmp").exists()
    assert [o for _, o in read_jsonl(path)] == objs
    assert timeline_from_json(next(read_jsonl(path))[1]) == TIMELINE


# --------------------------------------------------------------------------- rejections


def _set(path, value):
    def edit(o):
        *head, last = path
        for k in head:
            o = o[k]
        o[last] = value

    return edit


def _del(path):
    def edit(o):
        *head, last = path
        for k in head:
            o = o[k]
        del o[last]

    return edit


TIMELINE_BAD = [
    # missing fields
    ("no num_frames", _del(["num_frames"]), "missing_field"),
    ("no user_codes", _del(["user_codes"]), "missing_field"),
    ("no user_segments", _del(["user_segments"]), "missing_field"),
    ("no responses", _del(["responses"]), "missing_field"),
    ("segment without start", _del(["user_segments", 0, "start_frame"]), "missing_field"),
    ("segment without end", _del(["user_segments", 2, "end_frame"]), "missing_field"),
    ("response without start", _del(["responses", 0, "start_frame"]), "missing_field"),
    ("response without end", _del(["responses", 1, "end_frame"]), "missing_field"),
    ("response without text", _del(["responses", 0, "text"]), "missing_field"),
    ("response without codes", _del(["responses", 1, "codes"]), "missing_field"),
    # wrong types
    ("num_frames as string", _set(["num_frames"], "70"), "wrong_type"),
    ("num_frames as float", _set(["num_frames"], 70.0), "wrong_type"),
    ("num_frames as bool", _set(["num_frames"], True), "wrong_type"),
    ("negative num_frames", _set(["num_frames"], -1), "wrong_type"),
    ("user_codes not a list", _set(["user_codes"], "0 0 1"), "wrong_type"),
    ("bool in user_codes", _set(["user_codes", 3], True), "wrong_type"),
    ("float in user_codes", _set(["user_codes", 3], 1.5), "wrong_type"),
    ("null in user_codes", _set(["user_codes", 0], None), "wrong_type"),
    ("segments not a list", _set(["user_segments"], {}), "wrong_type"),
    ("segment not an object", _set(["user_segments", 0], [2, 19]), "wrong_type"),
    ("segment start as bool", _set(["user_segments", 0, "start_frame"], False), "wrong_type"),
    ("unknown segment kind", _set(["user_segments", 1, "kind"], "laugh"), "wrong_type"),
    ("segment text not a string", _set(["user_segments", 0, "text"], 5), "wrong_type"),
    ("responses not a list", _set(["responses"], None), "wrong_type"),
    ("response not an object", _set(["responses", 0], "hello"), "wrong_type"),
    ("response start as bool", _set(["responses", 0, "start_frame"], True), "wrong_type"),
    ("response end as string", _set(["responses", 0, "end_frame"], "40"), "wrong_type"),
    ("response text not a string", _set(["responses", 0, "text"], ["The"]), "wrong_type"),
    ("codes not a list", _set(["responses", 0, "codes"], 7), "wrong_type"),
    ("bool in codes", _set(["responses", 1, "codes", 0], False), "wrong_type"),
    ("interrupted as int", _set(["responses", 0, "interrupted"], 1), "wrong_type"),
    ("interrupted as string", _set(["responses", 0, "interrupted"], "true"), "wrong_type"),
    ("scenario not a string", _set(["scenario"], 3), "wrong_type"),
]


@pytest.mark.parametrize(
    ("edit", "reason"), [c[1:] for c in TIMELINE_BAD], ids=[c[0] for c in TIMELINE_BAD]
)
def test_bad_timeline_is_rejected_with_id_and_reason(edit, reason):
    obj = copy.deepcopy(timeline_to_json(TIMELINE))
    edit(obj)
    with pytest.raises(RecordError) as e:
        timeline_from_json(through_text(obj))
    assert e.value.reason == reason
    assert e.value.record_id == "dlg-000001"
    assert "dlg-000001" in str(e.value) and reason in str(e.value)


SCRIPT_BAD = [
    ("no turns", _del(["turns"]), "missing_field"),
    ("no user_codes", _del(["turns", 0, "user_codes"]), "missing_field"),
    ("no assistant_text", _del(["turns", 1, "assistant_text"]), "missing_field"),
    ("no assistant_codes", _del(["turns", 0, "assistant_codes"]), "missing_field"),
    ("empty turns", _set(["turns"], []), "empty_speech"),
    ("turns not a list", _set(["turns"], {"a": 1}), "wrong_type"),
    ("turn not an object", _set(["turns", 0], "hi"), "wrong_type"),
    ("bool in user_codes", _set(["turns", 0, "user_codes", 0], True), "wrong_type"),
    ("assistant_codes not a list", _set(["turns", 0, "assistant_codes"], 12), "wrong_type"),
    ("assistant_text not a string", _set(["turns", 0, "assistant_text"], 1), "wrong_type"),
    ("user_text not a string", _set(["turns", 0, "user_text"], ["Hi?"]), "wrong_type"),
    ("word ends not ints", _set(["turns", 0, "user_word_ends"], ["3"]), "wrong_type"),
]


@pytest.mark.parametrize(
    ("edit", "reason"), [c[1:] for c in SCRIPT_BAD], ids=[c[0] for c in SCRIPT_BAD]
)
def test_bad_script_is_rejected_with_id_and_reason(edit, reason):
    obj = copy.deepcopy(script_to_json(SCRIPT))
    edit(obj)
    with pytest.raises(RecordError) as e:
        script_from_json(through_text(obj))
    assert (e.value.reason, e.value.record_id) == (reason, "s-1")
    assert "s-1" in str(e.value)


@pytest.mark.parametrize("parse", [timeline_from_json, script_from_json])
@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"num_frames": 3}, "missing_field"),  # no id
        ({"id": "", "num_frames": 3}, "missing_field"),
        ([1, 2, 3], "wrong_type"),  # not an object
        ("dlg", "wrong_type"),
    ],
)
def test_record_without_usable_id(parse, obj, reason):
    with pytest.raises(RecordError) as e:
        parse(obj)
    assert e.value.reason == reason


def test_bad_json_line_is_reported_and_reading_goes_on(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = timeline_to_json(TIMELINE)
    lines = [json.dumps(good), '{"id": "broken", "num_frames": ', "", json.dumps(good)]
    path.write_text("\n".join(lines) + "\n")
    out = list(read_jsonl(path))
    assert [n for n, _ in out] == [0, 1, 3]  # the blank line is skipped, numbers kept
    assert out[0][1] == good and out[2][1] == good
    err = out[1][1]
    assert isinstance(err, RecordError) and err.reason == "bad_json"
    assert err.record_id == "mixed.jsonl:2"  # file and 1-based line number
    assert "mixed.jsonl" in str(err)


def test_read_jsonl_from_an_offset_with_a_limit(tmp_path):
    path = tmp_path / "r.jsonl"
    objs = [{"id": f"r{i}"} for i in range(6)]
    write_jsonl(path, objs)
    offset = len((json.dumps(objs[0], separators=(",", ":")) + "\n").encode()) * 2
    got = list(read_jsonl(path, start_byte=offset, limit=3))
    assert [o["id"] for _, o in got] == ["r2", "r3", "r4"]
    path.write_text('{"id": "r0"}\nnot json\n')
    [(_, err)] = list(read_jsonl(path, start_byte=13, first_line=2))  # the line at byte 13
    assert err.record_id == "r.jsonl:2"


# --------------------------------------------------------------------------- bad input (issue 12)

DEFAULT = RecordLimits().for_layout(BlockLayout(10, 5))
SMALL = RecordLimits(
    max_seq_len=1000, max_frames=100, max_text_chars=30, max_items=3, max_id_chars=12
)


@pytest.mark.parametrize("ends", [[999], [-3], [0], [4], [1, 5]])
def test_word_end_outside_its_turn_is_rejected_naming_the_field(ends):
    obj = script_to_json(SCRIPT)  # turn 0 has 4 user codes: word ends lie in 1..3
    obj["turns"][0]["user_word_ends"] = ends
    with pytest.raises(RecordError) as e:
        script_from_json(obj)
    assert (e.value.reason, e.value.record_id) == ("word_end_out_of_range", "s-1")
    assert "turns[0].user_word_ends" in e.value.detail and "0 < e < 4" in e.value.detail
    obj["turns"][0]["user_word_ends"] = [1, 3]
    assert script_from_json(obj).turns[0].user_word_ends == (1, 3)


def _long_timeline() -> dict:
    obj = timeline_to_json(TIMELINE)
    obj["num_frames"] = 150
    obj["user_codes"] = [0] * 150
    return obj


OVERSIZED = [
    # (name, record, reason, words the detail must hold)
    ("num_frames", _long_timeline(), "too_long", ["num_frames", "max_frames=100"]),
    (
        "user codes",
        {**timeline_to_json(TIMELINE), "num_frames": 5, "user_codes": [0] * 101},
        "too_long",
        ["user_codes has 101 codes", "max_frames=100"],
    ),
    (
        "response frame",
        _set(["responses", 0, "end_frame"], 10**30),
        "too_long",
        ["end_frame", "max_frames=100"],
    ),
    (
        "text",
        _set(["responses", 1, "text"], "x" * 31),
        "too_large",
        ["responses[1].text", "max_text_chars=30"],
    ),
    (
        "segment text",
        _set(["user_segments", 0, "text"], "y" * 31),
        "too_large",
        ["user_segments[0].text", "max_text_chars=30"],
    ),
    (
        "segments",
        _set(["user_segments"], [{"start_frame": i, "end_frame": i + 1} for i in range(4)]),
        "too_large",
        ["user_segments has 4 entries", "max_items=3"],
    ),
    (
        "responses",
        _set(["responses"], [{"start_frame": 20, "end_frame": 21, "text": "a", "codes": [1]}] * 4),
        "too_large",
        ["responses has 4 entries", "max_items=3"],
    ),
    ("scenario", _set(["scenario"], "s" * 13), "too_large", ["scenario", "max_id_chars=12"]),
]


@pytest.mark.parametrize(
    ("edit", "reason", "words"), [c[1:] for c in OVERSIZED], ids=[c[0] for c in OVERSIZED]
)
def test_oversized_timeline_field_is_rejected_naming_field_and_limit(edit, reason, words):
    if callable(edit):
        obj = copy.deepcopy(timeline_to_json(TIMELINE))
        obj["num_frames"], obj["user_codes"] = 70, obj["user_codes"][:70]
        edit(obj)
    else:
        obj = edit
    with pytest.raises(RecordError) as e:
        timeline_from_json(obj, SMALL)
    assert (e.value.reason, e.value.record_id) == (reason, "dlg-000001")
    assert all(w in e.value.detail for w in words), e.value.detail
    timeline_from_json(obj)  # no limits by default: only the build caps sizes


def test_oversized_script_fields_are_rejected():
    def rejected(edit) -> RecordError:
        obj = copy.deepcopy(script_to_json(SCRIPT))
        edit(obj)
        with pytest.raises(RecordError) as e:
            script_from_json(obj, SMALL)
        return e.value

    many = [script_to_json(SCRIPT)["turns"][0]] * 4
    assert rejected(_set(["turns"], many)).reason == "too_large"
    e = rejected(_set(["turns", 1, "assistant_codes"], [1] * 101))
    assert e.reason == "too_long" and "turns[1].assistant_codes" in e.detail
    e = rejected(_set(["turns", 0, "user_text"], "z" * 31))
    assert e.reason == "too_large" and "turns[0].user_text" in e.detail
    e = rejected(_set(["turns", 0, "assistant_text"], "z" * 31))
    assert e.reason == "too_large" and "turns[0].assistant_text" in e.detail
    e = rejected(_set(["turns", 0, "user_word_ends"], [1, 2, 3, 1]))
    assert e.reason == "too_large" and "user_word_ends" in e.detail
    assert script_from_json(script_to_json(SCRIPT), SMALL).id == "s-1"


def test_limits_for_a_layout_allow_what_fits_in_max_seq_len():
    limits = RecordLimits(max_seq_len=8192).for_layout(BlockLayout(10, 5))
    assert limits.max_frames == (8192 // 25 + 1) * 10
    assert RecordLimits(max_frames=7).for_layout(BlockLayout(10, 5)).max_frames == 7
    with pytest.raises(ValueError, match="max_items"):
        RecordLimits(max_items=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        RecordLimits(max_seq_len=True)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "wrong_type"),
        (7, "wrong_type"),
        (None, "wrong_type"),
        ({"id": "", "turns": []}, "missing_field"),
        ({"id": 12, "turns": []}, "missing_field"),
        ({"id": True, "turns": []}, "missing_field"),
        ({"turns": []}, "missing_field"),
        ({"id": "x" * 13, "turns": []}, "too_large"),
        ({"id": "bad\ud800id", "turns": []}, "bad_utf8"),
    ],
)
def test_record_without_a_usable_id_is_named_by_its_place(obj, reason):
    for parse in (timeline_from_json, script_from_json):
        with pytest.raises(RecordError) as e:
            parse(obj, SMALL, "src.jsonl:7")
        assert (e.value.record_id, e.value.reason) == ("src.jsonl:7", reason)
    with pytest.raises(RecordError) as e:
        record_id(obj, SMALL)
    assert e.value.reason == reason


def test_lone_surrogate_in_a_text_is_rejected():
    obj = timeline_to_json(TIMELINE)
    obj["responses"][0]["text"] = "half \udc80 a character"
    with pytest.raises(RecordError) as e:
        timeline_from_json(json.loads(json.dumps(obj)))  # as JSON's "\udc80" escape reads
    assert e.value.reason == "bad_utf8" and "responses[0].text" in e.value.detail


def test_absent_optional_fields_as_a_dataset_gives_them_are_defaults():
    obj = timeline_to_json(TIMELINE)  # a Hugging Face dataset fills absent keys with None
    obj["user_segments"][1]["kind"] = None
    obj["responses"][1]["interrupted"] = None
    t = timeline_from_json(obj)
    assert t.user_segments[1].kind == "turn" and t.responses[1].interrupted is False
    obj = script_to_json(SCRIPT)
    obj["turns"][1]["user_word_ends"] = None
    assert script_from_json(obj).turns[1].user_word_ends == ()


def test_read_jsonl_rejects_each_unreadable_line_by_file_and_line(tmp_path):
    good = json.dumps({"id": "ok"}).encode()
    lines = [
        good,  # 1
        b'{"id": "latin-1 caf\xe9"}',  # 2: not UTF-8
        b'{"id": "n", "x": NaN}',  # 3
        b'{"id": "i", "x": -Infinity}',  # 4
        b'{"id": "a", "id": "b"}',  # 5: a repeated key
        b'{"id": "big", "x": ' + b"9" * 5000 + b"}",  # 6: past Python's int digit limit
        b"[" * 100_000 + b"]" * 100_000,  # 7: absurd nesting
        b"\xef\xbb\xbf" + good,  # 8: a BOM: read
        b"",  # 9: blank: skipped
        b'{"id": "long", "pad": "' + b"x" * 300_000 + b'"}',  # 10: over max_line_bytes
        b"[1, 2]",  # 11: JSON, not an object: the record parser rejects it
        good,  # 12
    ]
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = dict(read_jsonl(path, max_line_bytes=250_000))
    assert sorted(got) == [i for i in range(12) if i != 8]
    want = {1: "bad_utf8", 2: "bad_json", 3: "bad_json", 4: "bad_json", 5: "bad_json"}
    want |= {6: "bad_json", 9: "too_large"}
    for n, reason in want.items():
        err = got[n]
        assert isinstance(err, RecordError), (n, err)
        assert (err.record_id, err.reason) == (f"junk.jsonl:{n + 1}", reason)
    assert "duplicate key 'id'" in got[4].detail and "NaN" in got[2].detail
    assert got[0] == got[7] == got[11] == {"id": "ok"}
    assert got[10] == [1, 2]
    # from an offset: line numbers go on from first_line, the cut line is skipped whole
    offset = sum(len(x) + 1 for x in lines[:9])
    rest = list(read_jsonl(path, offset, first_line=10, max_line_bytes=250_000))
    assert [(n, getattr(o, "record_id", o)) for n, o in rest] == [
        (0, "junk.jsonl:10"),
        (1, [1, 2]),
        (2, {"id": "ok"}),
    ]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_json_anywhere_in_a_record_parses_or_is_a_record_error(data):
    """Junk at any place of a valid record: parsed, or rejected with a RecordError (never
    another exception), named by the record's id or, without a usable one, its place."""
    kind = data.draw(st.sampled_from(["timeline", "script"]))
    obj = timeline_to_json(TIMELINE) if kind == "timeline" else script_to_json(SCRIPT)
    parse = timeline_from_json if kind == "timeline" else script_from_json
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(obj))
        path = data.draw(st.sampled_from(paths))
        junk = data.draw(JSON_VALUES)
        if not path:
            obj = junk
        else:
            _set(list(path), junk)(obj)
    limits = data.draw(st.sampled_from([NO_LIMITS, SMALL, DEFAULT]))
    try:
        parse(obj, limits, "f.jsonl:3")
    except RecordError as e:
        usable = isinstance(obj, dict) and isinstance(obj.get("id"), str) and obj["id"]
        assert e.record_id == (
            obj["id"] if usable and len(obj["id"]) <= limits.max_id_chars else "f.jsonl:3"
        )
        assert e.reason and e.detail


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.binary(max_size=40), max_size=8))
def test_read_jsonl_never_raises_and_numbers_every_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("jl") / "any.jsonl"
    lines = [x.replace(b"\n", b" ") for x in lines]
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    for n, obj in read_jsonl(path, max_line_bytes=30):
        assert 0 <= n < len(lines)
        if isinstance(obj, RecordError):
            assert obj.record_id == f"any.jsonl:{n + 1}"
            assert obj.reason in ("bad_utf8", "bad_json", "too_large")
