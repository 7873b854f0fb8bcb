"""GLM-4-Voice-9B as released (ChatGLM remote-code layout) <-> transformers' native ``GlmForCausalLM``.

The two architectures compute the same function; the conversion renames tensors
and splits (or fuses) one of them. Why nothing else changes:

* Attention. ChatGLM's ``query_key_value`` stacks the rows of q, k and v:
  ``[q: heads*d | k: groups*d | v: groups*d]`` under ``multi_query_attention``,
  else ``[q_h | k_h | v_h]`` per head. Query head ``h`` reads kv group
  ``h // (heads / groups)``, as Glm's ``repeat_kv`` does with
  ``num_key_value_heads = multi_query_group_num``. Scores are scaled by
  ``1/sqrt(kv_channels)``; ``apply_query_key_layer_scaling`` divides by the layer
  number and multiplies back before the fp32 softmax, so it changes nothing.
* Rotary. ChatGLM rotates the first ``kv_channels // 2`` lanes of each head as
  adjacent pairs ``(x0, x1), (x2, x3), …`` (GPT-J style, ``original_rope``) with
  ``theta_i = (10000 * rope_ratio) ** (-2i / (kv_channels // 2))``. Glm's
  ``apply_rotary_pos_emb`` rotates the same adjacent pairs of the first
  ``head_dim * partial_rotary_factor`` lanes with the same frequencies, so
  ``partial_rotary_factor = 0.5``, ``rope_theta = 10000 * rope_ratio`` and no row
  permutation (unlike Llama conversions, which de-interleave q and k).
* MLP. ``dense_h_to_4h`` holds ``[gate | up]`` and ChatGLM computes
  ``silu(gate) * up``: Glm's ``gate_up_proj`` as it is.
* Norms are RMSNorm with eps ``layernorm_epsilon``; the final norm, the embedding
  (all ``padded_vocab_size`` rows, padding included) and the untied output layer map 1:1.

Folders are converted one weight shard at a time: at most one input shard and its
converted copy are in memory (plus, on export, q/k/v pieces waiting for a partner
in the next shard).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import GlmConfig

_ROPE_BASE = 10000.0
_LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
_GLM_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_GLOBALS = {  # ChatGLM name -> Glm name
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_IN_LAYER = {  # within layer N
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"  # recomputed by both models: dropped
_GLOBALS_BACK = {v: k for k, v in _GLOBALS.items()}
_IN_LAYER_BACK = {v: k for k, v in _IN_LAYER.items()}
# The released GLM-4(-Voice) config's remote-code entry points.
CHATGLM_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
}
# (key, value Glm cannot express, why): refused rather than converted wrongly.
_UNSUPPORTED = (
    ("rmsnorm", False, "LayerNorm blocks"),
    ("post_layer_norm", False, "no final norm"),
    ("apply_residual_connection_post_layernorm", True, "residuals taken after the norm"),
    ("add_bias_linear", True, "biases on dense/MLP projections"),
    ("original_rope", False, "non-interleaved rotary"),
)
_CHATGLM_DEFAULTS = {  # ChatGLMConfig defaults for flags a config.json may omit
    "rmsnorm": True,
    "post_layer_norm": True,
    "apply_residual_connection_post_layernorm": False,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "original_rope": True,
    "multi_query_attention": False,
    "rope_ratio": 1,
    "attention_dropout": 0.0,
}


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    if key in cfg:
        return cfg[key]
    if key in _CHATGLM_DEFAULTS:
        return _CHATGLM_DEFAULTS[key]
    raise KeyError(f"ChatGLM config lacks {key!r}")


def _heads(cfg: Mapping[str, Any]) -> tuple[int, int, int, bool]:
    """``(num_heads, num_kv_groups, head_dim, multi_query)`` of a ChatGLM config."""
    heads = _get(cfg, "num_attention_heads")
    head_dim = cfg.get("kv_channels") or _get(cfg, "hidden_size") // heads
    mqa = bool(_get(cfg, "multi_query_attention"))
    return heads, (_get(cfg, "multi_query_group_num") if mqa else heads), head_dim, mqa


def chatglm_config_to_glm(cfg: Mapping[str, Any]) -> GlmConfig:
    """The ``GlmConfig`` of a ChatGLM ``config.json`` dict; raises on features Glm lacks."""
    for key, bad, what in _UNSUPPORTED:
        if bool(_get(cfg, key)) == bad:
            raise ValueError(
                f"ChatGLM config has {key}={bad} ({what}): GlmForCausalLM cannot hold it"
            )
    if cfg.get("tie_word_embeddings"):
        raise ValueError("ChatGLM config ties the output layer; GLM-4(-Voice) does not")
    heads, groups, head_dim, _ = _heads(cfg)
    return GlmConfig(
        architectures=["GlmForCausalLM"],
        vocab_size=_get(cfg, "padded_vocab_size"),
        hidden_size=_get(cfg, "hidden_size"),
        intermediate_size=_get(cfg, "ffn_hidden_size"),
        num_hidden_layers=_get(cfg, "num_layers"),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_dim=head_dim,
        hidden_act="silu",
        attention_dropout=float(_get(cfg, "attention_dropout")),
        max_position_embeddings=_get(cfg, "seq_length"),
        rms_norm_eps=float(_get(cfg, "layernorm_epsilon")),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": _ROPE_BASE * float(_get(cfg, "rope_ratio")),
            "partial_rotary_factor": 0.5,
        },
        attention_bias=bool(_get(cfg, "add_qkv_bias")),
        tie_word_embeddings=False,
        use_cache=cfg.get("use_cache", True),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
    )


def glm_config_to_chatglm(config: GlmConfig) -> dict[str, Any]:
    """The released-style ChatGLM ``config.json`` dict of a ``GlmConfig``; raises if it has no such form."""
    rope = dict(config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default" or rope.get("partial_rotary_factor") != 0.5:
        raise ValueError(f"ChatGLM has plain rotary on half of each head, got {rope}")
    if config.hidden_act != "silu" or config.tie_word_embeddings:
        raise ValueError("ChatGLM has SwiGLU (silu) and an untied output layer")
    ratio = rope["rope_theta"] / _ROPE_BASE
    dtype = config.dtype
    return {
        "add_bias_linear": False,
        "add_qkv_bias": bool(config.attention_bias),
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "architectures": ["ChatGLMModel"],
        "attention_dropout": float(config.attention_dropout),
        "attention_softmax_in_fp32": True,
        "auto_map": dict(CHATGLM_AUTO_MAP),
        "bias_dropout_fusion": True,
        "classifier_dropout": None,
        "eos_token_id": config.eos_token_id,
        "ffn_hidden_size": config.intermediate_size,
        "fp32_residual_connection": False,
        "hidden_dropout": 0.0,
        "hidden_size": config.hidden_size,
        "kv_channels": config.head_dim,
        "layernorm_epsilon": config.rms_norm_eps,
        "model_type": "chatglm",
        "multi_query_attention": True,
        "multi_query_group_num": config.num_key_value_heads,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_layers": config.num_hidden_layers,
        "original_rope": True,
        "pad_token_id": config.pad_token_id,
        "padded_vocab_size": config.vocab_size,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": int(ratio) if float(ratio).is_integer() else ratio,
        "seq_length": config.max_position_embeddings,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
        "use_cache": bool(config.use_cache),
        "vocab_size": config.vocab_size,
    }


def _split_qkv(t: torch.Tensor, cfg: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """Fused ``[(heads + 2*groups) * d, …]`` rows -> q ``[heads*d, …]``, k, v ``[groups*d, …]``."""
    heads, groups, d, mqa = _heads(cfg)
    if t.shape[0] != (heads + 2 * groups) * d:
        raise ValueError(
            f"query_key_value has {t.shape[0]} rows, expected {(heads + 2 * groups) * d}"
        )
    if mqa:
        parts = torch.split(t, [heads * d, groups * d, groups * d], dim=0)
    else:  # rows are [q_h k_h v_h] per head
        per_head = t.reshape(heads, 3, d, *t.shape[1:])
        parts = tuple(per_head[:, i].reshape(heads * d, *t.shape[1:]) for i in range(3))
    return tuple(p.clone() for p in parts)  # own storage: safetensors refuses shared views


def chatglm_state_dict_to_glm(
    sd: Mapping[str, torch.Tensor], chatglm_cfg: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Rename/split a ChatGLM state dict (or one shard of it) into Glm names; same dtypes.

    Raises ``KeyError`` on a tensor name this mapping does not know.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        m = _LAYER.fullmatch(key)
        if key == _INV_FREQ:
            continue
        if key in _GLOBALS:
            out[_GLOBALS[key]] = t
        elif m and m[2] in _IN_LAYER:
            out[f"model.layers.{m[1]}.{_IN_LAYER[m[2]]}"] = t
        elif m and m[2] in (
            "self_attention.query_key_value.weight",
            "self_attention.query_key_value.bias",
        ):
            kind = m[2].rsplit(".", 1)[1]
            for name, part in zip("qkv", _split_qkv(t, chatglm_cfg), strict=True):
                out[f"model.layers.{m[1]}.self_attn.{name}_proj.{kind}"] = part
        else:
            raise KeyError(f"unknown ChatGLM tensor {key!r}")
    return out


def _glm_to_chatglm_partial(
    sd: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Convert what can be; return ``(converted, q/k/v pieces whose partners are missing)``."""
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        m = _GLM_LAYER.fullmatch(key)
        if key in _GLOBALS_BACK:
            out[_GLOBALS_BACK[key]] = t
        elif m and m[2] in _IN_LAYER_BACK:
            out[f"transformer.encoder.layers.{m[1]}.{_IN_LAYER_BACK[m[2]]}"] = t
        elif m and re.fullmatch(r"self_attn\.[qkv]_proj\.(weight|bias)", m[2]):
            pending[key] = t
        else:
            raise KeyError(f"unknown Glm tensor {key!r}")
    for key in [k for k in pending if ".q_proj." in k]:
        names = [key, key.replace(".q_proj.", ".k_proj."), key.replace(".q_proj.", ".v_proj.")]
        if all(n in pending for n in names):
            layer, kind = _GLM_LAYER.fullmatch(key)[1], key.rsplit(".", 1)[1]
            fused = torch.cat([pending.pop(n) for n in names], dim=0)
            out[f"transformer.encoder.layers.{layer}.self_attention.query_key_value.{kind}"] = fused
    return out, pending


