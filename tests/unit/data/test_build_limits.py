"""The build's edge against bad input (issue 12): size limits, repeated ids, unreadable
lines named ``file:line``, and a split that yields nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import datasets  # noqa: F401  (imported before the build forks its workers, so each need not)
import pytest

from bayling_duplex.data.build import MANIFEST, BuildError, load_split, run_build
from bayling_duplex.data.recipe import RecipeConfig, SourceConfig
from bayling_duplex.data.synthesis import ScenarioMix, SynthesisConfig, synthesize
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordLimits, Script, ScriptTurn
from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig, backbone_source

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "worked_example.jsonl"


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_cache) -> str:
    return str(backbone_source(ModelConfig(), tiny_cache))


def build(recipe, tokenizer_dir, out: Path, **kw) -> dict:
    return run_build(recipe, tokenizer_dir, VocabConfig(), out, 1, progress=False, **kw)


def timelines_recipe(path: Path, shard_size: int = 20, **kw) -> RecipeConfig:
    kw.setdefault("max_reject_share", 1.0)
    return RecipeConfig(
        name="given",
        train=SourceConfig(kind="timelines_jsonl", path=str(path), count=None),
        shard_size=shard_size,
        **kw,
    )


def timeline(rid: str, num_frames: int = 40, text: str = "It is 9 PM in Paris.") -> dict:
    """A valid timeline: a question on [2, 15), an answer on [20, 32), silence to ``num_frames``."""
    return {
        "id": rid,
        "num_frames": num_frames,
        "user_codes": [0, 0] + [9] * 13 + [0] * (num_frames - 15),
        "user_segments": [{"start_frame": 2, "end_frame": 15, "kind": "turn"}],
        "responses": [
            {"start_frame": 20, "end_frame": 32, "text": text, "codes": [11] * 12},
        ],
    }


def rejections(out: Path, split: str = "train") -> list[dict]:
    return [
        json.loads(line)
        for f in sorted(out.glob(f"{split}/shard-*/rejections.jsonl"))
        for line in f.read_text().splitlines()
    ]


def write_lines(path: Path, objs: list) -> None:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))


# --------------------------------------------------------------------------- 1. size limits


def test_the_issue_repro_a_huge_timeline_is_rejected_not_built(tokenizer_dir, tmp_path):
    """The 2000-block timeline of the issue is rejected as the line is parsed (too_long)."""
    obj = json.loads(EXAMPLE.read_text().splitlines()[0])
    obj["num_frames"] = 20000
    obj["user_codes"] += [0] * 19930
    path = tmp_path / "huge.jsonl"
    write_lines(path, [obj, *(timeline(f"ok-{i}") for i in range(3))])
    m = build(timelines_recipe(path), tokenizer_dir, tmp_path / "out")
    s = m["splits"]["train"]
    assert (s["sequences"], s["rejections_by_reason"]) == (3, {"too_long": 1})
    [r] = rejections(tmp_path / "out")
    assert r["id"] == obj["id"] and "max_frames=3280" in r["detail"]
    assert s["max_seq_len"] == s["num_blocks"]["max"] * 25 <= 8192


def test_a_sequence_over_max_seq_len_is_rejected_for_every_source_kind(tokenizer_dir, tmp_path):
    # a timeline that is short in frames but whose answer text runs far past its speech
    path = tmp_path / "t.jsonl"
    long_text = " ".join(["word"] * 120)  # about 120 text slots: 24 blocks of 5
    write_lines(path, [timeline("short"), timeline("wordy", text=long_text)])
    limits = RecordLimits(max_seq_len=20 * 25)  # 20 blocks
    m = build(timelines_recipe(path, limits=limits), tokenizer_dir, tmp_path / "t")
    assert m["splits"]["train"]["rejections_by_reason"] == {"too_long": 1}
    [r] = rejections(tmp_path / "t")
    assert r["id"] == "wordy" and "max_seq_len=500" in r["detail"] and "tokens" in r["detail"]
    assert load_split(tmp_path / "t", "train")["id"] == ["short"]

    # synthesised scripts (here the demo's) are capped by it too, not only by max_blocks
    demo = RecipeConfig(
        name="demo-capped",
        train=SourceConfig(kind="demo", count=30),
        shard_size=30,
        max_reject_share=1.0,
        limits=RecordLimits(max_seq_len=15 * 25),
    )
    m = build(demo, tokenizer_dir, tmp_path / "d")
    s = m["splits"]["train"]
    assert s["rejections_by_reason"].get("too_long", 0) > 0
    assert s["num_blocks"]["max"] <= 15 and s["max_seq_len"] <= 15 * 25
    assert all(
        r["reason"] == "too_long" and "max_seq_len=375" in r["detail"]
        for r in rejections(tmp_path / "d")
    )


def test_a_huge_line_is_not_read_whole(tokenizer_dir, tmp_path):
    path = tmp_path / "t.jsonl"
    big = timeline("big")
    big["padding"] = "x" * 5000
    write_lines(path, [timeline("a"), big, timeline("b")])
    recipe = timelines_recipe(path, limits=RecordLimits(max_line_bytes=2000))
    m = build(recipe, tokenizer_dir, tmp_path / "out")
    assert m["splits"]["train"]["rejections_by_reason"] == {"too_large": 1}
    [r] = rejections(tmp_path / "out")
    assert r["id"] == "t.jsonl:2" and "max_line_bytes=2000" in r["detail"]


def test_synthesis_drops_turns_that_cannot_fit_before_placing_any():
    """A script of many long turns is as fast as a short one, with the same timeline."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_turn, qa_pairs

    codec = ToyCodec()
    base = [demo_turn(q, a, codec) for q, a in qa_pairs("train")[:3]]
    long = ScriptTurn(tuple([40] * 3000), "fine.", (41,) * 20)
    cfg = SynthesisConfig(max_blocks=75)
    spec = FormatSpec(BlockLayout(10, 5))
    ids = [[5] * 8] * (len(base) + 1000)
    for scenario in ("turn_taking", "interruption"):
        short = synthesize(Script("s", tuple(base)), ids[: len(base)], scenario, cfg, spec)
        t0 = time.perf_counter()
        many = Script("s", (*base, *[long] * 1000))
        assert synthesize(many, ids, scenario, cfg, spec) == short
        assert time.perf_counter() - t0 < 2.0


