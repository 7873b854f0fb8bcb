"""ChatGLM (GLM-4-Voice as released) <-> native Glm: same logits, exact round trips.

The reference below is ChatGLM's forward written from its architecture (not from
Glm's code), so a mapping error (rotary style or fraction, q/k/v order, gate/up
order, theta) shows up as a logits mismatch.
"""

from __future__ import annotations

import base64
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM

from bayling_duplex.model.chatglm import (
    chatglm_config_to_glm,
    chatglm_state_dict_to_glm,
    convert_chatglm_dir,
    export_chatglm_dir,
    glm_config_to_chatglm,
    glm_state_dict_to_chatglm,
)

# A tiny GLM-4-Voice: real key names, GQA with 2 groups, kv_channels != hidden/heads.
CFG = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "num_layers": 2,
    "hidden_size": 64,
    "ffn_hidden_size": 96,
    "kv_channels": 16,
    "num_attention_heads": 4,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "padded_vocab_size": 128,
    "layernorm_epsilon": 1.5625e-07,
    "rope_ratio": 500,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "rmsnorm": True,
    "original_rope": True,
    "seq_length": 256,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "eos_token_id": [120, 121],
    "pad_token_id": 120,
}
MHA_CFG = {**CFG, "multi_query_attention": False, "kv_channels": 8}


def chatglm_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the released names and shapes."""
    g = torch.Generator().manual_seed(seed)
    h, d, heads = cfg["hidden_size"], cfg["kv_channels"], cfg["num_attention_heads"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    qkv = (heads + 2 * groups) * d

    def rand(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd = {"transformer.embedding.word_embeddings.weight": rand(cfg["padded_vocab_size"], h, std=1)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + rand(h)
        sd[p + "self_attention.query_key_value.weight"] = rand(qkv, h)
        sd[p + "self_attention.query_key_value.bias"] = rand(qkv)
        sd[p + "self_attention.dense.weight"] = rand(h, heads * d)
        sd[p + "post_attention_layernorm.weight"] = 1 + rand(h)
        sd[p + "mlp.dense_h_to_4h.weight"] = rand(2 * cfg["ffn_hidden_size"], h)
        sd[p + "mlp.dense_4h_to_h.weight"] = rand(h, cfg["ffn_hidden_size"])
    sd["transformer.encoder.final_layernorm.weight"] = 1 + rand(h)
    sd["transformer.output_layer.weight"] = rand(cfg["padded_vocab_size"], h)
    rot = d // 2
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, rot, 2) / rot)
    return sd


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _chatglm_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate adjacent pairs of the first half of each head: x ``[b, s, n, d]``."""
    s, d = x.shape[1], x.shape[-1]
    rot = d // 2
    theta = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    ang = torch.arange(s, dtype=torch.float32)[:, None] * theta  # [s, rot/2]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    pairs = x[..., :rot].reshape(*x.shape[:-1], rot // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)
    return torch.cat([rotated, x[..., rot:]], dim=-1)


