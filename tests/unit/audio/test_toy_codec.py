"""The toy codec plants nothing at the end of an utterance (version 2)."""

from __future__ import annotations

import json

import datasets
import numpy as np

from bayling_duplex.audio.codec import SILENCE_CODE, ToyCodec
from bayling_duplex.data.build import turn_end_audit
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab


def test_an_utterance_ends_with_its_last_word_and_questions_look_like_statements() -> None:
    codec = ToyCodec()
    q, ends = codec.encode("What is the capital of France?")
    s, _ = codec.encode("What is the capital of France.")
    assert q == s  # nothing tells a question from a statement
    assert tuple(q[-len(codec.word_codes("France")) :]) == tuple(codec.word_codes("France"))
    assert q[-1] != SILENCE_CODE and all(0 < e < len(q) for e in ends)
    assert len(ends) == 5  # a pause could follow every word but the last
    # every word code can occur anywhere: the last frame is the last word's, not a marker
    finals = {codec.encode(f"What is {a} plus {b}?")[0][-1] for a in range(13) for b in range(13)}
    inside = {c for a in range(13) for c in codec.encode(f"{a} plus {a} is")[0][:-1]}
    assert len(finals - inside) / len(finals) < 0.05


def _vocab() -> DuplexVocab:
    return DuplexVocab(
        silence_id=1000,
        speak_id=1001,
        pad_id=1002,
        epad_id=1003,
        audio_start_id=0,
        num_audio=256,
        vocab_size=1004,
    )


def _rows(final_code: int | None, n: int = 60) -> datasets.Dataset:
    """Sequences of one block layout whose user turns end on ``final_code`` (None: on a word)."""
    layout, rng = BlockLayout(10, 5), np.random.default_rng(0)
    rows = {"input_ids": [], "meta": []}
    for _ in range(n):
        K = 4
        user = rng.integers(3, 200, size=K * 10)
        if final_code is not None:
            user[14] = user[29] = final_code  # the last frame of each turn
        grid = np.zeros((K, layout.block_len), dtype=np.int64)
        grid[:, :10] = user.reshape(K, 10)
        grid[:, 10:15] = 1000
        rows["input_ids"].append(grid.reshape(-1).tolist())
        meta = {"num_frames": K * 10, "user_segments": [[2, 15, "turn"], [20, 30, "turn"]]}
        rows["meta"].append(json.dumps(meta))
    return datasets.Dataset.from_dict(rows)


def test_the_turn_end_audit_finds_a_planted_marker_and_nothing_else() -> None:
    layout, vocab = BlockLayout(10, 5), _vocab()
    planted = turn_end_audit([_rows(final_code=1)], layout, vocab)
    assert planted["never_inside_share"] == 1.0 and planted["distinct_final_codes"] == 1
    clean = turn_end_audit([_rows(final_code=None)], layout, vocab)
    assert clean["turn_final_codes"] == 120 and clean["never_inside_share"] < 0.05
    assert turn_end_audit([_rows(None)], layout, vocab, max_rows=3)["rows"] == 3
