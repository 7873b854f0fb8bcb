"""The audio tokenizing command: manifests → Script/Timeline JSONL, resume, bad files, silence pattern.

Runs ``python -m bayling_duplex.speech`` in-process on short WAV files written
here, with a tiny random tokenizer of GLM-4-Voice's structure.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from speech_helpers import SR, one_torch_thread, save_tiny_tokenizer, voice, write_wav

from bayling_duplex.audio.codec import GlmSpeechCodec, silence_pattern
from bayling_duplex.audio.manifest import WordSpan, word_ends
from bayling_duplex.audio.tokenize import resume_jsonl
from bayling_duplex.cli.speech import main
from bayling_duplex.format.records import script_from_json, timeline_from_json
from bayling_duplex.format.spec import FormatConfig


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return save_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def codec(tok_dir) -> GlmSpeechCodec:
    return GlmSpeechCodec.load(tok_dir, device="cpu")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def tokenize(manifest: Path, out: Path, tok: Path, *extra: str) -> int:
    args = ["tokenize", "--manifest", str(manifest), "--out", str(out), "--tokenizer", str(tok)]
    args += ["--device", "cpu", "--no-progress", "--chunk", "2", "--silence-seconds", "4"]
    return main([*args, *extra])


# --------------------------------------------------------------------------- silence


def test_silence_pattern_is_the_period_phased_by_absolute_frame() -> None:
    pattern = (5, 6, 7)
    codes = [30, 31] + [pattern[f % 3] for f in range(2, 40)] + [29]  # edges differ
    found = silence_pattern(codes)
    assert found.codes == pattern and found.agreement == 1.0 and found.measured_frames == 38
    noisy = list(codes)
    noisy[20] = 11  # one stray code: same period, agreement below 1
    found = silence_pattern(noisy)
    assert found.codes == pattern and 0.9 < found.agreement < 1.0
    assert silence_pattern([4] * 20).codes == (4,)
    with pytest.raises(ValueError, match="fewer than 2"):
        silence_pattern([1, 2, 3])


def test_codec_measures_the_tokenizers_silence(tmp_path: Path) -> None:
    codec = GlmSpeechCodec.load(save_tiny_tokenizer(tmp_path, zero_positions=True), "cpu")
    assert codec.samples_per_frame == 1280 and codec.frame_rate_hz == 12.5
    measured = codec.measure_silence(10.0)
    assert len(measured.codes) == 1 and measured.agreement == 1.0
    zeros = codec.encode(np.zeros(40 * 1280, dtype=np.float32))
    assert zeros[5:-1] == measured.codes * (len(zeros) - 6)
    assert codec.silence_codes == measured.codes


def test_silence_command_writes_the_file_the_recipe_reads(tok_dir, codec, tmp_path) -> None:
    out = tmp_path / "silence_codes.json"
    assert main(["silence", "--tokenizer", str(tok_dir), "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    assert data["silence_codes"] == list(codec.silence_codes)  # 30 s, as the command
    assert data["codec"] == "glm4voice-12.5hz" and 0 < data["agreement"] <= 1
    fmt = FormatConfig(silence_codes=[], silence_codes_file=str(out))
    fmt.resolve()
    assert fmt.silence_codes == data["silence_codes"]


# --------------------------------------------------------------------------- scripts


def test_word_ends_are_frame_boundaries_in_the_gaps_between_words() -> None:
    words = (WordSpan(0.0, 0.30, "what"), WordSpan(0.50, 0.70, "time"), WordSpan(0.72, 1.1, "is"))
    # gaps' middles at 0.40 s and 0.71 s → frames 5 and 9 (of 14); the clip's end is not one
    assert word_ends(words, 14, 12.5) == (5, 9)
    assert word_ends(words, 8, 12.5) == (5,)  # past the clip's codes: dropped


@pytest.fixture()
def corpus(tmp_path: Path) -> dict:
    """Two good dialogues, one corrupt file, one missing file, bad lines; the manifest and paths."""
    wav = tmp_path / "wav"
    write_wav(wav / "u0.wav", voice(1.0, 0))
    write_wav(wav / "a0.wav", voice(1.5, 1))
    write_wav(wav / "u1.wav", voice(0.7, 2))
    write_wav(wav / "a1.wav", voice(2.2, 3))
    # another rate and two channels: read as a 16 kHz mono downmix
    stereo = np.stack([voice(1.2, 4, 22_050), voice(1.2, 5, 22_050)], axis=1)
    write_wav(wav / "u2.wav", stereo, 22_050)
    (wav / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    words = [
        {"word": "what", "start_s": 0.05, "end_s": 0.3},
        {"word": "time", "start_s": 0.5, "end_s": 0.9},
    ]
    rows = [
        {
            "id": "dlg-0",
            "turns": [
                {
                    "user_audio": "wav/u0.wav",
                    "user_text": "What time is it?",
                    "assistant_text": "Nine.",
                    "assistant_audio": "wav/a0.wav",
                    "user_words": words,
                },
                {
                    "user_audio": "wav/u2.wav",
                    "assistant_text": "Ok.",
                    "assistant_audio": "wav/a1.wav",
                },
            ],
        },
        {
            "id": "dlg-broken",
            "turns": [
                {
                    "user_audio": "wav/broken.wav",
                    "assistant_text": "x",
                    "assistant_audio": "wav/a0.wav",
                }
            ],
        },
        {
            "id": "dlg-missing",
            "turns": [
                {
                    "user_audio": "wav/nope.wav",
                    "assistant_text": "x",
                    "assistant_audio": "wav/a0.wav",
                }
            ],
        },
        '{"id": "dlg-cut", "turns": [',
        {
            "id": "dlg-notext",
            "turns": [{"user_audio": "wav/u1.wav", "assistant_audio": "wav/a1.wav"}],
        },
        {
            "id": "dlg-1",
            "turns": [
                {
                    "user_audio": "wav/u1.wav",
                    "assistant_text": "Hello.",
                    "assistant_audio": "wav/a1.wav",
                }
            ],
        },
        {
            "id": "dlg-1",
            "turns": [
                {
                    "user_audio": "wav/u0.wav",
                    "assistant_text": "Hi.",
                    "assistant_audio": "wav/a0.wav",
                }
            ],
        },
    ]
    return {"manifest": write_manifest(tmp_path / "manifest.jsonl", rows), "wav": wav}


def test_tokenize_scripts_reports_bad_files_and_writes_the_rest(
    corpus, tok_dir, codec, tmp_path, capsys
) -> None:
    out = tmp_path / "data" / "dialogues.scripts.jsonl"
    assert tokenize(corpus["manifest"], out, tok_dir) == 0
    printed = capsys.readouterr()
    assert "7 records: 2 written, 0 already in" in printed.out
    assert "5 failed" in printed.out

    records = {o["id"]: o for o in lines(out)}
    assert list(records) == ["dlg-0", "dlg-1"]
    script = script_from_json(records["dlg-0"])
    wav = corpus["wav"]
    t0, t1 = script.turns
    assert t0.user_codes == codec.encode(codec.load_audio(wav / "u0.wav"))
    assert t0.assistant_codes == codec.encode(codec.load_audio(wav / "a0.wav"))
    assert len(t0.user_codes) == 13 and len(t0.assistant_codes) == 19  # ceil(samples / 1280)
    assert t1.user_codes == codec.encode(codec.load_audio(wav / "u2.wav"))  # 22.05 kHz stereo
    assert t0.user_text == "What time is it?" and t0.assistant_text == "Nine."
    assert t0.user_word_ends == (5,)  # from the alignment: the gap 0.3–0.5 s
    assert t1.user_word_ends == () and "user_word_ends" not in records["dlg-0"]["turns"][1]
    # the clips stay referenced for waveform-level synthesis
    assert records["dlg-0"]["turns"][0]["user_audio"] == str((wav / "u0.wav").resolve())

    errors = {
        (e["id"], e["reason"]) for e in lines(out.with_name("dialogues.scripts.errors.jsonl"))
    }
    assert errors == {
        ("dlg-broken", "unreadable_audio"),
        ("dlg-missing", "missing_file"),
        ("line 4", "bad_json"),
        ("dlg-notext", "missing_field"),
        ("dlg-1", "duplicate_id"),
    }
    assert "skipped dlg-missing: missing_file" in printed.out + printed.err
    silence = json.loads((out.parent / "silence_codes.json").read_text())
    assert silence["silence_codes"] == list(codec.measure_silence(4).codes)


def test_tokenize_resumes_drops_a_half_line_and_retries_fixed_files(
    corpus, tok_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "out.jsonl"
    tokenize(corpus["manifest"], out, tok_dir)
    first = out.read_text()
    with out.open("a") as f:  # a crash in the middle of a line
        f.write('{"id":"dlg-broken","turns":[{"user_codes":[1,2')
    assert resume_jsonl(out) == {"dlg-0", "dlg-1"}
    assert out.read_text() == first  # the half line is gone
    with out.open("a") as f:
        f.write('{"id":"dlg-broken","turns":[{"user_codes":[1,2')
    write_wav(corpus["wav"] / "broken.wav", voice(0.5, 9))  # the file is fixed
    capsys.readouterr()
    assert tokenize(corpus["manifest"], out, tok_dir) == 0
    assert "2 already in" in capsys.readouterr().out
    ids = [o["id"] for o in lines(out)]  # every line parses
    assert ids == ["dlg-0", "dlg-1", "dlg-broken"]
    assert out.read_text().startswith(first)
    # a third run has nothing to do
    assert tokenize(corpus["manifest"], out, tok_dir) == 0
    assert [o["id"] for o in lines(out)] == ids


def test_tokenize_refuses_data_of_another_tokenizer(corpus, tok_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    (tmp_path / "silence_codes.json").write_text(json.dumps({"silence_codes": [999]}))
    assert tokenize(corpus["manifest"], out, tok_dir) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- timelines


def test_tokenize_two_channel_recordings_into_timelines(tok_dir, codec, tmp_path) -> None:
    user, agent = voice(6.0, 1), voice(6.0, 2)
    user[: 2 * SR] = 0.0
    write_wav(tmp_path / "call.wav", np.stack([user, agent], axis=1))
    write_wav(tmp_path / "u.wav", user[: 5 * SR])  # one file per side, different lengths
    write_wav(tmp_path / "a.wav", agent)
    timing = {
        "user_segments": [{"start_s": 2.0, "end_s": 3.0, "kind": "turn", "text": "Hi"}],
        "responses": [
            {"start_s": 3.2, "end_s": 4.5, "text": "Hello there.", "interrupted": False},
            {"start_s": 4.62, "end_s": 5.97, "text": "More.", "interrupted": True},
        ],
    }
    rows = [
        {"id": "call", "audio": "call.wav", "user_channel": 0, "assistant_channel": 1, **timing},
        {"id": "split", "user_audio": "u.wav", "assistant_audio": "a.wav", **timing},
        {
            "id": "late",
            "audio": "call.wav",
            "user_channel": 0,
            "assistant_channel": 1,
            "user_segments": [],
            "responses": [{"start_s": 7.0, "end_s": 8.0, "text": "x"}],
        },
        {
            "id": "chan",
            "audio": "call.wav",
            "user_channel": 0,
            "assistant_channel": 2,
            "user_segments": [],
            "responses": [],
        },
    ]
    out = tmp_path / "calls.timelines.jsonl"
    assert (
        tokenize(
            write_manifest(tmp_path / "calls.jsonl", rows), out, tok_dir, "--kind", "timelines"
        )
        == 0
    )

    got = {o["id"]: timeline_from_json(o) for o in lines(out)}
    assert set(got) == {"call", "split"}
    t = got["call"]
    user_codes = codec.encode(codec.load_audio(tmp_path / "call.wav", channel=0))
    agent_codes = codec.encode(codec.load_audio(tmp_path / "call.wav", channel=1))
    assert t.num_frames == 75 and t.user_codes == user_codes
    assert [(s.start_frame, s.end_frame, s.text) for s in t.user_segments] == [(25, 38, "Hi")]
    # seconds → frames outward: floor(3.2·12.5)=40, ceil(4.5·12.5)=57; floor(57.75)=57, ceil(74.6)=75
    assert [(r.start_frame, r.end_frame, r.interrupted) for r in t.responses] == [
        (40, 57, False),
        (57, 75, True),
    ]
    assert t.responses[0].codes == agent_codes[40:57]
    # separate files: the shorter side is padded to the longer one
    assert got["split"].num_frames == 75
    errors = {(e["id"], e["reason"]) for e in lines(tmp_path / "calls.timelines.errors.jsonl")}
    assert errors == {("late", "bad_timing"), ("chan", "unreadable_audio")}
    assert math.isclose(codec.frame_rate_hz, 12.5)


def test_shards_split_the_manifest_between_processes(tmp_path: Path) -> None:
    from bayling_duplex.audio.tokenize import _chunks

    rows = [
        {
            "id": f"d{i}",
            "turns": [{"user_audio": "u.wav", "assistant_text": "a", "assistant_audio": "a.wav"}],
        }
        for i in range(7)
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)

    def ids(shard):
        return [e.id for c in _chunks(manifest, tmp_path, "scripts", 2, shard) for e in c]

    assert ids((0, 1)) == [f"d{i}" for i in range(7)]
    assert ids((0, 3)) == ["d0", "d3", "d6"] and ids((2, 3)) == ["d2", "d5"]
    assert sorted(ids((0, 2)) + ids((1, 2))) == sorted(ids((0, 1)))


def test_sigterm_stops_between_two_lines_and_a_rerun_goes_on(
    corpus, tok_dir, tmp_path, monkeypatch, capsys
) -> None:
    real = GlmSpeechCodec.encode_many
    calls = []

    def encode_then_sigterm(self, wavs):
        out = real(self, wavs)
        calls.append(len(wavs))
        if len(calls) == 3:  # silence, chunk 1 (written), chunk 3: preempted by Slurm
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    out = tmp_path / "out.jsonl"
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(GlmSpeechCodec, "encode_many", encode_then_sigterm)
        assert tokenize(corpus["manifest"], out, tok_dir) == 130
    assert "interrupted" in capsys.readouterr().out
    assert [o["id"] for o in lines(out)] == ["dlg-0"]
    assert out.read_bytes().endswith(b"\n")
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    assert tokenize(corpus["manifest"], out, tok_dir) == 0
    assert [o["id"] for o in lines(out)] == ["dlg-0", "dlg-1"]
