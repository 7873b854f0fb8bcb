"""The hesitation-pause weight (train.loss_weights.pause_silence): which slots the collator
marks and how the loss weighs them (its use in the SFT stage: test_sft.py)."""

from __future__ import annotations

import json

import pytest
import torch

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.collate import DuplexCollator, mark_pause_slots, pause_blocks
from bayling_duplex.train.loss import TEXT_CHANNEL, LossWeights, channel_sums, weighted_mean

B, T = 10, 5
BLOCK = 2 * B + T
S, C, U, A = TokenClass.SILENCE_SLOT, TokenClass.CONTROL, TokenClass.USER_AUDIO, 5
P = TokenClass.PAUSE_SILENCE


def _classes(num_blocks: int, control_at: tuple[int, int] | None = None) -> torch.Tensor:
    """Classes of ``num_blocks`` blocks: U_k user audio, X_k silence slots, A_k silent audio;
    ``control_at=(k, j)`` puts a control token in slot j of block k."""
    block = [U] * B + [S] * T + [A] * B
    cls = torch.tensor(block * num_blocks, dtype=torch.int8)
    if control_at is not None:
        k, j = control_at
        cls[k * BLOCK + B + j] = C
    return cls


@pytest.mark.parametrize(
    ("pause", "blocks"),
    [((13, 27), [1, 2]), ((20, 21), [2]), ((19, 20), [1]), ((10, 20), [1]), ((5, 5), [])],
)
def test_pause_blocks_are_the_blocks_that_hear_the_pause(pause, blocks):
    assert pause_blocks([pause], B) == blocks


def test_only_the_silence_slots_of_those_blocks_are_marked():
    cls = _classes(4, control_at=(2, 3))
    before = cls.clone()
    out = mark_pause_slots(cls, [(13, 27)], B, T)
    assert torch.equal(cls, before)  # a copy
    for k in range(4):
        x = out[k * BLOCK + B : k * BLOCK + B + T].tolist()
        want = {1: [P] * T, 2: [P, P, P, C, P]}.get(k, [S] * T)
        assert x == want, k
        assert out[k * BLOCK : k * BLOCK + B].tolist() == [U] * B  # user audio untouched
        assert out[k * BLOCK + B + T : (k + 1) * BLOCK].tolist() == [A] * B
    # a pause past the sequence's last block marks nothing beyond it
    assert mark_pause_slots(cls, [(35, 60)], B, T)[3 * BLOCK + B].item() == P


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_collator_marks_from_meta_only_when_asked(pack):
    rows = [
        {
            "input_ids": [0] * 3 * BLOCK,
            "classes": _classes(3).tolist(),
            "meta": json.dumps({"num_frames": 30, "pauses": [[14, 18]]}),
        },
        {
            "input_ids": [0] * 2 * BLOCK,
            "classes": _classes(2).tolist(),
            "meta": json.dumps({"num_frames": 20, "pauses": []}),
        },
        {
            "input_ids": [0] * 2 * BLOCK,
            "classes": _classes(2).tolist(),
            "meta": json.dumps({"num_frames": 20}),
        },  # pauses not known
    ]
    off = DuplexCollator(pad_id=0, pack=pack, attention="position_ids")(rows)["classes"]
    on = DuplexCollator(pad_id=0, pack=pack, attention="position_ids", pause_layout=(B, T))(rows)[
        "classes"
    ]
    assert (off == P).sum() == 0
    assert (on == P).sum() == T  # block 1 of the first row, nothing else
    first = on[0, : BLOCK * 3] if pack else on[0]
    assert first[BLOCK + B : BLOCK + B + T].tolist() == [P] * T


def test_the_weight_table_and_refusals():
    w = LossWeights().table()
    assert w[P] == w[S] == 1.0
    assert LossWeights(silence_slot=2.0).table()[P] == 2.0  # unset: weighted as [SILENCE]
    assert LossWeights(silence_slot=2.0, pause_silence=6.0).table()[P] == 6.0
    with pytest.raises(ValueError, match=r"train\.loss_weights\.pause_silence"):
        LossWeights(pause_silence=-1.0)
    assert P in TEXT_CHANNEL


def test_the_loss_weighs_a_pause_slot_by_its_weight():
    ce = torch.tensor([1.0, 3.0])
    classes = torch.tensor([S, P])
    w = LossWeights(silence_slot=2.0, pause_silence=6.0).table()
    assert weighted_mean(ce, classes, w).item() == pytest.approx((2 * 1 + 6 * 3) / 8)
    sums = channel_sums(ce, classes)  # held-out figures count it as text channel
    assert sums["text_count"].item() == 2 and sums["text_sum"].item() == 4.0
