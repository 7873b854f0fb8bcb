"""GLM-4-Voice's tiktoken tokenizer as a Hugging Face fast tokenizer, and back.

The released tokenizer (``ChatGLM4Tokenizer``, remote code) is two files:

* ``tokenizer.model``: one line ``<base64 bytes> <rank>`` per text token; a token's
  id is its rank (GLM-4 has 151329 of them, ids ``[0, 151329)``).
* ``tokenizer_config.json``: ``added_tokens_decoder`` maps an id to each chat
  special (``<|endoftext|>`` …) and each speech code ``<|audio_N|>``.

tiktoken encodes a pre-tokenized piece by returning it whole if it is a token, else
by merging, again and again, the leftmost adjacent pair whose concatenation has the
lowest rank. A ``tokenizers`` BPE behaves the same when its merges ``(a, b)`` are
every split of every token into two tokens, ordered by ``rank(a + b)``, and
``ignore_merges`` is on (a whole-token piece skips merging). Strings are bytes
mapped through GPT-2's byte-to-unicode table, which a ``ByteLevel`` pre-tokenizer
applies after the GLM-4 regex split.

``ChatGLM4Tokenizer`` prepends ``[gMASK] <sop>`` when asked for special tokens;
the converted tokenizer does the same with a template post-processor.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

# GLM-4's tiktoken split pattern (pat_str of ChatGLM4Tokenizer; the cl100k pattern).
GLM4_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TIKTOKEN_FILE = "tokenizer.model"
# ChatGLM4Tokenizer.build_inputs_with_special_tokens puts these before every input.
PREFIX_TOKENS = ("[gMASK]", "<sop>")
# tokenizer_config.json keys carried over to the converted tokenizer (and back).
_CARRIED_KEYS = ("eos_token", "pad_token", "unk_token", "chat_template", "model_max_length")
log = logging.getLogger(__name__)
_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file (``base64 rank`` lines) into ``{token bytes: rank}``."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: not a 'base64 rank' line: {line!r}") from e
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: two tokens share a rank")
    return ranks


def save_tiktoken_ranks(ranks: Mapping[bytes, int], path: str | Path) -> None:
    """Write ``{token bytes: rank}`` as a tiktoken BPE file, in rank order."""
    lines = [
        f"{base64.b64encode(t).decode('ascii')} {r}\n"
        for t, r in sorted(ranks.items(), key=lambda x: x[1])
    ]
    Path(path).write_text("".join(lines), "utf-8")


def token_to_str(token: bytes) -> str:
    """The byte-level string of a token (GPT-2's byte-to-unicode table)."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def str_to_token(text: str) -> bytes:
    """Inverse of :func:`token_to_str`."""
    return bytes(_CHAR_TO_BYTE[c] for c in text)


def ranks_to_bpe(ranks: Mapping[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rank table -> ``(vocab, merges)`` of an equivalent ``tokenizers`` BPE (see module doc).

    Raises ``ValueError`` if a single byte has no rank: tiktoken then fails on that
    byte, and a BPE without an unknown token would silently drop it.
    """
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"tiktoken ranks lack single bytes {missing[:8]}…: not a byte-level BPE")
    vocab = {token_to_str(t): r for t, r in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return vocab, [(token_to_str(a), token_to_str(b)) for *_, a, b in merges]


def added_tokens_from_config(tokenizer_config: Mapping[str, Any]) -> dict[int, AddedToken]:
    """``{id: AddedToken}`` from a ``tokenizer_config.json``'s ``added_tokens_decoder``."""
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    if not decoder:
        raise ValueError(
            "tokenizer_config.json has no added_tokens_decoder: the chat specials and "
            "<|audio_N|> ids cannot be read (a pre-GLM-4-Voice ChatGLM4Tokenizer?)"
        )
    return {
        int(i): AddedToken(
            d["content"],
            special=d.get("special", True),
            lstrip=d.get("lstrip", False),
            rstrip=d.get("rstrip", False),
            single_word=d.get("single_word", False),
            normalized=d.get("normalized", False),
        )
        for i, d in decoder.items()
    }


def build_glm_tokenizer(
    ranks: Mapping[bytes, int],
    added_tokens: Mapping[int, AddedToken],
    *,
    pattern: str = GLM4_PATTERN,
    prefix_tokens: Iterable[str] = PREFIX_TOKENS,
    **init_kwargs: Any,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer with every rank at its id and every added token at its given id.

    ``prefix_tokens`` are put before each input when ``add_special_tokens`` is on
    (as ``ChatGLM4Tokenizer`` does); none are put if any is missing or it is empty.
    ``init_kwargs`` go to ``PreTrainedTokenizerFast`` (``eos_token`` …).
    """
    vocab, merges = ranks_to_bpe(ranks)
    clash = sorted(i for i in added_tokens if i in set(ranks.values()))
    if clash:
        raise ValueError(f"added token ids {clash[:8]} collide with text ranks")
    # Entering added tokens into the model vocabulary pins their ids even where ids have
    # gaps: tokenizers gives an added token its vocabulary id when it has one.
    for i, tok in added_tokens.items():
        vocab[tok.content] = i
    if len(vocab) != max(vocab.values()) + 1:
        log.warning(
            "token ids have gaps: len(tokenizer) will be %d though ids reach %d",
            len(vocab),
            max(vocab.values()),
        )
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    ordered = [added_tokens[i] for i in sorted(added_tokens)]
    tok.add_special_tokens([t for t in ordered if t.special])
    tok.add_tokens([t for t in ordered if not t.special])
    prefix = list(prefix_tokens)
    prefix_ids = [vocab.get(t) for t in prefix]
    if prefix and None not in prefix_ids:
        head = " ".join(prefix)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{head} $A",
            pair=f"{head} $A $B:1",
            special_tokens=list(zip(prefix, prefix_ids, strict=True)),
        )
    init_kwargs.setdefault("clean_up_tokenization_spaces", False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **init_kwargs)


def _carried(tokenizer_config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in _CARRIED_KEYS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):  # serialised AddedToken
            value = value.get("content")
        if value is not None:
            out[key] = value
    return out


def convert_glm_tokenizer_dir(
    src: str | Path, dst: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Convert the tokenizer of a released folder (``tokenizer.model`` + ``tokenizer_config.json``).

    Saves the fast tokenizer into ``dst`` when given; returns it either way.
    """
    src = Path(src)
    config = json.loads((src / "tokenizer_config.json").read_text("utf-8"))
    tokenizer = build_glm_tokenizer(
        load_tiktoken_ranks(src / TIKTOKEN_FILE),
        added_tokens_from_config(config),
        **_carried(config),
    )
    if dst is not None:
        tokenizer.save_pretrained(str(dst))
    return tokenizer


def export_glm_tokenizer_dir(tokenizer: PreTrainedTokenizerFast, dst: str | Path) -> None:
    """Write ``tokenizer`` back as ``tokenizer.model`` + ``tokenizer_config.json`` (released layout).

    Every added token (the duplex tokens too) goes into ``added_tokens_decoder`` at its id.
    ``ChatGLM4Tokenizer``'s code itself (``tokenization_chatglm.py``) is not written.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    added = tokenizer.added_tokens_decoder
    model_vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    ranks = {str_to_token(s): i for s, i in model_vocab.items() if i not in added}
    save_tiktoken_ranks(ranks, dst / TIKTOKEN_FILE)
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(added.items())
        },
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "clean_up_tokenization_spaces": False,
        "do_lower_case": False,
        "padding_side": "left",
        "remove_space": False,
        "tokenizer_class": "ChatGLM4Tokenizer",
    }
    for key in _CARRIED_KEYS:
        value = getattr(tokenizer, key, None)
        if isinstance(value, str | int):
            config[key] = value
    (dst / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8"
    )
