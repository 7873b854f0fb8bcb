"""The model's output layer as a weight, and its final hidden states without the logits.

The chunked loss (:mod:`bayling_duplex.train.linear_ce`) needs the two inputs of
the output layer rather than its output: the final hidden states (after the last
norm) and the weight ``[V, H]``. A causal LM of transformers gives the first
through ``output_hidden_states`` (its last entry is the normed last hidden state)
while ``logits_to_keep=1`` limits its own logits to one position per row, so the
model is still called as a whole (DeepSpeed's engine, peft and the Trainer see an
ordinary forward) and no ``[batch, seq, V]`` tensor is made.

The loss then runs *as the forward of the output layer's module*
(:func:`call_output_layer`), not beside it: whatever manages that module's
parameters through module hooks sees an ordinary call of it. DeepSpeed ZeRO-3 does:
its hooks gather the partitioned weight for the forward, gather it again when the
gradient reaches the loss, and release it only after the weight's gradient is
accumulated (autograd runs that first). A weight gathered by hand and released
before then fails there (the gradient is copied into the empty partition).

The weight is found under the wrappers training puts around the model: DeepSpeed's
engine or DDP (``.module``), peft (``get_base_model()``), and peft's trainable
token rows (``trainable_token_indices``: the weight with the trained rows put in,
differentiable w.r.t. them). Anything else around the output layer (a LoRA adapter
on ``lm_head``, a bias) has no single weight matrix, and is refused.
"""

from __future__ import annotations

import inspect

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DeepSpeed's engine, DDP and peft wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def output_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module the model computes its logits with (``lm_head``, or peft's wrapper of it)."""
    return unwrap(model).get_output_embeddings()


def output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The ``[V, H]`` matrix the output layer multiplies by (peft's trained rows included).

    Raises ``ValueError`` for an output layer that is not a plain bias-free linear map.
    """
    head = output_module(model)
    tokens = getattr(head, "token_adapter", None)  # peft's TrainableTokensWrapper
    if tokens is not None:
        if tokens.merged or tokens.disable_adapters or not tokens.active_adapters:
            return tokens.base_layer.weight
        return tokens.get_merged_weights(tokens.active_adapters)
    if type(head) is not torch.nn.Linear or head.bias is not None:
        raise ValueError(
            f"the output layer is a {type(head).__name__} (with an adapter or a bias): the chunked "
            "loss needs a plain linear output layer; set train.loss_impl=full"
        )
    return head.weight


def check_hidden_state_forward(model: torch.nn.Module) -> None:
    """Refuse a model whose forward cannot skip the full logits (no ``logits_to_keep``:
    e.g. a checkpoint's own remote code), naming the setting that works with it."""
    params = inspect.signature(unwrap(model).forward).parameters
    if "logits_to_keep" not in params:
        raise ValueError(
            f"{type(unwrap(model)).__name__}.forward takes no logits_to_keep: the chunked loss "
            "needs transformers' native model classes; set train.loss_impl=full"
        )
    output_weight(model)


def final_hidden_states(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, object]:
    """``(hidden [batch, seq, H], outputs)``: the model's normed last hidden states, its own
    logits kept for the last position only."""
    outputs = model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
    return outputs.hidden_states[-1], outputs


def call_output_layer(model: torch.nn.Module, fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(weight, *tensors)`` run as the forward of the output layer's module (see the
    module docstring), with ``weight`` its :func:`output_weight` at that moment.

    ``tensors`` are passed as the call's inputs, so hooks that act on a module's inputs
    and outputs (ZeRO-3 re-gathers on the output's gradient, releases on the inputs')
    see them. The module's own ``forward`` is put back afterwards.
    """
    head = output_module(model)
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate, peft) …
    head.forward = lambda *args: fn(output_weight(model), *args)
    try:
        return head(*tensors)
    finally:
        if own is None:
            del head.forward
        else:  # … is restored as it was
            head.forward = own
