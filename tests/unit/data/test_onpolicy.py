"""On-policy pairs: continuations of prompts, decision blocks, the choice of sides, a build."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY_MODEL, build_small_demo, compose_conf

from bayling_duplex.data.onpolicy import (
    OnPolicyConfig,
    _choose,
    decision_blocks,
    interleave_window,
    make_onpolicy_pairs,
    window_classes,
)
from bayling_duplex.data.rewards import Reference, WindowReward
from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab

LAYOUT = BlockLayout(frames_per_block=4, slots_per_block=2)
VOCAB = DuplexVocab(
    silence_id=50, speak_id=51, pad_id=52, epad_id=53, audio_start_id=100, num_audio=40,
    vocab_size=140,
)  # fmt: skip
S, A, P, E = 50, 51, 52, 53


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The untrained tiny backbone (its choices are varied: good for sampling) and demo data."""
    from bayling_duplex.model.backbone import load_backbone

    root = tmp_path_factory.mktemp("onpolicy")
    conf = compose_conf("dpo", [*TINY_MODEL, "data=demo"])
    model, tok, vocab = load_backbone(conf.model, conf.vocab, root / "cache")
    data = build_small_demo(root / "demo", root / "cache", train=16, heldout=4, shard_size=16)
    return model.eval(), tok, vocab, data


def test_greedy_continuations_equal_the_tail_of_a_greedy_decode(tiny):
    from bayling_duplex.decode.branch import continue_prompts
    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.decode.events import result_to_sequence

    model, _, vocab, _ = tiny
    lay = BlockLayout()
    B, T, L = lay.frames_per_block, lay.slots_per_block, lay.block_len
    dec = DuplexDecoder(model, vocab, lay)
    rng = np.random.default_rng(0)
    dialogues = [rng.integers(0, vocab.num_audio, size=8 * B) for _ in range(3)]
    full = [result_to_sequence(r, vocab, lay) for r in dec.decode_batch(dialogues)]
    cut = [2, 5, 5]  # two prompt lengths: two batches
    prompts = [f[: d * L] for f, d in zip(full, cut, strict=True)]
    users = [u[d * B : (d + 2) * B].reshape(2, B) for u, d in zip(dialogues, cut, strict=True)]
    conts = continue_prompts(dec, prompts, users, repeats=2, max_batch=3)
    assert [(c.prompt, c.repeat) for c in conts] == [(i, r) for i in range(3) for r in range(2)]
    for c in conts:
        d, f = cut[c.prompt], full[c.prompt]
        window = f[d * L : (d + 2) * L].reshape(2, L)
        assert c.text_ids.tolist() == window[:, B : B + T].reshape(-1).tolist()
        assert (
            c.assistant_codes.tolist()
            == (window[:, B + T :] - vocab.audio_start_id).reshape(-1).tolist()
        )


def test_sampled_continuations_are_reproducible_and_vary(tiny):
    from bayling_duplex.decode.branch import continue_prompts
    from bayling_duplex.decode.config import DecodeConfig
    from bayling_duplex.decode.decoder import DuplexDecoder

    model, _, vocab, _ = tiny
    lay = BlockLayout()
    dec = DuplexDecoder(model, vocab, lay, DecodeConfig(temperature=1.0))
    rng = np.random.default_rng(1)
    prompt = np.concatenate(
        [rng.integers(0, vocab.num_audio, 10) + vocab.audio_start_id, [vocab.silence_id] * 5,
         rng.integers(0, vocab.num_audio, 10) + vocab.audio_start_id]
    )  # fmt: skip
    user = rng.integers(0, vocab.num_audio, (3, 10))
    a = continue_prompts(dec, [prompt], [user], repeats=4, seed=3)
    b = continue_prompts(dec, [prompt], [user], repeats=4, seed=3)
    assert all(np.array_equal(x.text_ids, y.text_ids) for x, y in zip(a, b, strict=True))
    assert len({tuple(x.text_ids) for x in a}) > 1
    with pytest.raises(ValueError, match="multiple"):
        continue_prompts(dec, [prompt[:-1]], [user])


