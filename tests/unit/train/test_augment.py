"""Input noise on the user's channel (train.user_unit_swap, train/augment.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_MODEL, compose_conf

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.augment import swap_user_units

U, S, SP = TokenClass.USER_AUDIO, TokenClass.SILENCE_SLOT, TokenClass.SPEECH
LO, HI = 1000, 1256  # audio ids
PAD = 7  # the collator pads with [SILENCE], which is not an audio id


def _batch(rows: int = 8, blocks: int = 40):
    g = torch.Generator().manual_seed(0)
    block_cls = [U] * 10 + [S] * 5 + [SP] * 10
    cls = torch.tensor(block_cls * blocks, dtype=torch.int8).repeat(rows, 1)
    ids = torch.randint(LO, HI, cls.shape, generator=g)
    ids[cls == S] = 50  # text-channel slots
    ids[:, :2] = 3  # a prompt of text ids, class USER_AUDIO as the collator leaves it
    cls[:, :2] = U
    ids[-1, -30:] = PAD  # padding (class USER_AUDIO)
    cls[-1, -30:] = U
    return ids, cls


def test_only_user_audio_codes_change_and_only_to_user_codes_of_the_batch():
    ids, cls = _batch()
    out = swap_user_units(ids, cls, 0.3, (LO, HI), torch.Generator().manual_seed(1))
    user = (cls == U) & (ids >= LO) & (ids < HI)
    assert torch.equal(out[~user], ids[~user])  # prompt, padding, text slots, assistant codes
    changed = out != ids
    assert changed.any() and not (changed & ~user).any()
    assert set(out[changed].tolist()) <= set(ids[user].tolist())
    # about the share asked for (a few replacements draw their own code back)
    share = changed[user].float().mean().item()
    assert 0.25 < share < 0.31
    assert torch.equal(ids, _batch()[0])  # the input is not edited in place


def test_the_same_seed_gives_the_same_noise_and_zero_gives_none():
    ids, cls = _batch()
    a = swap_user_units(ids, cls, 0.2, (LO, HI), torch.Generator().manual_seed(5))
    b = swap_user_units(ids, cls, 0.2, (LO, HI), torch.Generator().manual_seed(5))
    c = swap_user_units(ids, cls, 0.2, (LO, HI), torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert swap_user_units(ids, cls, 0.0, (LO, HI), torch.Generator()) is ids


def test_a_batch_without_user_audio_is_returned_as_is():
    cls = torch.full((2, 6), S, dtype=torch.int8)
    ids = torch.full((2, 6), 50)
    assert swap_user_units(ids, cls, 0.5, (LO, HI), torch.Generator()) is ids


def test_training_steps_see_noised_user_codes_and_evaluation_does_not(tiny_backbone):
    from transformers import TrainingArguments

    from bayling_duplex.train.loss import LossWeights
    from bayling_duplex.train.sft_trainer import DuplexTrainer

    model = tiny_backbone[0]
    was_training = model.training
    seen = []
    trainer = DuplexTrainer(
        model=model,
        args=TrainingArguments(output_dir="/tmp/unused-augment", report_to=[], use_cpu=True),
        loss_weights=LossWeights().table(),
        loss_impl="full",
        user_unit_swap=0.5,
        audio_range=(LO, HI),
    )
    trainer.duplex_loss = lambda m, inputs, classes: (seen.append(inputs["input_ids"]), (0, 0))[1]
    ids, cls = _batch(rows=2, blocks=4)
    model.train()
    trainer.compute_loss(model, {"input_ids": ids, "classes": cls})
    model.eval()
    trainer.compute_loss(model, {"input_ids": ids, "classes": cls})
    model.train(was_training)
    assert not torch.equal(seen[0], ids) and seen[1] is ids


@pytest.mark.parametrize("share", ["1.0", "-0.1", "lots"])
def test_a_share_outside_zero_to_one_fails_naming_the_key(share):
    with pytest.raises(Exception, match=r"user_unit_swap"):
        compose_conf("sft", [*TINY_MODEL, f"train.user_unit_swap={share}"])


def test_speech_positions_follow_the_block_layout():
    from bayling_duplex.train.collate import speech_positions

    # frames 8..12 and 25: block 0 slots 8-9, block 1 slots 0-2, block 2 slot 5
    got = speech_positions([[8, 13, "turn"], [25, 26, "turn"]], 10, 5, 3 * 25)
    want = {8, 9, 25, 26, 27, 55}
    assert set(got.nonzero().flatten().tolist()) == want
    # past the sequence's end: nothing, no error
    assert not speech_positions([[80, 90, "turn"]], 10, 5, 75).any()
    # a turn's segment spans its hesitation pause: the pause's frames are left out
    got = speech_positions([[0, 20, "turn"]], 10, 5, 50, pauses=[[6, 14]])
    assert set(got.nonzero().flatten().tolist()) == {0, 1, 2, 3, 4, 5, 29, 30, 31, 32, 33, 34}


def test_the_speech_scope_keeps_silences_as_built():
    ids, cls = _batch()
    region = torch.zeros_like(cls, dtype=torch.bool)
    region[:, 100:300] = True
    out = swap_user_units(ids, cls, 0.5, (LO, HI), torch.Generator().manual_seed(2), region)
    changed = out != ids
    assert changed[:, 100:300].any() and not changed[:, :100].any() and not changed[:, 300:].any()
    user = (cls == U) & region
    assert set(out[changed].tolist()) <= set(ids[user].tolist())


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_the_collator_adds_the_speech_region_only_when_asked(pack):
    import json

    from bayling_duplex.train.collate import DuplexCollator

    block = [U] * 10 + [S] * 5 + [SP] * 10
    meta = [
        {"user_segments": [[0, 12, "turn"]], "pauses": [[3, 5]]},
        {"user_segments": [[8, 11, "turn"]], "pauses": []},
    ]
    rows = [
        {"input_ids": [LO] * n * 25, "classes": block * n, "meta": json.dumps(m)}
        for n, m in zip((3, 2), meta, strict=True)
    ]
    plain = DuplexCollator(pad_id=PAD, pack=pack)(rows)
    assert "user_speech" not in plain
    batch = DuplexCollator(pad_id=PAD, pack=pack, speech_layout=(10, 5))(rows)
    region = batch["user_speech"]
    assert region.shape == batch["input_ids"].shape and region.dtype == torch.bool
    # dialogue 0: frames 0-2 and 5-11 (the pause 3-4 left out); dialogue 1: frames 8-10
    first = [0, 1, 2, 5, 6, 7, 8, 9, 25, 26]
    second = [8, 9, 25]
    if pack:  # one row: the second dialogue starts after the first's 75 tokens
        want = [(0, p) for p in first] + [(0, 75 + p) for p in second]
    else:
        want = [(0, p) for p in first] + [(1, p) for p in second]
    assert sorted(map(tuple, region.nonzero().tolist())) == want


def test_an_unknown_scope_fails_naming_the_key():
    with pytest.raises(Exception, match=r"user_unit_swap_scope"):
        compose_conf("sft", [*TINY_MODEL, "train.user_unit_swap_scope=silence"])