def chatglm_forward(sd: dict, cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """ChatGLM's forward from its architecture: ids ``[b, s]`` -> logits ``[b, s, vocab]``."""
    eps, d, heads = cfg["layernorm_epsilon"], cfg["kv_channels"], cfg["num_attention_heads"]
    mqa = cfg["multi_query_attention"]
    groups = cfg["multi_query_group_num"] if mqa else heads
    b, s = ids.shape
    x = sd["transformer.embedding.word_embeddings.weight"][ids]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        y = _rms(x, sd[p + "input_layernorm.weight"], eps)
        qkv = y @ sd[p + "self_attention.query_key_value.weight"].T
        qkv = qkv + sd[p + "self_attention.query_key_value.bias"]
        if mqa:
            q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
            q, k, v = q.view(b, s, heads, d), k.view(b, s, groups, d), v.view(b, s, groups, d)
        else:
            q, k, v = qkv.view(b, s, heads, 3 * d).split(d, dim=-1)
        q = _chatglm_rope(q, 10000.0 * cfg["rope_ratio"])
        k = _chatglm_rope(k, 10000.0 * cfg["rope_ratio"])
        k = k.repeat_interleave(heads // groups, dim=2)  # group g serves heads g*r … g*r+r-1
        v = v.repeat_interleave(heads // groups, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        ctx = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, heads * d)
        x = x + ctx @ sd[p + "self_attention.dense.weight"].T
        y = _rms(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = (y @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = _rms(x, sd["transformer.encoder.final_layernorm.weight"], eps)
    return x @ sd["transformer.output_layer.weight"].T


IDS = torch.tensor(
    [[5, 17, 99, 3, 127, 64, 8, 8, 42, 1, 0, 77], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 126]]
)


def _glm_logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def write_chatglm_dir(path, cfg: dict, sd: dict, num_shards: int = 2) -> None:
    """A released-style folder: config.json, sharded safetensors + index, tiktoken tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    keys = list(sd)
    weight_map = {}
    for i in range(num_shards):
        name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::num_shards]}
        save_file(part, str(path / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    ranks = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256))
    (path / "tokenizer.model").write_text(ranks)
    added = {
        str(256 + i): {"content": t, "special": True}
        for i, t in enumerate(["<|endoftext|>", "[gMASK]", "<sop>"])
    }
    (path / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": added, "eos_token": "<|endoftext|>"})
    )


def test_config_mapping():
    c = chatglm_config_to_glm(CFG)
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (
        128,
        64,
        96,
        2,
    )
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert c.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 5e6,
        "partial_rotary_factor": 0.5,
    }
    assert (
        c.rms_norm_eps == CFG["layernorm_epsilon"]
        and c.attention_bias
        and not c.tie_word_embeddings
    )
    assert (
        c.max_position_embeddings == 256 and c.eos_token_id == [120, 121] and c.pad_token_id == 120
    )
    back = glm_config_to_chatglm(c)
    assert {k: back[k] for k in CFG} == CFG
    assert (
        back["auto_map"]["AutoModelForCausalLM"]
        == "modeling_chatglm.ChatGLMForConditionalGeneration"
    )


@pytest.mark.parametrize("cfg", [CFG, MHA_CFG], ids=["gqa", "mha"])
def test_converted_model_matches_chatglm_forward(cfg):
    sd = chatglm_state_dict(cfg)
    model = GlmForCausalLM(chatglm_config_to_glm(cfg)).eval()
    model.load_state_dict(chatglm_state_dict_to_glm(sd, cfg), strict=True)
    torch.testing.assert_close(
        _glm_logits(model), chatglm_forward(sd, cfg, IDS), atol=1e-5, rtol=1e-5
    )


def test_state_dict_round_trip_is_exact():
    sd = chatglm_state_dict(CFG)
    back = glm_state_dict_to_chatglm(chatglm_state_dict_to_glm(sd, CFG), chatglm_config_to_glm(CFG))
    assert set(back) == set(sd) - {"transformer.rotary_pos_emb.inv_freq"}
    for k, v in back.items():
        assert torch.equal(v, sd[k]), k


def test_folder_convert_export_convert(tmp_path):
    sd = chatglm_state_dict(CFG)
    write_chatglm_dir(tmp_path / "released", CFG, sd)
    reference = chatglm_forward(sd, CFG, IDS)

    convert_chatglm_dir(tmp_path / "released", tmp_path / "native")
    assert not (tmp_path / "native" / "modeling_chatglm.py").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    assert type(model) is GlmForCausalLM
    torch.testing.assert_close(_glm_logits(model), reference, atol=1e-5, rtol=1e-5)
    tok = AutoTokenizer.from_pretrained(tmp_path / "native")
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "[gMASK]", "<sop>"]) == [256, 257, 258]

    # Tiny shards so that q/k/v of one layer land in different files.
    model.save_pretrained(tmp_path / "native_sharded", max_shard_size="20KB")
    tok.save_pretrained(tmp_path / "native_sharded")
    assert len(list((tmp_path / "native_sharded").glob("*.safetensors"))) > 3
    export_chatglm_dir(tmp_path / "native_sharded", tmp_path / "exported")
    exported_cfg = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert {k: exported_cfg[k] for k in CFG} == CFG
    index = json.loads((tmp_path / "exported" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sd)
    for name in set(index["weight_map"].values()):
        for k, v in load_file(str(tmp_path / "exported" / name)).items():
            torch.testing.assert_close(v, sd[k], atol=0, rtol=0, msg=k)
    assert (tmp_path / "exported" / "tokenizer.model").read_text() == (
        tmp_path / "released" / "tokenizer.model"
    ).read_text()

    convert_chatglm_dir(tmp_path / "exported", tmp_path / "native2")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "native2", dtype=torch.float32).eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(_glm_logits(again), _glm_logits(model), atol=0, rtol=0)


def test_pytorch_bin_source(tmp_path):
    sd = chatglm_state_dict(CFG, seed=1)
    src = tmp_path / "bin"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CFG))
    torch.save(sd, src / "pytorch_model.bin")
    convert_chatglm_dir(src, tmp_path / "native")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    torch.testing.assert_close(
        _glm_logits(model), chatglm_forward(sd, CFG, IDS), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(FileExistsError):
        convert_chatglm_dir(src, tmp_path / "native")


@pytest.mark.parametrize(
    "override",
    [
        {"rmsnorm": False},
        {"post_layer_norm": False},
        {"add_bias_linear": True},
        {"apply_residual_connection_post_layernorm": True},
        {"original_rope": False},
    ],
)
def test_unsupported_configs_are_refused(override):
    with pytest.raises(ValueError, match=next(iter(override))):
        chatglm_config_to_glm({**CFG, **override})


def test_unknown_tensor_is_refused():
    sd = {"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 2)}
    with pytest.raises(KeyError, match="prefix_encoder"):
        chatglm_state_dict_to_glm(sd, CFG)