def test_decision_blocks_put_the_greedy_errors_first():
    T = LAYOUT.slots_per_block
    gold = np.array([S, S, A, 10, 11, E, S, S, S, S, S, S])  # starts in slot 2, stops in 5
    greedy = np.array([S, S, S, S, A, 10, 11, E, S, S, S, S])  # one block late at both
    ref = Reference(((0, 8, "turn"), (18, 20, "backchannel")), ((2, 5, False),))
    points = decision_blocks(gold, greedy, ref, LAYOUT, VOCAB, 2, len(gold) // T, 8)
    # greedy starts in slot 4, not 2 (blocks 2, 1) and stops in 7, not 5 (blocks 3, 2);
    # one entry per block, the errors before the reference's events
    assert points == [(1, "greedy_start"), (2, "greedy_start"), (3, "greedy_stop")]
    # a right greedy rollout leaves the reference's own events; the window must fit
    right = decision_blocks(gold, gold, ref, LAYOUT, VOCAB, 2, len(gold) // T, 8)
    assert right == [(1, "reference_start"), (2, "reference_stop"), (3, "backchannel")]
    assert decision_blocks(gold, gold, ref, LAYOUT, VOCAB, 5, 6, 8) == [(1, "reference_start")]
    assert len(decision_blocks(gold, greedy, ref, LAYOUT, VOCAB, 2, 6, 1)) == 1


def _rw(total: float) -> WindowReward:
    return WindowReward(
        total, dict.fromkeys(("onset", "false_start", "stop", "early_stop", "text"), 0.0)
    )


@pytest.mark.parametrize(
    ("totals", "expected"),
    [
        ([-1.0, 0.0, -1.0, -0.5], (1, 0, "rollout_vs_rollout")),  # greedy among the worst
        ([0.0, -1.0, -1.0], (0, 1, "rollout_vs_rollout")),
        ([-0.1, -0.2, 0.0], (None, None, "all_alike")),  # within the margin
        ([-1.0, -2.0, -1.5], (-1, 1, "reference_vs_rollout")),  # none right: the reference
    ],
)
def test_the_sides_are_the_best_and_the_worst_or_the_reference(totals, expected):
    cfg = OnPolicyConfig()
    assert _choose([_rw(t) for t in totals], 0, cfg) == expected


def test_without_gold_fallback_a_wrong_best_still_beats_a_worse_one():
    cfg = OnPolicyConfig(gold_fallback=False)
    assert _choose([_rw(-1.0), _rw(-2.0)], 0, cfg) == (0, 1, "rollout_vs_rollout")
    assert _choose([_rw(-1.0), _rw(-1.1)], 0, cfg) == (None, None, "none_right")


def test_window_ids_and_classes():
    ids = interleave_window(
        np.array([1, 2, 3, 4]), np.array([A, 10]), np.array([5, 6, 7, 8]), LAYOUT, VOCAB
    )
    assert ids.tolist() == [101, 102, 103, 104, A, 10, 105, 106, 107, 108]
    c = window_classes(ids, LAYOUT, VOCAB)
    assert c.tolist() == [0] * 4 + [int(TokenClass.CONTROL), int(TokenClass.TEXT)] + [4] * 4


def test_pairs_are_made_at_decision_blocks_from_the_policys_continuations(tiny):
    from bayling_duplex.data.build import load_split
    from bayling_duplex.data.load import manifest_format

    model, _, vocab, data = tiny
    spec = manifest_format(json.loads((data / "manifest.json").read_text()))
    L = spec.layout.block_len
    rows = load_split(data, "train").select(range(6))
    cfg = OnPolicyConfig(dialogues=6, samples=3, batch_size=8)
    cols, stats, skips = make_onpolicy_pairs(model, vocab, spec, rows, cfg, progress=False)
    assert stats["pairs"] == len(cols["id"]) > 0
    assert sum(stats["outcomes"].values()) == stats["decision_blocks"]
    assert stats["pairs"] + len(skips) == stats["decision_blocks"]
    assert stats["rollouts"] == 6 + stats["decision_blocks"] * 4 and stats["rollouts_per_s"] > 0
    by_id = {r["id"]: np.asarray(r["input_ids"]) for r in rows}
    for i, pid in enumerate(cols["id"]):
        gold = by_id[pid.split(":op:")[0]]
        d = cols["decision_block"][i]
        assert cols["prompt_ids"][i] == gold[: d * L].tolist()  # the reference history
        assert cols["chosen_reward"][i] > cols["rejected_reward"][i]
        assert cols["kind"][i].startswith("op_")
        if cols["chosen_ids"][i] == gold[d * L : (d + 2) * L].tolist():
            assert cols["chosen_reward"][i] == 0.0  # the reference scores 0