def glm_state_dict_to_chatglm(
    sd: Mapping[str, torch.Tensor], glm_config: GlmConfig
) -> dict[str, torch.Tensor]:
    """Rename/fuse a whole Glm state dict into the ChatGLM layout (``multi_query_attention``)."""
    glm_config_to_chatglm(glm_config)  # refuses configs ChatGLM cannot express
    out, pending = _glm_to_chatglm_partial(sd)
    if pending:
        raise KeyError(f"q/k/v projections without their partners: {sorted(pending)[:6]}")
    return out


def chatglm_inv_freq(chatglm_cfg: Mapping[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """The released ``rotary_pos_emb.inv_freq`` buffer ``[kv_channels // 4]`` (base 10000).

    ChatGLM's forward recomputes the frequencies with ``rope_ratio``; the buffer is
    written only because its remote code expects to load it.
    """
    dim = _heads(chatglm_cfg)[2] // 2
    return (1.0 / _ROPE_BASE ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)).to(dtype)


def _torch_dtype(chatglm_cfg: Mapping[str, Any]) -> torch.dtype:
    return getattr(torch, chatglm_cfg.get("torch_dtype") or "float32")


def weight_files(folder: str | Path) -> list[Path]:
    """The weight shards of a HF-style folder: safetensors or ``pytorch_model*.bin``, index first."""
    folder = Path(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return [folder / name for name in dict.fromkeys(sorted(weight_map.values()))]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(
        f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    )


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _prepare_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} is not empty; pass overwrite=True to write into it")
    dst.mkdir(parents=True, exist_ok=True)


def _save_shard(tensors: dict[str, torch.Tensor], dst: Path, name: str, weight_map: dict) -> int:
    """Write one safetensors shard, record its keys in ``weight_map``; return its bytes."""
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(dst / name), metadata={"format": "pt"}
    )
    weight_map.update(dict.fromkeys(tensors, name))
    return sum(v.numel() * v.element_size() for v in tensors.values())


