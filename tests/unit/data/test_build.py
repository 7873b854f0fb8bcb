"""The sharded build: manifest, shards, resume, refusal of another recipe, rejections, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets  # imported before the build forks its workers, so each need not
import numpy as np
import pytest

from bayling_duplex.data.build import MANIFEST, PLAN, BuildError, load_split, run_build
from bayling_duplex.data.recipe import RecipeConfig, SourceConfig
from bayling_duplex.data.synthesis import SCENARIOS, ScenarioMix, SynthesisConfig
from bayling_duplex.format.interleave import DuplexSequence, check_sequence
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig, backbone_source

LAYOUT = BlockLayout(10, 5)


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_cache) -> str:
    return str(backbone_source(ModelConfig(), tiny_cache))


def demo_recipe(train: int = 60, heldout: int | None = 20, seed: int = 0, **kw) -> RecipeConfig:
    return RecipeConfig(
        name="test-demo",
        train=SourceConfig(kind="demo", split="train", count=train),
        heldout=SourceConfig(kind="demo", split="heldout", count=heldout) if heldout else None,
        synthesis=SynthesisConfig(
            mix=ScenarioMix(turn_taking=0.4, interruption=0.3, backchannel=0.15, hesitation=0.15),
            seed=seed,
        ),
        shard_size=20,
        **kw,
    )


def build(recipe, tokenizer_dir, out: Path, workers: int = 1, **kw) -> dict:
    return run_build(recipe, tokenizer_dir, VocabConfig(), out, workers, progress=False, **kw)


def without_time(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "build_seconds"}


def shard_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*/shard-*") if p.is_dir())


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer_dir):
    """The small demo recipe, built once with two workers: (recipe, folder, manifest)."""
    out = tmp_path_factory.mktemp("build") / "demo"
    recipe = demo_recipe()
    return recipe, out, build(recipe, tokenizer_dir, out, workers=2)


# --------------------------------------------------------------------------- manifest and shards


def test_manifest_counts_and_stats(built):
    recipe, out, m = built
    assert json.loads((out / MANIFEST).read_text()) == m
    assert m["status"] == "ok" and m["name"] == "test-demo"
    assert set(m["fingerprint"]) == {"recipe", "vocab", "builder", "codec", "combined"}
    assert m["fingerprint"]["codec"] == recipe.codec.name
    assert json.loads((out / PLAN).read_text())["fingerprint"] == m["fingerprint"]
    assert m["layout"] == {"frames_per_block": 10, "slots_per_block": 5, "frame_rate_hz": 12.5}
    for split, n, shards in [("train", 60, 3), ("heldout", 20, 1)]:
        s = m["splits"][split]
        assert s["records"] == n and s["rejected"] == 0 and s["rejections_by_reason"] == {}
        assert s["sequences"] == n  # mix mode: one timeline per script
        assert sum(s["scenarios"].values()) == n and set(s["scenarios"]) <= set(SCENARIOS)
        assert s["shards"] == [f"{split}/shard-{i:05d}" for i in range(shards)]
        nb = s["num_blocks"]
        assert 1 <= nb["min"] <= nb["p50"] <= nb["p90"] <= nb["max"] <= recipe.synthesis.max_blocks
        assert nb["min"] <= nb["mean"] <= nb["max"]
        assert sum(s["num_blocks_hist"].values()) == n
        hist_tokens = sum(int(k) * v for k, v in s["num_blocks_hist"].items()) * LAYOUT.block_len
        assert s["tokens"] == hist_tokens
    assert len(m["splits"]["train"]["scenarios"]) >= 3  # the mix shows up in 60 dialogues


def test_shards_load_as_checked_sequences(built, tiny_backbone):
    _, out, m = built
    vocab = tiny_backbone[2]
    ds = load_split(out, "train")
    assert isinstance(ds, datasets.Dataset)
    assert len(ds) == m["splits"]["train"]["sequences"]
    assert sorted(ds["id"]) == [f"demo-train-{i:07d}" for i in range(60)]
    assert sum(len(x) for x in ds["input_ids"]) == m["splits"]["train"]["tokens"]
    for row in ds.select(range(0, 60, 7)):
        seq = DuplexSequence(
            np.asarray(row["input_ids"]), np.asarray(row["classes"], np.int8), row["num_blocks"]
        )
        check_sequence(seq, LAYOUT, vocab)
        meta = json.loads(row["meta"])
        assert -(-meta["num_frames"] // 10) <= row["num_blocks"]
        n_speak = int((seq.input_ids == vocab.speak_id).sum())
        assert n_speak == len(meta["responses"]) > 0
    held = load_split(out, "heldout")
    assert len(held) == 20 and all(i.startswith("demo-heldout-") for i in held["id"])


def test_meta_records_the_hesitation_pauses(built, tiny_backbone):
    """Each hesitation dialogue's pause lies inside one of its user turns, on the silence
    pattern; no other dialogue records one (the pause weight marks the slots hearing them)."""
    _, out, m = built
    vocab = tiny_backbone[2]
    silence = set(m["silence_codes"])
    seen = 0
    for row in load_split(out, "train"):
        meta = json.loads(row["meta"])
        if row["scenario"] != "hesitation":
            assert meta["pauses"] == []
            continue
        assert meta["pauses"], row["id"]
        ids = np.asarray(row["input_ids"]).reshape(row["num_blocks"], LAYOUT.block_len)
        user = ids[:, : LAYOUT.frames_per_block].reshape(-1) - vocab.audio_start_id
        turns = [(a, b) for a, b, kind in meta["user_segments"] if kind == "turn"]
        for s, e in meta["pauses"]:
            assert any(a < s < e < b for a, b in turns), (row["id"], s, e)
            assert {int(c) for c in user[s:e]} <= silence, (row["id"], s, e)
            seen += 1
    assert seen >= 3


# --------------------------------------------------------------------------- resume


def test_resume_rebuilds_only_the_missing_shard(built, tokenizer_dir, tmp_path):
    recipe, src, manifest = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = {p: (p / "stats.json").stat().st_mtime_ns for p in shard_dirs(out)}
    victim = out / "train" / "shard-00001"
    original = datasets.load_from_disk(str(victim)).to_dict()
    original_stats = (victim / "stats.json").read_text()
    shutil.rmtree(victim)
    leftover = out / "train" / ".shard-00002.tmp4242"  # a killed worker's half-written shard
    leftover.mkdir()
    (leftover / "data-00000-of-00001.arrow").write_bytes(b"half")

    again = build(recipe, tokenizer_dir, out, workers=1)

    assert not leftover.exists()
    for p, mtime in before.items():
        if p != victim:
            assert (p / "stats.json").stat().st_mtime_ns == mtime, f"{p.name} was rebuilt"
    assert victim.is_dir()
    # rebuilt in one process, the shard equals the one a pool worker wrote
    assert datasets.load_from_disk(str(victim)).to_dict() == original
    assert (victim / "stats.json").read_text() == original_stats
    assert without_time(again) == without_time(manifest)
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"shard-{i:05d}" for i in range(3)]


# --------------------------------------------------------------------------- another recipe


def test_another_configuration_is_refused(built, tokenizer_dir, tmp_path):
    _, src, manifest = built
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    with pytest.raises(BuildError, match=r"differs in \['recipe'\].*overwrite"):
        build(demo_recipe(seed=7), tokenizer_dir, out)
    with pytest.raises(BuildError, match=r"differs in \['vocab'\]"):
        run_build(
            demo_recipe(), tokenizer_dir, VocabConfig(epad_token="[END]"), out, 1, progress=False
        )
    assert json.loads((out / MANIFEST).read_text()) == manifest  # untouched
    # the reject threshold is not part of the fingerprint: same data, no refusal
    again = build(demo_recipe(max_reject_share=0.5), tokenizer_dir, out)
    assert again["fingerprint"] == manifest["fingerprint"]

    other = demo_recipe(train=20, heldout=None, seed=7)
    m = build(other, tokenizer_dir, out, overwrite=True)
    assert m["fingerprint"]["recipe"] != manifest["fingerprint"]["recipe"]
    assert list(m["splits"]) == ["train"] and m["splits"]["train"]["records"] == 20
    assert not (out / "heldout").exists()  # the old build is gone, not mixed in
    assert [p.name for p in shard_dirs(out)] == ["shard-00000"]


def test_non_empty_folder_without_plan_is_refused(tokenizer_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty"):
        build(demo_recipe(train=20, heldout=None), tokenizer_dir, out)


# --------------------------------------------------------------------------- scripts source


def test_single_turn_scripts_borrow_a_partner_turn(tokenizer_dir, tiny_backbone, tmp_path):
    """The paper's recipe shape: single-turn scripts, one timeline per scenario (``each``)."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_turn, qa_pairs
    from bayling_duplex.format.interleave import response_events, split_channels
    from bayling_duplex.format.records import Script, script_to_json, write_jsonl

    _, tok, vocab = tiny_backbone
    codec = ToyCodec()
    pairs = qa_pairs("train")
    scripts = [Script(f"s{i}", (demo_turn(*pairs[5 * i], codec),)) for i in range(6)]
    path = tmp_path / "scripts.jsonl"
    write_jsonl(path, (script_to_json(s) for s in scripts))
    recipe = RecipeConfig(
        name="pairs",
        train=SourceConfig(kind="scripts_jsonl", path=str(path), count=None),
        synthesis=SynthesisConfig(mode="each", mix=ScenarioMix(turn_taking=1.0, interruption=1.0)),
        shard_size=20,
    )
    m = build(recipe, tokenizer_dir, tmp_path / "built")
    assert m["splits"]["train"]["sequences"] == 12  # two timelines per script
    ds = load_split(tmp_path / "built", "train")
    # one timeline per scenario, each with its own id
    assert sorted(ds["id"]) == sorted(
        f"{s.id}:{sc}" for s in scripts for sc in ("turn_taking", "interruption")
    )
    partnered = 0
    for row in ds:
        k = int(row["id"].split(":")[0][1:])
        own = scripts[k].turns[0]
        slots = split_channels(np.asarray(row["input_ids"]), LAYOUT, vocab).text_slots
        events = response_events(slots, vocab)
        answer = tok(own.assistant_text, add_special_tokens=False)["input_ids"]
        assert answer[: len(events[0].text_ids)] == list(events[0].text_ids)
        if len(events) == 2:  # the next script's first turn interrupts, and is answered
            partnered += 1
            partner = scripts[(k + 1) % len(scripts)].turns[0]
            want = tok(partner.assistant_text, add_special_tokens=False)["input_ids"]
            assert list(events[1].text_ids) == want
        else:
            assert list(events[0].text_ids) == answer
    assert partnered == 6


