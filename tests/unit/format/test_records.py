"""Record JSON: round trips, and one rejection per malformed input, naming the record."""

from __future__ import annotations

import copy
import json

import pytest

from bayling_duplex.format.records import (
    RecordError,
    Response,
    Script,
    ScriptTurn,
    Timeline,
    UserSegment,
    read_jsonl,
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
    assert err.record_id == "mixed.jsonl:0+1"  # file, byte offset of the read, line
    assert "mixed.jsonl" in str(err)


def test_read_jsonl_from_an_offset_with_a_limit(tmp_path):
    path = tmp_path / "r.jsonl"
    objs = [{"id": f"r{i}"} for i in range(6)]
    write_jsonl(path, objs)
    offset = len((json.dumps(objs[0], separators=(",", ":")) + "\n").encode()) * 2
    got = list(read_jsonl(path, start_byte=offset, limit=3))
    assert [o["id"] for _, o in got] == ["r2", "r3", "r4"]
    path.write_text('{"id": "r0"}\nnot json\n')
    [(_, err)] = list(read_jsonl(path, start_byte=13))
    assert err.record_id == "r.jsonl:13+0"