def _shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _meta_glm_keys(config: GlmConfig) -> dict[str, torch.Tensor]:
    """The state dict of ``GlmForCausalLM(config)`` on the meta device (names and shapes only)."""
    from transformers import GlmForCausalLM

    with torch.device("meta"):
        return GlmForCausalLM(config).state_dict()


def _write_index(dst: Path, weight_map: dict[str, str], total_size: int) -> None:
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _check_keys(got: set[str], expected: set[str], what: str) -> None:
    if got != expected:
        raise ValueError(
            f"{what}: missing {sorted(expected - got)[:6]}, unexpected {sorted(got - expected)[:6]}"
        )


def convert_chatglm_dir(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> Path:
    """Released ChatGLM folder -> native ``GlmForCausalLM`` folder (no remote code needed).

    Writes one output shard per input shard, an index, ``config.json``, the
    ``generation_config.json`` if any, and (from ``tokenizer.model``) a fast tokenizer.
    """
    src, dst = Path(src), Path(dst)
    _prepare_dst(dst, overwrite)
    chatglm_cfg = json.loads((src / "config.json").read_text())
    config = chatglm_config_to_glm(chatglm_cfg)
    files = weight_files(src)
    weight_map: dict[str, str] = {}
    total = 0
    for i, path in enumerate(tqdm(files, desc="ChatGLM -> Glm shards", unit="shard")):
        out = chatglm_state_dict_to_glm(_load_shard(path), chatglm_cfg)
        total += _save_shard(out, dst, _shard_name(i, len(files)), weight_map)
        del out
    _check_keys(set(weight_map), set(_meta_glm_keys(config)), f"{src} converted")
    _write_index(dst, weight_map, total)
    config.save_pretrained(str(dst))
    if (src / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
    if (src / "tokenizer.model").is_file():
        from bayling_duplex.model.glm_tokenizer import convert_glm_tokenizer_dir

        convert_glm_tokenizer_dir(src, dst)
    return dst


def export_chatglm_dir(
    src_native_dir: str | Path,
    dst: str | Path,
    *,
    remote_code_from: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Native Glm folder -> the released ChatGLM layout (shards, index, ``config.json``).

    A fast tokenizer in the folder is written back as ``tokenizer.model`` +
    ``tokenizer_config.json``. ChatGLM's modelling code is not ours to ship: pass
    ``remote_code_from`` (a released folder) to copy its ``*.py`` files along.
    """
    src, dst = Path(src_native_dir), Path(dst)
    _prepare_dst(dst, overwrite)
    config = GlmConfig.from_pretrained(str(src))
    chatglm_cfg = glm_config_to_chatglm(config)
    files = weight_files(src)
    weight_map: dict[str, str] = {}
    total = 0
    pending: dict[str, torch.Tensor] = {}
    for i, path in enumerate(tqdm(files, desc="Glm -> ChatGLM shards", unit="shard")):
        out, pending = _glm_to_chatglm_partial({**pending, **_load_shard(path)})
        if i == len(files) - 1:
            out[_INV_FREQ] = chatglm_inv_freq(chatglm_cfg, _torch_dtype(chatglm_cfg))
        total += _save_shard(out, dst, _shard_name(i, len(files)), weight_map)
        del out
    if pending:
        raise KeyError(f"q/k/v projections without their partners: {sorted(pending)[:6]}")
    expected = glm_state_dict_to_chatglm(_meta_glm_keys(config), config)
    _check_keys(set(weight_map), {*expected, _INV_FREQ}, f"{src} exported")
    _write_index(dst, weight_map, total)
    (dst / "config.json").write_text(json.dumps(chatglm_cfg, indent=2) + "\n")
    if (src / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
    if (src / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        from bayling_duplex.model.glm_tokenizer import export_glm_tokenizer_dir

        export_glm_tokenizer_dir(PreTrainedTokenizerFast.from_pretrained(str(src)), dst)
    if remote_code_from is not None:
        for py in sorted(Path(remote_code_from).glob("*.py")):
            shutil.copy2(py, dst / py.name)
    return dst
