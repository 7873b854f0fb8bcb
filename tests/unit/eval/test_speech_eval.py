"""Evaluation dialogues of the real-speech default: held-out voices, audio kept, trimmed variant."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig
from bayling_duplex.data.load import recipe_from_file
from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_sets
from bayling_duplex.eval.metrics import DialogueOutcome
from bayling_duplex.eval.runner import backchannel_check, no_marker_check
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.spec import FormatSpec


@pytest.fixture(scope="module")
def setup():
    from bayling_duplex.data.speech_demo import fitting_audio

    recipe = recipe_from_file("speech_demo")
    codec = UnitCodec.fit(fitting_audio(recipe, 60.0), UnitCodecConfig(num_codes=32, iters=8))
    spec = FormatSpec(BlockLayout(10, 5), codec.silence_codes)
    cfg = EvalSetConfig(source="auto", turn_taking=4, interruption=3, backchannel=3, hesitation=3)
    return recipe, codec, spec, cfg


def tokenize(texts):
    return [[5] * max(1, len(t) // 5) for t in texts]


def test_speech_sets_keep_the_audio_and_code_it_whole(setup) -> None:
    recipe, codec, spec, cfg = setup
    sets = build_eval_sets(cfg, spec, tokenize, codec=codec, recipe=recipe)
    assert sets.audio is not None and len(sets.audio) == len(sets.items) == 13
    for (item, codes), wav in zip(sets.items, sets.audio, strict=True):
        assert len(wav) == item.num_frames * 1280 and item.num_frames % 10 == 0
        assert list(codes) == list(codec.encode(wav))  # the channel as heard, coded whole
        assert len(item.answer_s) == len(item.turns) and all(a > 0 for a in item.answer_s)
        if item.scenario == "hesitation":
            start, end = item.pause
            turn_start, turn_end = item.turns[0]
            assert turn_start < start < end < turn_end
    keys = [item.answer_keys[0] for item, _ in sets.items]
    assert all(isinstance(k, str) and k for k in keys)


def test_the_trimmed_variant_removes_only_the_last_frame_of_speech(setup) -> None:
    recipe, codec, spec, cfg = setup
    full = build_eval_sets(cfg, spec, tokenize, codec=codec, recipe=recipe, only=("turn_taking",))
    cut = build_eval_sets(
        cfg, spec, tokenize, codec=codec, recipe=recipe, trim_end_frames=1, only=("turn_taking",)
    )
    assert [i.id for i, _ in full.items] == [i.id for i, _ in cut.items]
    assert {i.scenario for i, _ in full.items} <= {"turn_taking"}
    for (a, _), (b, _), wa, wb in zip(full.items, cut.items, full.audio, cut.audio, strict=True):
        assert a.turns == b.turns  # judged against the same turn end
        start, end = a.turns[0]
        before = slice(start * 1280, (end - 1) * 1280)
        np.testing.assert_array_equal(wa[before], wb[before])
        last = slice((end - 1) * 1280, end * 1280)
        assert np.abs(wa[last] - wb[last]).max() > 0  # the last frame's speech is gone …
        np.testing.assert_array_equal(wa[end * 1280 :], wb[end * 1280 :])  # … the noise is not


def test_no_marker_check_pairs_the_same_dialogues() -> None:
    def outs(taken):
        return [DialogueOutcome(f"d{i}", "turn_taking", taken=t) for i, t in enumerate(taken)]

    same = no_marker_check(outs(["success"] * 10), outs(["success"] * 10))
    assert same["passed"] and same["loss_points"] == 0.0 and same["dialogues"] == 10
    lost = no_marker_check(outs(["success"] * 10), outs(["none"] * 10))
    assert not lost["passed"] and lost["loss_points"] == 100.0
    assert lost["difference_interval95"] == [-1.0, -1.0]


def test_the_variant_without_backchannels_changes_only_the_backchannel(setup) -> None:
    recipe, codec, spec, cfg = setup
    full = build_eval_sets(cfg, spec, tokenize, codec=codec, recipe=recipe, only=("backchannel",))
    quiet = build_eval_sets(
        cfg, spec, tokenize, codec=codec, recipe=recipe, drop_backchannels=True,
        only=("backchannel",),
    )  # fmt: skip
    assert [i for i, _ in full.items] == [i for i, _ in quiet.items]  # the same timelines
    judged = 0
    for (a, _), wa, wb in zip(full.items, full.audio, quiet.audio, strict=True):
        if a.backchannel is None:
            continue
        judged += 1
        s, e = a.backchannel
        np.testing.assert_array_equal(wa[: s * 1280], wb[: s * 1280])  # same until its onset
        assert np.abs(wa[s * 1280 : e * 1280] - wb[s * 1280 : e * 1280]).max() > 0.01
        np.testing.assert_array_equal(wa[(e + 1) * 1280 :], wb[(e + 1) * 1280 :])  # noise kept
    assert judged > 0


def _bc(i, kept, end_s, onset=30):
    item = {"backchannel": [onset, onset + 5]}
    responses = [[1.6, end_s, "x"]]
    return DialogueOutcome(f"b{i}", "backchannel", backchannel_kept=kept,
                           extra={"item": item, "responses": responses})  # fmt: skip


def test_the_backchannel_check_blames_only_the_stops_the_backchannel_caused() -> None:
    built = [_bc(0, True, None), _bc(1, False, 3.2), _bc(2, False, 3.2), _bc(3, False, 2.8),
             _bc(4, None, 2.0)]  # fmt: skip
    without = [
        _bc(0, True, None),
        _bc(1, False, 3.2),  # ends there anyway: natural
        _bc(2, True, 4.0),  # plays on without it: cut by it
        _bc(3, True, 1.9),
    ]  # nothing playing at the onset without it: undecided
    c = backchannel_check(built, without, 0.08)
    assert c["dialogues"] == 4 and c["robustness_as_judged"] == 0.25
    assert (c["natural_ends"], c["cut_by_backchannel"], c["differ_before_onset"]) == (1, 1, 1)
    assert c["robustness_causal"] == 0.5 and c["not_kept"] == 3


def test_the_hesitation_set_cannot_be_passed_by_counting_frames(setup) -> None:
    """With lead-ins (the recipe's default), how long the user spoke before a silence no
    longer tells a pause from a turn's end: a length-only rule that answers 90 % of turn
    ends answers in many pauses too. Without them it kept 99 % of the pauses."""
    from dataclasses import replace

    from bayling_duplex.eval.metrics import length_cue

    recipe, codec, spec, _ = setup
    cfg = EvalSetConfig(source="speech_demo", turn_taking=20, interruption=0, backchannel=0,
                        hesitation=40)  # fmt: skip

    def cue(prob: float) -> dict:
        r = replace(recipe, speech=replace(recipe.speech, preamble_prob=prob))
        sets = build_eval_sets(cfg, spec, tokenize, codec=codec, recipe=r)
        return length_cue([it for it, _ in sets.items], resamples=200)

    with_leads, without = cue(recipe.speech.preamble_prob), cue(0.0)
    assert with_leads["pauses"] == without["pauses"] == 40
    assert without["pauses_kept"] >= 0.9  # the cue the lead-ins remove
    assert with_leads["pauses_kept"] <= 0.8
    assert with_leads["auc"] < without["auc"]


@pytest.mark.parametrize("voice_split", ["heldout", "train"])
def test_voice_split_chooses_whose_voices_speak(setup, voice_split) -> None:
    from dataclasses import replace

    from bayling_duplex.eval.dialogues import _SpeechDialogues

    recipe, codec, _, cfg = setup
    src = _SpeechDialogues(replace(cfg, voice_split=voice_split), codec, recipe)
    names = recipe.speech.voices if voice_split == "train" else recipe.speech.heldout_voices
    for i in range(6):
        src.script(f"v{i}", [0])
        assert src.speech.voices[f"v{i}"].name in names


def test_a_wrong_voice_split_is_refused_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"evalset\.voice_split"):
        EvalSetConfig(voice_split="dev")