# --------------------------------------------------------------------------- 3. repeated ids


def test_repeated_ids_are_rejected_within_and_across_shards(tokenizer_dir, tmp_path):
    path = tmp_path / "dups.jsonl"
    # shard size 4: lines 1-4, 5-8, 9-10; the first of each id is kept (num_frames tells which)
    objs = [
        timeline("a", 40),
        timeline("b", 40),
        timeline("a", 41),  # same shard
        timeline("c", 40),
        timeline("b", 42),  # next shard
        timeline("d", 40),
        timeline("d", 43),  # same shard, second shard
        timeline("e", 40),
        timeline("a", 44),  # third shard
        '{"id": "f", "num_frames": ',  # bad JSON: no id, not a repeat
    ]
    write_lines(path, objs)
    out = tmp_path / "out"
    m = build(timelines_recipe(path, shard_size=4), tokenizer_dir, out)
    s = m["splits"]["train"]
    assert s["records"] == 10 and s["sequences"] == 5 and s["rejected"] == 5
    assert s["rejections_by_reason"] == {"duplicate_id": 4, "bad_json": 1}
    assert s["num_blocks_hist"] == {"4": 5} and s["tokens"] == 5 * 4 * 25
    ds = load_split(out, "train")
    assert sorted(ds["id"]) == ["a", "b", "c", "d", "e"]
    assert all(json.loads(meta)["num_frames"] == 40 for meta in ds["meta"])
    dups = sorted((r["id"], r["detail"]) for r in rejections(out) if r["reason"] == "duplicate_id")
    assert dups == [
        ("a", "dups.jsonl:3 repeats the id of dups.jsonl:1"),
        ("a", "dups.jsonl:9 repeats the id of dups.jsonl:1"),
        ("b", "dups.jsonl:5 repeats the id of dups.jsonl:2"),
        ("d", "dups.jsonl:7 repeats the id of dups.jsonl:6"),
    ]
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("train/shard-*/stats.json"))]
    assert [st["sequences"] for st in stats] == [3, 2, 0]  # a shard left empty still loads
    assert [st["rejections_by_reason"] for st in stats] == [
        {"duplicate_id": 1},
        {"duplicate_id": 2},
        {"duplicate_id": 1, "bad_json": 1},
    ]

    # a resumed build changes nothing; a shard built again is deduplicated again
    again = build(timelines_recipe(path, shard_size=4), tokenizer_dir, out)
    assert again["splits"] == m["splits"]
    shutil.rmtree(out / "train" / "shard-00001")
    again = build(timelines_recipe(path, shard_size=4), tokenizer_dir, out)
    assert again["splits"] == m["splits"]
    assert not list((out / "train").glob(".shard-*"))


