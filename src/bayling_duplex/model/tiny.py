"""An offline, deterministic stand-in for GLM-4-Voice: tiny tokenizer and tiny model.

No hub is reachable on the project's machines, so every stage defaults to this.
It has GLM-4-Voice's token layout, scaled down:

    [0, n_text)                      byte-level BPE text vocabulary, trained here
    n_text + 0 … n_text + 15         GLM-4 chat specials (<|endoftext|> … <|end_of_audio|>)
    next num_audio ids               <|audio_0|> … <|audio_{num_audio-1}|>, contiguous
    up to the padded row count       spare embedding rows (as GLM-4-Voice pads to 168960)

The duplex control tokens are *not* in it: the vocabulary extension adds them,
so the tiny path exercises the same code as the real checkpoint. The model is
transformers' native ``GlmForCausalLM`` (the architecture the real checkpoint
is converted into): a few hundred thousand parameters at ``TinyConfig``'s defaults,
1.2 M at the main job's size (``configs/model/tiny.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from bayling_duplex.format.vocab import GLM4_CHAT_SPECIALS

# Bump when the construction below changes, so old caches are not reused.
TINY_BUILDER_VERSION = 2


@dataclass
class TinyConfig:
    """Shape of the tiny backbone. Defaults train on a CPU in minutes."""

    text_vocab_size: int = 1024  # target size of the BPE text vocabulary (bytes included)
    num_audio_tokens: int = 256  # number of <|audio_N|> speech codes
    vocab_pad_multiple: int = 64  # embedding rows are padded to a multiple of this …
    vocab_spare_rows: int = 8  # … after leaving at least this many spare rows
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 8192
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "text_vocab_size",
            "num_audio_tokens",
            "vocab_pad_multiple",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.tiny.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError("model.tiny.hidden_size must be divisible by model.tiny.num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("model.tiny.num_heads must be divisible by model.tiny.num_kv_heads")
        if self.text_vocab_size < 260:
            raise ValueError("model.tiny.text_vocab_size must be at least 260 (256 bytes + merges)")

    def fingerprint(self) -> str:
        blob = json.dumps({"v": TINY_BUILDER_VERSION, **asdict(self)}, sort_keys=True)
        corpus = "\n".join(training_text()).encode()
        return hashlib.sha256(blob.encode() + corpus).hexdigest()[:12]


DEMO_TEXT = "resources/demo_text.txt"


def training_text() -> list[str]:
    """The shipped corpus plus every demo question, answer and backchannel, so demo words
    are whole tokens. The demo lines are a resource file (``DEMO_TEXT``) rather than a call
    into the data layer, which sits above this one; a test keeps the file equal to what
    :mod:`bayling_duplex.data.demo` generates."""
    shipped = resources.files("bayling_duplex")
    corpus = shipped.joinpath("resources/tiny_corpus.txt").read_text("utf-8")
    demo = shipped.joinpath(DEMO_TEXT).read_text("utf-8")
    return corpus.splitlines() + demo.splitlines()


def build_tiny_tokenizer(cfg: TinyConfig):
    """A ``PreTrainedTokenizerFast`` with GLM-4-Voice's layout; deterministic for a given cfg."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.text_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_text(), trainer=trainer)
    specials = list(GLM4_CHAT_SPECIALS) + [f"<|audio_{i}|>" for i in range(cfg.num_audio_tokens)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def padded_rows(num_tokens: int, cfg: TinyConfig) -> int:
    m = cfg.vocab_pad_multiple
    return -(-(num_tokens + cfg.vocab_spare_rows) // m) * m


def build_tiny_model(cfg: TinyConfig, tokenizer):
    """A randomly initialised ``GlmForCausalLM`` (seeded) sized for ``tokenizer``."""
    import torch
    from transformers import GlmConfig, GlmForCausalLM

    config = GlmConfig(
        vocab_size=padded_rows(len(tokenizer), cfg),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = GlmForCausalLM(config)
    return model


def tiny_backbone_dir(cfg: TinyConfig, cache_root: str | Path) -> Path:
    """Build (once) and return the folder holding the tiny model and tokenizer."""
    path = Path(cache_root) / f"tiny-{cfg.fingerprint()}"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    tokenizer = build_tiny_tokenizer(cfg)
    model = build_tiny_model(cfg, tokenizer)
    # Several ranks may build at once: each writes its own folder, the first rename wins.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def tiny_tokenizer_dir(cfg: TinyConfig, cache_root: str | Path) -> Path:
    """A folder with the tiny tokenizer alone (no model, so no torch): the full backbone's
    folder when it is built, else a tokenizer-only folder built once beside it."""
    full = Path(cache_root) / f"tiny-{cfg.fingerprint()}"
    if (full / "tokenizer.json").is_file():
        return full
    path = full.with_name(f"{full.name}-tokenizer")
    if (path / "tokenizer.json").is_file():
        return path
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    build_tiny_tokenizer(cfg).save_pretrained(tmp)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
