"""GLM-4-Voice-9B's shapes for the benchmarks: the released ChatGLM config's architecture,
converted by the project's own mapping (``model/chatglm.py``), parameter counts and FLOPs.

Only the keys that fix the architecture matter here (layers, widths, heads, vocabulary,
biases); ``rope_ratio`` and ``seq_length`` change neither the counts nor the FLOPs.
"""

from __future__ import annotations

from bayling_duplex.model.chatglm import chatglm_config_to_glm

# The architecture keys of THUDM/glm-4-voice-9b's config.json (ChatGLM layout).
CHATGLM_9B = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "num_layers": 40,
    "hidden_size": 4096,
    "ffn_hidden_size": 13696,
    "kv_channels": 128,
    "num_attention_heads": 32,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "padded_vocab_size": 168960,
    "layernorm_epsilon": 1.5625e-07,
    "rope_ratio": 1,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "rmsnorm": True,
    "original_rope": True,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# The released duplex tokenizer's audio ids (format §1; benchmarks/bench_decoder.py).
AUDIO_START_ID, NUM_AUDIO = 152353, 16383


def glm_config(num_layers: int | None = None):
    """The native ``GlmConfig`` of GLM-4-Voice-9B, optionally with fewer layers."""
    cfg = dict(CHATGLM_9B)
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    return chatglm_config_to_glm(cfg)


def param_counts(config) -> dict[str, int]:
    """Exact parameter counts of ``GlmForCausalLM(config)`` (built on the meta device):
    ``total``, ``layer`` (one decoder layer), ``layer_matmul`` (its weight matrices only),
    ``head`` (the output layer), ``embedding``, and ``largest_layer`` as DeepSpeed's
    ZeRO-3 estimator counts it (the most parameters held directly by one module)."""
    import torch
    from transformers import GlmForCausalLM

    with torch.device("meta"):
        model = GlmForCausalLM(config)
    layer = model.model.layers[0]
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "layer": sum(p.numel() for p in layer.parameters()),
        "layer_matmul": sum(p.numel() for p in layer.parameters() if p.dim() == 2),
        "head": model.lm_head.weight.numel(),
        "embedding": model.model.embed_tokens.weight.numel(),
        "largest_layer": max(
            sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()
        ),
    }


def train_flops(config, doc_lengths: list[int], num_layers: int | None = None) -> float:
    """Model FLOPs of one training step (forward + backward, no recompute) over dialogues of
    ``doc_lengths`` tokens, for ``num_layers`` decoder layers of ``config`` (default: all)
    and the output layer over the whole vocabulary at every position.

    6 FLOPs per matmul weight per token; causal attention, scores and values against
    ``n / 2`` keys on average in a dialogue of ``n``: ``6 · heads · head_dim · n²`` per
    layer and dialogue. The embedding lookup, norms and the softmax are not counted.
    """
    counts = param_counts(config)
    layers = config.num_hidden_layers if num_layers is None else num_layers
    tokens = sum(doc_lengths)
    dense = tokens * (layers * 6 * counts["layer_matmul"] + 6 * counts["head"])
    attention = (
        layers * 6 * config.num_attention_heads * config.head_dim * sum(n * n for n in doc_lengths)
    )
    return float(dense + attention)


def duplex_tokens(tokens: int, audio: tuple[int, int], seed: int = 0) -> dict[str, list[int]]:
    """One dialogue's ``input_ids`` and ``classes`` in the duplex format's block layout: per
    block of 25, 10 user audio positions (no loss), 5 text-channel slots ([SILENCE],
    control or text tokens, ids below ``audio[0]``) and 10 assistant audio frames (speech
    or silent audio, ids in ``[audio[0], audio[1])``); random ids, a fixed seed."""
    import torch

    from bayling_duplex.format.interleave import TokenClass

    g = torch.Generator().manual_seed(seed)
    kind = torch.tensor(([0] * 10 + [1] * 5 + [2] * 10) * (tokens // 25 + 1))[:tokens]
    text = torch.tensor([TokenClass.SILENCE_SLOT, TokenClass.CONTROL, TokenClass.TEXT])
    speech = torch.tensor([TokenClass.SPEECH, TokenClass.SILENT_AUDIO])
    classes = torch.where(
        kind == 1,
        text[torch.randint(0, 3, (tokens,), generator=g)],
        speech[torch.randint(0, 2, (tokens,), generator=g)],
    )
    classes = torch.where(kind == 0, int(TokenClass.USER_AUDIO), classes)
    audio_ids = torch.randint(audio[0], audio[1], (tokens,), generator=g)
    text_ids = torch.randint(0, audio[0], (tokens,), generator=g)
    ids = torch.where(kind == 1, text_ids, audio_ids)
    return {"input_ids": ids.tolist(), "classes": classes.tolist()}