def test_repeated_script_ids_drop_every_timeline_of_the_repeat(tokenizer_dir, tmp_path):
    """``each`` mode: one record gives two rows; a repeated record gives none, counted once."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_script
    from bayling_duplex.format.records import script_to_json

    scripts = [script_to_json(demo_script("train", i, 0, ToyCodec())) for i in range(5)]
    scripts.append({**scripts[1], "turns": scripts[4]["turns"]})  # id of 1, next shard
    scripts.insert(2, scripts[0])  # id of 0, same shard
    path = tmp_path / "s.jsonl"
    write_lines(path, scripts)
    recipe = RecipeConfig(
        name="each",
        train=SourceConfig(kind="scripts_jsonl", path=str(path), count=None),
        synthesis=SynthesisConfig(mode="each", mix=ScenarioMix(turn_taking=1.0, interruption=1.0)),
        shard_size=4,
        max_reject_share=1.0,
    )
    m = build(recipe, tokenizer_dir, tmp_path / "out")
    s = m["splits"]["train"]
    assert s["rejections_by_reason"] == {"duplicate_id": 2} and s["records"] == 7
    ids = load_split(tmp_path / "out", "train")["id"]
    assert sorted(ids) == sorted(
        f"{o['id']}:{sc}"
        for o in scripts[:2] + scripts[3:6]
        for sc in ("turn_taking", "interruption")
    )
    assert s["sequences"] == 10


# --------------------------------------------------------------------------- 3. junk lines


def test_junk_lines_are_each_kept_once_or_rejected_by_file_and_line(tokenizer_dir, tmp_path):
    good = json.dumps(timeline("kept-bom"))
    lines = [
        json.dumps(timeline("ok-1")).encode(),  # 1
        b"[1, 2, 3]",  # 2: not an object
        b"42",  # 3
        b"null",  # 4
        json.dumps(timeline("nan")).replace('"num_frames": 40', '"num_frames": NaN').encode(),
        json.dumps(timeline("inf")).replace("40", "Infinity", 1).encode(),  # 6
        json.dumps({**timeline("big"), "num_frames": 10**50}).encode(),  # 7: huge int
        json.dumps({**timeline("bool"), "num_frames": True}).encode(),  # 8: bool for an int
        b'{"id": "deep", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # 9: nested junk
        json.dumps({**timeline("x"), "id": ""}).encode(),  # 10: empty id
        json.dumps({**timeline("x"), "id": "i" * 300}).encode(),  # 11: very long id
        b"\xef\xbb\xbf" + good.encode(),  # 12: a BOM: kept
        json.dumps(timeline("caf\u00e9"), ensure_ascii=False).encode("latin-1"),  # 13: not UTF-8
        json.dumps({**timeline("x"), "id": 7}).encode(),  # 14: id not a string
        json.dumps(timeline("ok-2")).encode(),  # 15
        json.dumps(timeline("ok-1")).encode(),  # 16: repeat
    ]
    path = tmp_path / "junk.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    m = build(timelines_recipe(path, shard_size=6), tokenizer_dir, out)
    assert sorted(load_split(out, "train")["id"]) == ["kept-bom", "ok-1", "ok-2"]
    got = {(r["id"], r["reason"]) for r in rejections(out)}
    assert got == {
        ("junk.jsonl:2", "wrong_type"),
        ("junk.jsonl:3", "wrong_type"),
        ("junk.jsonl:4", "wrong_type"),
        ("junk.jsonl:5", "bad_json"),
        ("junk.jsonl:6", "bad_json"),
        ("big", "too_long"),
        ("bool", "wrong_type"),
        ("junk.jsonl:9", "bad_json"),
        ("junk.jsonl:10", "missing_field"),
        ("junk.jsonl:11", "too_large"),
        ("junk.jsonl:13", "bad_utf8"),
        ("junk.jsonl:14", "missing_field"),
        ("ok-1", "duplicate_id"),
    }
    assert m["splits"]["train"]["rejected"] == 13 and m["splits"]["train"]["records"] == 16


# --------------------------------------------------------------------------- 4. empty splits


def test_an_empty_source_fails_the_build(tokenizer_dir, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    out = tmp_path / "e"
    with pytest.raises(BuildError, match=r"split train yields no sequence.*empty\.jsonl"):
        build(timelines_recipe(path), tokenizer_dir, out)
    m = json.loads((out / MANIFEST).read_text())
    assert m["status"] == "failed" and "train" in m["splits"]
    assert m["splits"]["train"]["records"] == 0 and m["splits"]["train"]["shards"] == []

    # a source whose every record is rejected fails the same way, even when rejections are allowed
    write_lines(path, ['{"id": "x"', timeline("y", text="")])
    with pytest.raises(BuildError, match=r"yields no sequence: all 2 records rejected.*bad_json"):
        build(timelines_recipe(path), tokenizer_dir, tmp_path / "all-bad")

    # an empty heldout split fails it too
    (tmp_path / "good.jsonl").write_text(json.dumps(timeline("g")) + "\n")
    both = timelines_recipe(tmp_path / "good.jsonl")
    both.heldout = SourceConfig(kind="timelines_jsonl", path=str(path.with_name("none.jsonl")))
    path.with_name("none.jsonl").write_text("\n\n")
    with pytest.raises(BuildError, match=r"split heldout yields no sequence") as e:
        build(both, tokenizer_dir, tmp_path / "held")
    assert "split train" not in str(e.value)


def test_cli_empty_source_exits_2_with_the_reason(tmp_path, tiny_cache):
    (tmp_path / "empty.jsonl").write_text("")
    cmd = [
        sys.executable,
        "-m",
        "bayling_duplex.data",
        "build",
        "recipe=demo",
        "recipe.name=e",
        "recipe.train.kind=timelines_jsonl",
        "recipe.train.path=empty.jsonl",
        "recipe.heldout=null",
        f"cache_dir={tiny_cache}",
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "error: split train yields no sequence" in r.stderr
    assert json.loads((tmp_path / "data" / "e" / MANIFEST).read_text())["status"] == "failed"
