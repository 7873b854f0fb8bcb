"""The listening files and the HTML page: stereo WAVs in the right order, the assistant
rendered at its decoded onsets and cut where it stopped, a page that escapes what it shows."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import soundfile as sf

from bayling_duplex.eval.listen import render_assistant, stereo_wav, write_listening
from bayling_duplex.eval.metrics import DialogueOutcome, EvalItem, summarize
from bayling_duplex.eval.report import CODES_LABEL, STEREO_LABEL, write_html

SR = 16000


def ones(text: str) -> np.ndarray:
    return np.ones(SR, dtype=np.float32)  # one second of "speech" per response


def test_stereo_wav_is_left_user_right_assistant_padded_and_limited(tmp_path):
    user = np.full(100, 0.5)
    assistant = np.full(60, -2.0)  # would clip: both channels scale by 0.99 / 2
    stereo_wav(tmp_path / "d.wav", user, assistant, SR)
    data, sr = sf.read(tmp_path / "d.wav")
    info = sf.info(tmp_path / "d.wav")
    assert (sr, info.channels, info.subtype, data.shape) == (SR, 2, "PCM_16", (100, 2))
    assert np.abs(data).max() <= 0.99 + 1e-4
    np.testing.assert_allclose(data[:, 0], 0.5 * 0.99 / 2, atol=1e-4)  # same factor on both
    np.testing.assert_allclose(data[:60, 1], -0.99, atol=1e-4)
    assert not data[60:, 1].any()  # the shorter channel is zero-padded
    assert [p.name for p in tmp_path.iterdir()] == ["d.wav"]  # no temporary left behind


def test_stereo_wav_keeps_quiet_audio_as_is(tmp_path):
    stereo_wav(tmp_path / "q.wav", np.zeros(10), np.full(20, 0.25), SR)
    data, _ = sf.read(tmp_path / "q.wav")
    assert data.shape == (20, 2) and not data[:, 0].any()
    np.testing.assert_allclose(data[:, 1], 0.25, atol=1e-4)


def test_render_assistant_places_at_onsets_and_cuts_at_epad():
    responses = [
        [0.5, 2.0, "a full answer"],  # speech (1 s) ends before its EPAD: not cut
        [3.0, 3.25, "cut short"],  # EPAD after 0.25 s: cut, with a fade
        [4.0, 4.5, ""],  # no text: nothing to say
        [5.5, None, "runs off the end"],  # no EPAD: cut by the dialogue's end
    ]
    out = render_assistant(responses, 6 * SR, ones, SR, fade_ms=10)
    assert out.dtype == np.float32 and out.shape == (6 * SR,)
    nz = np.flatnonzero(out)
    runs = np.split(nz, np.flatnonzero(np.diff(nz) > 1) + 1)
    assert [(int(r[0]), int(r[-1]) + 1) for r in runs] == [
        (8000, 24000),
        (48000, 52000),
        (88000, 96000),
    ]
    assert np.all(out[8000:24000] == 1)  # a natural end is not faded
    fade = out[52000 - 160 : 52000]
    assert fade[0] == 1 and np.all(np.diff(fade) < 0) and 0 < fade[-1] < 0.01
    assert np.all(out[48000 : 52000 - 160] == 1)


def test_render_assistant_gives_one_voice_when_responses_overlap():
    out = render_assistant([[0.0, None, "first"], [0.5, 0.75, "second"]], SR, ones, SR)
    assert np.all(out[: 8000 - 160] == 1) and np.all(out[8000 : 12000 - 160] == 1)
    assert not out[12000:].any()


def _items(n_per: int = 3):
    items, outcomes = [], []
    for scenario in ("turn_taking", "interruption", "backchannel", "hesitation"):
        for k in range(n_per):
            item = EvalItem(f"{scenario}-{k}", scenario, 25, ((0, 10),))
            items.append((item, np.full(SR, 0.1, dtype=np.float32)))
            outcomes.append(
                DialogueOutcome(
                    item.id,
                    scenario,
                    onset_s=1.0,
                    turn_end_s=0.8,
                    latency_s=0.2,
                    taken="success",
                    extra={"responses": [[0.25, 0.5, "hi"]]},
                )
            )
    return items, outcomes


def test_write_listening_picks_each_scenario_and_writes_the_files(tmp_path):
    items, outcomes = _items()
    asked = []

    def codes_audio(i: int) -> np.ndarray:
        asked.append(i)
        return np.full(SR // 2, 0.2, dtype=np.float32)

    def half(text: str) -> np.ndarray:
        return np.full(SR, 0.5, dtype=np.float32)  # quiet enough not to be limited

    got = write_listening(tmp_path, items, outcomes, half, codes_audio, n=6)
    assert [d["id"] for d in got] == [
        "turn_taking-0",
        "interruption-0",
        "backchannel-0",
        "hesitation-0",
        "turn_taking-1",
        "interruption-1",
    ]
    assert asked == [d["index"] for d in got] == [0, 3, 6, 9, 1, 4]
    d = got[0]
    assert (d["scenario"], d["wav"], d["codes_wav"]) == (
        "turn_taking",
        "audio/turn_taking-0.wav",
        "audio/turn_taking-0.codes.wav",
    )
    assert d["verdict"] == "taken: success, latency 0.20 s"
    assert d["responses"] == [[0.25, 0.5, "hi"]]
    stereo, _ = sf.read(tmp_path / d["wav"])
    assert stereo.shape == (SR, 2)
    np.testing.assert_allclose(stereo[:, 0], 0.1, atol=1e-4)
    np.testing.assert_allclose(stereo[4000 : 8000 - 160, 1], 0.5, atol=1e-4)  # "hi" 0.25–0.5 s
    assert not stereo[8000:, 1].any() and not stereo[:4000, 1].any()
    assert sf.info(tmp_path / d["codes_wav"]).channels == 1
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == sorted(
        name for d in got for name in (d["wav"][6:], d["codes_wav"][6:])
    )


def test_write_listening_without_codes_and_with_odd_ids(tmp_path):
    item = EvalItem("a/b <c>", "turn_taking", 25, ((0, 10),))
    twin = EvalItem("a/b [c]", "turn_taking", 25, ((0, 10),))  # the same safe name
    out = [DialogueOutcome(item.id, "turn_taking"), DialogueOutcome(twin.id, "turn_taking")]
    wav = np.zeros(SR, dtype=np.float32)
    got = write_listening(tmp_path, [(item, wav), (twin, wav)], out, ones)
    assert [d["wav"] for d in got] == ["audio/a_b__c_.wav", "audio/a_b__c_-2.wav"]
    assert all(d["codes_wav"] is None for d in got)
    assert got[0]["verdict"] == "taken: none"
    with pytest.raises(ValueError, match="outcome 0"):
        write_listening(tmp_path, [(item, wav)], [DialogueOutcome("other", "turn_taking")], ones)


def _summary():
    outs = [
        DialogueOutcome("t1", "turn_taking", 1.0, 0.5, 0.5, "success", correct=True),
        DialogueOutcome("t2", "turn_taking", 2.0, 0.5, 1.5, "success", correct=False),
        DialogueOutcome("t3", "turn_taking", taken="none"),
        DialogueOutcome("t4", "turn_taking", 0.1, 0.5, -0.4, "early"),
    ]
    return summarize(outs)


SETS = {
    "turn_taking": {
        "requested": 4,
        "built": 4,
        "relabelled": 0,
        "excluded": 0,
        "judged": 5,
        "relabelled_to": {},
        "relabelled_from": {"interruption": 1},
        "relabel_reasons": {},
        "excluded_reasons": {},
    },
    "interruption": {
        "requested": 2,
        "built": 1,
        "relabelled": 1,
        "excluded": 0,
        "judged": 1,
        "relabelled_to": {"turn_taking": 1},
        "relabelled_from": {},
        "relabel_reasons": {"the point falls in the answer's last block": 1},
        "excluded_reasons": {},
    },
}


def test_write_html_shows_the_table_sets_plots_and_players(tmp_path):
    (tmp_path / "timelines.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "latency.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "x.wav").write_bytes(b"RIFF")
    (tmp_path / "audio" / "x.codes.wav").write_bytes(b"RIFF")
    listening = [
        {
            "id": "<x&y>",
            "scenario": "turn_taking",
            "wav": "audio/x.wav",
            "codes_wav": "audio/x.codes.wav",
            "verdict": "taken: success, latency 0.50 s",
            "responses": [[1.0, 2.5, "it's <b>bold</b>"], [3.0, None, "more"]],
        },
        {"id": "gone", "scenario": "hesitation", "wav": "audio/gone.wav", "verdict": "x"},
    ]
    s = _summary()
    s.pop("hesitation_false_ends", None)  # a summary from before false ends were counted
    page = write_html(tmp_path, {"model": s, "<base>": {}}, SETS, listening).read_text()
    assert page.startswith("<!doctype html>") and "<title>Behaviour evaluation</title>" in page
    header = re.search(r"<thead><tr><th>metric</th>(.*?)</tr></thead>", page).group(1)
    assert header == "<th>model</th><th>&lt;base&gt;</th>"
    row = re.search(r'<tr><th scope="row">SR@3s</th>(.*?)</tr>', page).group(1)
    assert row == (
        '<td>50.0 %<span class="ci"> [0.0, 100.0]</span><span class="n"> (n=4)</span></td>'
        "<td>–</td>"
    )
    for label, value in (
        ("early start", "25.0 %"),
        ("no response", "25.0 %"),
        ("mean latency", "1.00 s"),
        ("answer accuracy", "50.0 %"),
        ("ISR@2s", "–"),
        ("mean overlap", "–"),
    ):
        assert re.search(rf'<th scope="row">{label}</th><td>{value}[<]', page), label
    assert "hesitation false ends" not in page  # in neither summary
    assert "+1 from interruption" in page and "1 → turn_taking" in page
    assert "the point falls in the answer&#x27;s last block" in page
    assert '<img src="timelines.png" alt="' in page and '<img src="latency.png" alt="' in page
    assert "&lt;x&amp;y&gt;" in page and "<x&y>" not in page
    assert "it&#x27;s &lt;b&gt;bold&lt;/b&gt;" in page and "no [EPAD]" in page
    srcs = re.findall(r'<audio controls preload="metadata" src="([^"]+)"></audio>', page)
    assert srcs == ["audio/x.wav", "audio/x.codes.wav"]
    assert all((tmp_path / src).is_file() for src in srcs)
    assert html.escape(STEREO_LABEL) in page and html.escape(CODES_LABEL) in page
    assert "audio/gone.wav is missing" in page


def test_write_html_shows_false_ends_where_a_summary_has_them(tmp_path):
    s = {**_summary(), "hesitation_false_ends": {"total": 3, "per_dialogue": 0.75, "n": 4}}
    s["denominators"] = {**s["denominators"], "hesitation_false_ends": {"n": 4, "over": "…"}}
    old = {k: v for k, v in s.items() if k != "hesitation_false_ends"}
    page = write_html(tmp_path, {"m": s, "old": old}, images=()).read_text()
    row = re.search(r'<th scope="row">hesitation false ends</th>(.*?)</tr>', page).group(1)
    assert row == '<td>0.75 per dialogue<span class="n"> (n=4)</span></td><td>–</td>'
    assert "<h2>Evaluation sets</h2>" not in page and "<h2>Listen</h2>" not in page
