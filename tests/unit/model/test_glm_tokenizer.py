"""tiktoken (GLM-4-Voice's tokenizer.model) -> fast tokenizer: same ids as tiktoken's algorithm.

The reference encoder is tiktoken's BPE written out in Python: split with the
GLM-4 regex, return a piece whole if it is a token, else merge the leftmost
lowest-rank adjacent pair until none is a token. The rank table is learned here
from a small text, with the single bytes in a shuffled order (ids are not bytes).
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections import Counter

import pytest
import regex
from tokenizers import AddedToken

from bayling_duplex.format.vocab import GLM4_CHAT_SPECIALS, VocabConfig, count_audio_tokens
from bayling_duplex.model.glm_tokenizer import (
    GLM4_PATTERN,
    build_glm_tokenizer,
    convert_glm_tokenizer_dir,
    export_glm_tokenizer_dir,
    load_tiktoken_ranks,
    save_tiktoken_ranks,
)

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's the dog's day; we'll see, they'd say.\n"
    "Numbers: 12345 67890 2024 3.14159 and 1,000,000 people.\n"
    "中文文本测试：今天天气很好，我们去公园散步。语音对话模型。\n"
    "naïve café résumé — déjà vu!  Emoji 😀👍 and    spaces\n\n\ttabs\r\n"
) * 3
NUM_MERGES = 300
UNREACHABLE = b"zqxj"  # a token whose halves are not tokens: tiktoken returns it whole
NUM_AUDIO = 8
SAMPLES = [
    "Hello world! The dog's day.",
    "中文文本，今天天气很好。",
    "numbers 1234567 and 3.14159, 0042",
    "naïve café — déjà vu?",
    "  leading spaces\n\n\nnew lines\r\n and\ttabs   ",
    "emoji 😀👍🏽 mixed中文abc123",
    "It'S WE'LL they'd I'M",
    "zqxj zqxjzqxj",
    "<|user|>hi there<|audio_3|><|audio_0|> ok<|endoftext|>",
]


def learn_ranks(text: str, num_merges: int) -> dict[bytes, int]:
    """Byte-level BPE ranks learned on ``text`` (tiktoken-style: within regex pieces)."""
    order = list(range(256))
    random.Random(0).shuffle(order)
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    words = Counter(
        tuple(bytes([c]) for c in p.encode()) for p in regex.findall(GLM4_PATTERN, text)
    )
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for a, b in itertools.pairwise(w):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        merged: Counter = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    ranks[UNREACHABLE] = len(ranks)
    return ranks


def reference_encode(text: str, ranks: dict[bytes, int], added: dict[str, int]) -> list[int]:
    """tiktoken's encoding, specials split out first."""
    ids: list[int] = []
    special_re = "(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")"
    for chunk in re.split(special_re, text):
        if chunk in added:
            ids.append(added[chunk])
            continue
        for piece in regex.findall(GLM4_PATTERN, chunk):
            data = piece.encode()
            if data in ranks:
                ids.append(ranks[data])
                continue
            parts = [bytes([c]) for c in data]
            while len(parts) > 1:
                cands = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
                cands = [c for c in cands if c[0] is not None]
                if not cands:
                    break
                _, i = min(cands)
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            ids.extend(ranks[p] for p in parts)
    return ids


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return learn_ranks(TRAIN_TEXT, NUM_MERGES)


def released_added_tokens(first_id: int) -> dict[int, AddedToken]:
    """GLM-4-Voice's layout: chat specials right after the text ranks, then the audio codes."""
    names = [*GLM4_CHAT_SPECIALS, *(f"<|audio_{i}|>" for i in range(NUM_AUDIO))]
    return {
        first_id + i: AddedToken(t, special=True, normalized=False) for i, t in enumerate(names)
    }


@pytest.fixture(scope="module")
def tokenizer(ranks):
    return build_glm_tokenizer(ranks, released_added_tokens(len(ranks)), eos_token="<|endoftext|>")


def test_ids_equal_tiktoken_algorithm(ranks, tokenizer):
    added = {t.content: i for i, t in released_added_tokens(len(ranks)).items()}
    merged_somewhere = False
    for text in SAMPLES:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference_encode(text, ranks, added), text
        assert tokenizer.decode(ids) == text
        merged_somewhere |= any(256 <= i < len(ranks) for i in ids)
    assert merged_somewhere
    assert tokenizer("zqxj", add_special_tokens=False)["input_ids"] == [ranks[UNREACHABLE]]


def test_specials_and_audio_keep_their_ids(ranks, tokenizer):
    n = len(ranks)
    assert tokenizer.convert_tokens_to_ids(list(GLM4_CHAT_SPECIALS)) == list(range(n, n + 16))
    assert count_audio_tokens(tokenizer, VocabConfig()) == (n + 16, NUM_AUDIO)
    assert tokenizer.eos_token_id == n
    assert len(tokenizer) == n + 16 + NUM_AUDIO
    # ChatGLM4Tokenizer puts [gMASK] <sop> before an input when asked for special tokens
    ids = tokenizer("hi")["input_ids"]
    assert ids[:2] == tokenizer.convert_tokens_to_ids(["[gMASK]", "<sop>"])
    assert ids[2:] == tokenizer("hi", add_special_tokens=False)["input_ids"]


def test_added_ids_with_gaps_are_pinned(ranks):
    added = {
        len(ranks) + 5: AddedToken("<|endoftext|>", special=True),
        5000: AddedToken("<|audio_0|>", special=True),
    }
    tok = build_glm_tokenizer(ranks, added)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|audio_0|>"]) == [len(ranks) + 5, 5000]
    assert tok("a<|audio_0|>", add_special_tokens=False)["input_ids"][-1] == 5000


def test_folder_conversion_and_export_round_trip(ranks, tokenizer, tmp_path):
    src = tmp_path / "released"
    src.mkdir()
    save_tiktoken_ranks(ranks, src / "tokenizer.model")
    assert load_tiktoken_ranks(src / "tokenizer.model") == ranks
    decoder = {
        str(i): {
            "content": t.content,
            "special": True,
            "normalized": False,
            "lstrip": False,
            "rstrip": False,
            "single_word": False,
        }
        for i, t in released_added_tokens(len(ranks)).items()
    }
    config = {
        "added_tokens_decoder": decoder,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (src / "tokenizer_config.json").write_text(json.dumps(config))

    converted = convert_glm_tokenizer_dir(src, tmp_path / "fast")
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path / "fast")
    export_glm_tokenizer_dir(loaded, tmp_path / "back")
    assert load_tiktoken_ranks(tmp_path / "back" / "tokenizer.model") == ranks
    back_config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert {k: v["content"] for k, v in back_config["added_tokens_decoder"].items()} == {
        k: v["content"] for k, v in decoder.items()
    }
    assert back_config["tokenizer_class"] == "ChatGLM4Tokenizer"
    again = convert_glm_tokenizer_dir(tmp_path / "back")
    for tok in (converted, loaded, again):
        assert tok.get_vocab() == tokenizer.get_vocab()
        assert tok.pad_token == tok.eos_token == "<|endoftext|>"
        for text in SAMPLES:
            assert tok(text)["input_ids"] == tokenizer(text)["input_ids"], text


def test_missing_byte_is_refused(ranks):
    broken = {t: r for t, r in ranks.items() if t != b"a"}
    with pytest.raises(ValueError, match="single bytes"):
        build_glm_tokenizer(broken, {})