# --------------------------------------------------------------------------- rejections


def _timeline(rid: str, **edit) -> dict:
    """A valid timeline record: a question on [2, 15), an answer on [20, 32)."""
    obj = {
        "id": rid,
        "num_frames": 40,
        "user_codes": [0, 0] + [9] * 13 + [0] * 25,
        "user_segments": [{"start_frame": 2, "end_frame": 15, "kind": "turn"}],
        "responses": [
            {
                "start_frame": 20,
                "end_frame": 32,
                "text": "It is 9 PM in Paris.",
                "interrupted": False,
                "codes": [11] * 12,
            }
        ],
        "scenario": "turn_taking",
    }
    obj.update(edit)
    return obj


def _response(s: int, e: int, text: str = "hello world") -> dict:
    return {"start_frame": s, "end_frame": e, "text": text, "codes": [11] * (e - s)}


BAD = {
    "code_out_of_range": _timeline("bad-range", user_codes=[0] * 39 + [10**6]),
    "code_count": _timeline("bad-count", user_codes=[0] * 39),
    "segment_order": _timeline(
        "bad-segments",
        user_segments=[
            {"start_frame": 2, "end_frame": 15, "kind": "turn"},
            {"start_frame": 10, "end_frame": 18, "kind": "turn"},
        ],
    ),
    "response_order": _timeline("bad-order", responses=[_response(20, 32), _response(30, 36)]),
    "response_in_first_block": _timeline("bad-first", responses=[_response(5, 12)]),
    "empty_speech": _timeline("bad-empty", responses=[_response(20, 20)]),
    "empty_text": _timeline("bad-text", responses=[_response(20, 30, "")]),
    "slot_collision": _timeline("bad-collision", responses=[_response(10, 14), _response(14, 20)]),
    "wrong_type": _timeline("bad-type", num_frames="40"),
}
MISSING = {k: v for k, v in _timeline("bad-missing").items() if k != "user_codes"}


