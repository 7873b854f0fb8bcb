"""The shared batch of the live server: dialogues at different positions decoded together
give the greedy tokens each gets alone; leaving frees the cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from serve_helpers import talkative
from speech_helpers import one_torch_thread

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.decode.events import STOP_MAX_EPAD, Stop
from bayling_duplex.decode.shared import SharedBatch
from bayling_duplex.format.layout import BlockLayout

LAYOUT = BlockLayout()
B = LAYOUT.frames_per_block


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def setup(tiny_backbone):
    import copy

    model, _, vocab = tiny_backbone
    return talkative(copy.deepcopy(model), vocab), vocab


def _codes(seed: int, blocks: int, vocab) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab.num_audio, size=blocks * B)


def _run(batch: SharedBatch, dialogues, joins, rng) -> dict[int, list]:
    """Join dialogue ``i`` at step ``joins[i]``; each step a random subset of the joined
    ones decodes its next block; a finished dialogue leaves at once."""
    pos = [0] * len(dialogues)
    outs: dict[int, list] = {i: [] for i in range(len(dialogues))}
    step, finished = 0, set()
    while len(finished) < len(dialogues):
        for i, j in enumerate(joins):
            if j == step:
                batch.join(i)
        due = {
            i: dialogues[i][pos[i] * B : (pos[i] + 1) * B]
            for i in range(len(dialogues))
            if i in batch and rng.random() < 0.75
        }
        for i, out in batch.step(due).items():
            outs[i].append(out)
            pos[i] += 1
            if pos[i] * B == len(dialogues[i]) or out.stop_reason:
                batch.leave(i)
                finished.add(i)
        step += 1
    return outs


@pytest.mark.parametrize("max_epad", [0, 2])
def test_joining_at_different_blocks_gives_the_tokens_of_decoding_alone(setup, max_epad):
    model, vocab = setup
    dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=max_epad))
    dialogues = [_codes(20 + i, n, vocab) for i, n in enumerate((9, 6, 11, 4, 7))]
    alone = [dec.decode(d) for d in dialogues]
    outs = _run(SharedBatch(dec), dialogues, joins=[0, 1, 3, 3, 6], rng=np.random.default_rng(0))
    speaking = 0
    for i, result in enumerate(alone):
        text = [t for o in outs[i] for t in o.text_ids]
        codes = [c for o in outs[i] for c in o.codes]
        assert text == result.text_ids.tolist(), i
        assert codes == result.assistant_codes.tolist(), i
        events = [e for o in outs[i] for e in o.events]
        assert events == [
            e for e in result.events if not isinstance(e, Stop) or e.reason != "end_of_input"
        ]
        speaking += text.count(vocab.speak_id)
    assert speaking >= 2  # the model does answer: the test compares something
    if max_epad:
        assert any(o[-1].stop_reason == STOP_MAX_EPAD for o in outs.values())


def test_leaving_frees_the_cache_and_stopped_dialogues_are_refused(setup):
    model, vocab = setup
    batch = SharedBatch(DuplexDecoder(model, vocab, LAYOUT))
    assert batch.cache_bytes() == 0
    batch.join("a")
    batch.join("b")
    with pytest.raises(KeyError, match="already"):
        batch.join("a")
    for k in range(3):
        batch.step({"a": _codes(k, 1, vocab), "b": _codes(9 + k, 1, vocab)})
    held = batch.cache_bytes()
    assert held > 0 and batch.blocks_done("a") == 3
    batch.leave("a")
    assert 0 < batch.cache_bytes() < held
    batch.leave("b")
    assert batch.cache_bytes() == 0 and len(batch) == 0
    assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ  # set for its forwards only
    with pytest.raises(KeyError, match="not joined"):
        batch.step({"a": _codes(0, 1, vocab)})
    batch = SharedBatch(DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=1)))
    batch.join("c")
    with pytest.raises(ValueError, match="outside"):
        batch.step({"c": np.full(B, vocab.num_audio)})
    with pytest.raises(ValueError, match="a block is"):
        batch.step({"c": np.zeros(B - 1, dtype=np.int64)})
    for k in range(40):  # until its first [EPAD] stops it
        if batch.step({"c": _codes(50 + k, 1, vocab)})["c"].stop_reason:
            break
    with pytest.raises(ValueError, match="already stopped"):
        batch.step({"c": _codes(0, 1, vocab)})


def test_blocks_left_follows_the_model_positions(setup):
    model, vocab = setup
    batch = SharedBatch(DuplexDecoder(model, vocab, LAYOUT), max_tokens=3 * LAYOUT.block_len + 5)
    batch.join(0)
    assert batch.blocks_left(0) == 3
    for k in range(3):
        batch.step({0: _codes(k, 1, vocab)})
    assert batch.blocks_left(0) == 0
    with pytest.raises(ValueError, match="no room"):
        batch.step({0: _codes(5, 1, vocab)})
