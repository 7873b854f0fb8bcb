"""One function to load a backbone: the offline tiny stand-in or a local Hugging Face folder.

``load_backbone`` returns the model, the tokenizer (extended with the duplex
tokens, rows initialised) and the resolved :class:`~bayling_duplex.format.vocab.DuplexVocab`.
Remote code is never run unless ``model.trust_remote_code=true`` is asked for:
the real GLM-4-Voice checkpoint is converted to transformers' native GLM layout
first (``scripts/convert_glm4voice.py``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bayling_duplex.format.vocab import DuplexVocab, VocabConfig, VocabError
from bayling_duplex.model.tiny import TinyConfig, tiny_backbone_dir, tiny_tokenizer_dir

log = logging.getLogger(__name__)

BACKBONE_KINDS = ("tiny", "hf")
# ``model.dtype``: the precision vocabulary of ``train.precision`` (train/config.py's
# PRECISIONS, a layer above this one; tests/unit/cli/test_config.py pins the two equal)
DTYPES = ("fp32", "bf16", "fp16")
# the torch spellings model.dtype took before: refused, naming the new value
OLD_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def torch_dtype(name: str):
    """The ``torch.dtype`` of a precision name (fp32, bf16, fp16)."""
    import torch

    if name not in DTYPES:
        hint = f" (now spelled {OLD_DTYPES[name]})" if name in OLD_DTYPES else ""
        raise ValueError(f"dtype must be one of {DTYPES}, got {name!r}{hint}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    kind: str = "tiny"  # tiny: built offline in-process; hf: a local Hugging Face folder
    path: str | None = None  # the folder, for kind=hf
    trust_remote_code: bool = False  # opt-in only: run the checkpoint's own modelling code
    dtype: str = "fp32"  # weights' dtype when loaded: fp32, bf16, fp16 (as train.precision)
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
        if self.dtype in OLD_DTYPES:
            raise ValueError(
                f"model.dtype={self.dtype} is now spelled {OLD_DTYPES[self.dtype]} "
                f"(the values of train.precision: {tuple(DTYPES)})"
            )
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


def tokenizer_source(cfg: ModelConfig, cache_dir: str | Path) -> Path:
    """A folder holding the backbone's tokenizer; for the tiny backbone, without building
    (or importing) the model when only the tokenizer is needed (``data render``)."""
    if cfg.kind == "tiny":
        return tiny_tokenizer_dir(cfg.tiny, cache_dir)
    return backbone_source(cfg, cache_dir)


# tokenizer classes that are just a tokenizers.json behind transformers' fast tokenizer
_PLAIN_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer in ``path``. A plain fast tokenizer (the tiny one, a converted
    GLM-4-Voice one) is loaded directly, which keeps torch out of commands that only
    tokenize; anything else goes through ``AutoTokenizer``."""
    path = Path(path)
    config = path / "tokenizer_config.json"
    cls = json.loads(config.read_text()).get("tokenizer_class") if config.is_file() else None
    if not trust_remote_code and cls in _PLAIN_FAST and (path / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_backbone(
    cfg: ModelConfig, vocab_cfg: VocabConfig, cache_dir: str | Path
) -> tuple[object, object, DuplexVocab]:
    """Load model and tokenizer, extend them with the duplex tokens, check the invariants.

    Returns ``(model, tokenizer, vocab)``. A checkpoint trained here already holds
    the tokens and is left unchanged; a base checkpoint gets them added and its
    new rows initialised by ``vocab_cfg.new_row_init``.
    """
    from transformers import AutoModelForCausalLM

    from bayling_duplex.model.embeddings import extend_vocabulary

    src = backbone_source(cfg, cache_dir)
    tokenizer = load_tokenizer(src, cfg.trust_remote_code)
    kwargs = {"dtype": torch_dtype(cfg.dtype), "trust_remote_code": cfg.trust_remote_code}
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


def load_trained(path: str | Path, vocab_cfg: VocabConfig, dtype: str = "fp32"):
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
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    check_vocab(vocab, model.get_input_embeddings().weight.shape[0])
    return model, tokenizer, vocab