def write_source(path: Path, n_good: int) -> list[str]:
    """Good records with one bad record per reason spread among them; returns the lines."""
    bad = [json.dumps(o) for o in (*BAD.values(), MISSING)] + ['{"id": "bad-json", "num_fr']
    good = [json.dumps(_timeline(f"good-{i:03d}")) for i in range(n_good)]
    lines = []
    for i, g in enumerate(good):
        lines.append(g)
        if i % 2 and bad:
            lines.append(bad.pop(0))
    lines += bad
    path.write_text("\n".join(lines) + "\n")
    return lines


REASONS = {*BAD, "missing_field", "bad_json"}


def test_bad_records_are_counted_and_listed(tokenizer_dir, tmp_path):
    path = tmp_path / "timelines.jsonl"
    lines = write_source(path, n_good=30)
    recipe = RecipeConfig(
        name="given",
        train=SourceConfig(kind="timelines_jsonl", path=str(path), count=None),
        shard_size=20,
        max_reject_share=0.5,
    )
    out = tmp_path / "built"
    m = build(recipe, tokenizer_dir, out)
    s = m["splits"]["train"]
    assert m["status"] == "ok"
    assert s["records"] == len(lines) == 41
    assert s["sequences"] == 30 and s["scenarios"] == {"turn_taking": 30}
    assert s["rejected"] == 11 and s["rejections_by_reason"] == dict.fromkeys(REASONS, 1)
    assert s["rejected_share"] == round(11 / 41, 5)

    listed = [
        json.loads(line)
        for f in sorted(out.glob("train/shard-*/rejections.jsonl"))
        for line in f.read_text().splitlines()
    ]
    by_reason = {r["reason"]: r for r in listed}
    assert len(listed) == 11 and set(by_reason) == REASONS
    for reason, obj in BAD.items():
        assert by_reason[reason]["id"] == obj["id"] and by_reason[reason]["detail"]
    assert by_reason["missing_field"]["id"] == "bad-missing"
    assert "user_codes" in by_reason["missing_field"]["detail"]
    assert by_reason["bad_json"]["id"].startswith("timelines.jsonl:")
    assert sorted(load_split(out, "train")["id"]) == [f"good-{i:03d}" for i in range(30)]

    # too many rejections: the build fails, naming the reasons, and says so in the manifest
    strict = RecipeConfig(name="given", train=recipe.train, shard_size=20, max_reject_share=0.05)
    with pytest.raises(BuildError) as e:
        build(strict, tokenizer_dir, out)
    msg = str(e.value)
    assert "11 of 41 records rejected" in msg and "max_reject_share" in msg
    assert "rejections.jsonl" in msg
    assert len([r for r in REASONS if f"{r}: 1" in msg]) == 5  # the five most common, named
    failed = json.loads((out / MANIFEST).read_text())
    assert failed["status"] == "failed" and failed["failure"] == msg


