"""One function to load a backbone: the offline tiny stand-in or a local Hugging Face folder.

``load_backbone`` returns the model, the tokenizer (extended with the duplex
tokens, rows initialised) and the resolved :class:`~bayling_duplex.format.vocab.DuplexVocab`.
Remote code is never run unless ``model.trust_remote_code=true`` is asked for:
the real GLM-4-Voice checkpoint is converted to transformers' native GLM layout
first (``scripts/convert_glm4voice.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bayling_duplex.format.vocab import DuplexVocab, VocabConfig, VocabError
from bayling_duplex.model.embeddings import extend_vocabulary
from bayling_duplex.model.tiny import TinyConfig, tiny_backbone_dir

log = logging.getLogger(__name__)

BACKBONE_KINDS = ("tiny", "hf")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    kind: str = "tiny"  # tiny: built offline in-process; hf: a local Hugging Face folder
    path: str | None = None  # the folder, for kind=hf
    trust_remote_code: bool = False  # opt-in only: run the checkpoint's own modelling code
    dtype: str = "float32"  # weights' dtype when loaded: float32, bfloat16, float16
    attn_implementation: str | None = (
        None  # sdpa, eager, flash_attention_2; None = transformers' choice
    )
    # when the duplex tokens need rows beyond the matrix, grow it to a multiple of this
    resize_pad_multiple: int = 64
    tiny: TinyConfig = field(default_factory=TinyConfig)

    def __post_init__(self) -> None:
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"model.kind must be one of {BACKBONE_KINDS}, got {self.kind!r}")
        if self.kind == "hf" and not self.path:
            raise ValueError("model.path must name a local Hugging Face folder when model.kind=hf")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")


def backbone_source(cfg: ModelConfig, cache_dir: str | Path) -> Path:
    """The folder the backbone is loaded from (building the tiny one there if needed)."""
    if cfg.kind == "tiny":
        return tiny_backbone_dir(cfg.tiny, cache_dir)
    path = Path(cfg.path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path={cfg.path!r} is not a Hugging Face model folder (no config.json). "
            "Convert the released GLM-4-Voice checkpoint first: see docs/real-backbone.md"
        )
    return path


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_backbone(
    cfg: ModelConfig, vocab_cfg: VocabConfig, cache_dir: str | Path
) -> tuple[torch.nn.Module, object, DuplexVocab]:
    """Load model and tokenizer, extend them with the duplex tokens, check the invariants.

    Returns ``(model, tokenizer, vocab)``. A checkpoint trained here already holds
    the tokens and is left unchanged; a base checkpoint gets them added and its
    new rows initialised by ``vocab_cfg.new_row_init``.
    """
    from transformers import AutoModelForCausalLM

    src = backbone_source(cfg, cache_dir)
    tokenizer = load_tokenizer(src, cfg.trust_remote_code)
    kwargs = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(src), **kwargs)
    try:
        vocab, new_ids = extend_vocabulary(model, tokenizer, vocab_cfg, cfg.resize_pad_multiple)
    except VocabError as e:
        raise VocabError(f"{src}: {e}") from e
    if new_ids:
        log.info(
            "added duplex tokens with ids %s (rows initialised: %s)",
            new_ids,
            vocab_cfg.new_row_init,
        )
    return model, tokenizer, vocab


def load_trained(path: str | Path, vocab_cfg: VocabConfig, dtype: str = "float32"):
    """Load a checkpoint written by this project: the duplex tokens must already be there.

    Raises :class:`VocabError` naming the missing tokens otherwise (no silent extension:
    a checkpoint without them was never trained for duplex decoding).
    """
    from transformers import AutoModelForCausalLM

    from bayling_duplex.format.vocab import check_vocab, resolve_vocab

    tokenizer = load_tokenizer(path)
    try:
        vocab = resolve_vocab(tokenizer, vocab_cfg)
    except VocabError as e:
        raise VocabError(f"{path}: {e}") from e
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype])
    check_vocab(vocab, model.get_input_embeddings().weight.shape[0])
    return model, tokenizer, vocab
