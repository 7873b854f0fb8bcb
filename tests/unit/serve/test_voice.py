"""What the assistant sounds like, block by block: speech from the first finished word
after the onset, queued behind what plays, cut at [EPAD]; the vocoder hook's share."""

from __future__ import annotations

import numpy as np

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.serve.voice import (
    EPAD,
    ONSET,
    PAD,
    SILENCE,
    TEXT,
    CodeVoice,
    NoVoice,
    Slot,
    TextVoice,
)

L = BlockLayout()
SLOT = 2560  # samples per slot at 16 kHz


def fake_say(text: str) -> np.ndarray:
    """0.1 s of a constant per word: what was said can be read back from the samples."""
    return np.concatenate([np.full(1600, 0.1 * len(w), np.float32) for w in text.split()])


def words_in(x: np.ndarray) -> list[float]:
    out, prev = [], 0.0
    for v in (round(float(y), 3) for y in x[::1600]):
        if v and v != prev:
            out.append(v)
        prev = v
    return out


def test_speech_starts_with_the_first_finished_word_and_is_cut_at_epad():
    v = TextVoice(fake_say, L)
    quiet = [Slot(SILENCE)] * 5
    assert not v.render(quiet, []).any()
    # onset in slot 1; "Hi" is finished by the " there" of slot 3
    b0 = v.render(
        [Slot(SILENCE), Slot(ONSET), Slot(TEXT, "Hi"), Slot(TEXT, " there"), Slot(TEXT, ",")], []
    )
    assert not b0[: 3 * SLOT].any() and b0[3 * SLOT] == np.float32(0.2)
    assert words_in(b0) == [0.2, 0.6]  # "Hi", then "there," (finished by the comma)
    b1 = v.render([Slot(TEXT, " friend"), Slot(PAD), Slot(PAD), Slot(EPAD), Slot(SILENCE)], [])
    assert words_in(b1[: 3 * SLOT]) == [0.6]  # "friend" said once the text was done ([PAD])
    assert not b1[3 * SLOT :].any()  # [EPAD] cut it
    assert not v.render(quiet, []).any()


def test_epad_drops_what_was_not_said():
    v = TextVoice(lambda t: np.full(20 * 1600, 0.3, np.float32), L, fade_ms=10)
    out = v.render([Slot(ONSET), Slot(TEXT, "long"), Slot(PAD), Slot(EPAD), Slot(SILENCE)], [])
    assert out[2 * SLOT : 3 * SLOT - 160].min() == np.float32(0.3)
    assert 0 < out[3 * SLOT - 1] < 0.3  # faded, not clicked
    assert not out[3 * SLOT :].any() and not v.queue
    assert not v.render([Slot(TEXT, " more")] * 5, []).any()  # text outside a response: silent


def test_code_voice_keeps_its_block_share_and_context():
    calls = []

    def render(codes):
        calls.append(list(codes))
        return np.repeat(np.asarray(codes, np.float32), 1764), 22050  # 80 ms per code

    v = CodeVoice(render, L, context_blocks=1)
    a = v.render([], list(range(10)))
    b = v.render([], list(range(10, 20)))
    assert calls == [list(range(10)), list(range(20))]
    assert a.shape == b.shape == (12800,)
    assert abs(float(b[6400]) - 15) < 1.0  # the second block's own codes, resampled
    assert NoVoice().render([], []) is None


def test_punctuation_and_refused_texts_cost_only_their_words():
    said = []

    def picky(text):
        if "bad" in text:
            raise ValueError("eSpeak NG spoke nothing")
        said.append(text)
        return fake_say(text)

    v = TextVoice(picky, L)
    v.render([Slot(ONSET), Slot(TEXT, "."), Slot(TEXT, " bad"), Slot(TEXT, " good"), Slot(PAD)], [])
    assert said == ["good"]