# --------------------------------------------------------------------------- command line


def test_cli_build_and_render(tmp_path, tiny_cache):
    out = tmp_path / "demo-cli"

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "bayling_duplex.data", *args, f"cache_dir={tiny_cache}"]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    b = run(
        "build",
        "recipe=demo",
        "recipe.train.count=40",
        "recipe.heldout.count=10",
        f"output_dir={out}",
    )
    assert b.returncode == 0, b.stderr
    assert "train: 40 sequences from 40 records" in b.stdout
    assert "heldout: 10 sequences from 10 records" in b.stdout
    assert json.loads((out / MANIFEST).read_text())["status"] == "ok"

    r = run("render", f"source={out}", "index=0")
    assert r.returncode == 0, r.stderr
    assert "| block k | user frames | X_k | assistant frames |" in r.stdout
    assert "<|assistant|>" in r.stdout and "[EPAD]" in r.stdout


@pytest.mark.parametrize("hf_format", ["disk", "json"])
def test_hugging_face_sources_from_local_files(tokenizer_dir, tmp_path, hf_format):
    """Scripts stored as a Hugging Face dataset (save_to_disk folder or json files) build like JSON lines."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_script
    from bayling_duplex.format.records import script_to_json, write_jsonl

    scripts = [script_to_json(demo_script("train", i, 0, ToyCodec())) for i in range(8)]
    if hf_format == "disk":
        path = tmp_path / "hf"
        datasets.Dataset.from_list(scripts).save_to_disk(str(path))
    else:
        path = tmp_path / "scripts.json"
        write_jsonl(path, scripts)
    recipe = RecipeConfig(
        name="hf",
        train=SourceConfig(kind="hf_scripts", path=str(path), count=None, hf_format=hf_format),
        synthesis=SynthesisConfig(mix=ScenarioMix(turn_taking=1.0, interruption=0.0)),
        shard_size=5,
    )
    m = build(recipe, tokenizer_dir, tmp_path / "built")
    train = m["splits"]["train"]
    assert (train["records"], train["sequences"], train["rejected"]) == (8, 8, 0)
    assert sorted(load_split(tmp_path / "built", "train")["id"]) == sorted(s["id"] for s in scripts)


# --------------------------------------------------------------------------- clear errors (issue 12)


def test_silence_code_outside_the_audio_range_fails_once_before_the_build(tokenizer_dir, tmp_path):
    from bayling_duplex.format.spec import FormatConfig

    out = tmp_path / "bad-silence"
    recipe = demo_recipe(train=4, heldout=None, format=FormatConfig(silence_codes=[300]))
    with pytest.raises(BuildError, match=r"recipe\.format\.silence_codes=\[300\].*\[0, 256\)"):
        build(recipe, tokenizer_dir, out)
    assert not (out / PLAN).exists()  # refused before the build started


def test_render_names_a_missing_record_or_split_and_lists_what_exists(built, tiny_cache):
    from helpers import compose_conf

    from bayling_duplex.cli.data import RenderError, render_record

    _, out, _ = built

    def conf(*overrides: str):
        return compose_conf("render", [f"source={out}", f"cache_dir={tiny_cache}", *overrides])

    with pytest.raises(RenderError, match=r"split='nope'.*'train', 'heldout'"):
        render_record(conf("split=nope"))
    ids = load_split(out, "train")["id"]
    with pytest.raises(RenderError, match=rf"record='nope' is not in.*{ids[0]!r}"):
        render_record(conf("record=nope"))
    with pytest.raises(RenderError, match=r"index=999 is out of range.*60 record"):
        render_record(conf("index=999"))
    assert render_record(conf(f"record={ids[3]}")).startswith(f"{ids[3]}  (10:5:10")
