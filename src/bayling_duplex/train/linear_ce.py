"""Cross-entropy through the output layer without the full logits.

At GLM-4-Voice-9B scale the logits of a micro-batch of 4 × 1875 tokens are
7500 × 168 960 numbers: 2.5 GB in bf16, twice that for the float32 copy the loss
makes, and as much again for their gradient. :func:`linear_cross_entropy` takes
the final hidden states of the *target* rows only and the output layer's weight,
and walks the vocabulary one slice of columns at a time:

* forward: each slice's logits (float32) feed a running log-sum-exp and, where a
  row's target falls in the slice, its target logit; the slice is then dropped.
  Per row only ``lse - target_logit`` (float32) is kept.
* backward (:class:`_ChunkedLinearCE`): each slice's logits are recomputed,
  turned into ``softmax - onehot`` scaled by the upstream per-row gradient, and
  projected at once onto the hidden states (accumulated in float32) and onto the
  weight's rows of that slice (written once, so no rounding from accumulation).

So at most one slice of logits (``chunk_elements`` float32 numbers, 128 MiB by
default) is alive at a time, in forward and backward; the price is one more
matmul (the recompute) than the plain path, on the target rows only.

**Channels.** With ``audio_columns=(a0, a1)`` the softmax of a row is restricted
to the columns of its channel: rows flagged in ``audio_rows`` over the audio ids
``[a0, a1)``, the others over every other id, the masks the streaming decoder
applies. Each row only visits its own columns, so the restricted loss is also
cheaper (an audio row reads 16 384 columns instead of 168 960).

**DeepSpeed ZeRO-3.** This module knows nothing of partitioned weights: the
caller runs it as the forward of the output layer's own module
(:func:`bayling_duplex.train.output_layer.call_output_layer`), so ZeRO-3's module
hooks gather the weight for the forward, again for the backward, and release it
only once its gradient is accumulated, as for any linear layer.

**Liger-Kernel.** ``impl="liger"`` runs Liger's fused linear cross-entropy
(Triton, CUDA only) behind the same interface, when it is installed (>= 0.8.2:
earlier versions returned wrong weight gradients for per-token losses). It is
never imported unless asked for; :func:`liger_unavailable` says why it cannot run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# one slice of logits: this many float32 numbers (128 MiB); its width is this / rows
DEFAULT_CHUNK_ELEMENTS = 2**25
LIGER_MIN_VERSION = "0.8.2"

# (rows of the group, or None for all rows; the column ranges of their softmax)
Group = tuple[torch.Tensor | None, tuple[tuple[int, int], ...]]


def _slices(ranges: Sequence[tuple[int, int]], rows: int, chunk_elements: int) -> Iterator:
    """``(c0, c1)`` column slices covering ``ranges``, each at most ``chunk_elements / rows`` wide."""
    width = max(1, chunk_elements // max(rows, 1))
    for start, end in ranges:
        for c0 in range(start, end, width):
            yield c0, min(c0 + width, end)


def _target_column(targets: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inside [n] bool, column [n, 1])``: whether each target lies in ``[c0, c1)``, and
    its column there (clamped, so it can be gathered without a host sync)."""
    inside = (targets >= c0) & (targets < c1)
    return inside, (targets - c0).clamp(0, c1 - c0 - 1)[:, None]


def _group_forward(h, weight, targets, ranges, chunk_elements):
    """Log-sum-exp over ``ranges`` and the target logit of each row (both float32 ``[n]``).
    The matmuls run in ``h``'s dtype (the caller's compute dtype)."""
    n, acc = h.shape[0], _acc_dtype(h)
    lse = torch.full((n,), float("-inf"), dtype=acc, device=h.device)
    picked = torch.full((n,), float("-inf"), dtype=acc, device=h.device)
    for c0, c1 in _slices(ranges, n, chunk_elements):
        z = (h @ weight[c0:c1].to(h.dtype).T).to(acc)
        lse = torch.logaddexp(lse, torch.logsumexp(z, dim=1))
        inside, col = _target_column(targets, c0, c1)
        picked = torch.where(inside, z.gather(1, col).squeeze(1), picked)
    return lse, picked


def _group_backward(h, weight, targets, lse, grad, ranges, chunk_elements, grad_w, need_h):
    """Add each slice's gradient into ``grad_w`` (in place) and return the float32 gradient of
    ``h`` (or None). ``grad [n]`` is the upstream gradient of each row's loss."""
    acc = _acc_dtype(h)
    grad_h = torch.zeros(h.shape, dtype=acc, device=h.device) if need_h else None
    for c0, c1 in _slices(ranges, h.shape[0], chunk_elements):
        w = weight[c0:c1].to(h.dtype)
        g = (h @ w.T).to(acc).sub_(lse[:, None]).exp_().mul_(grad[:, None])  # softmax * grad
        inside, col = _target_column(targets, c0, c1)
        g.scatter_add_(1, col, torch.where(inside, -grad, 0.0)[:, None])  # - onehot * grad
        g = g.to(h.dtype)
        if grad_h is not None:
            grad_h += g @ w
        if grad_w is not None and grad_w.dtype == h.dtype:
            grad_w[c0:c1].addmm_(g.T, h)
        elif grad_w is not None:  # autocast: float32 weights, bf16 matmuls
            grad_w[c0:c1] += g.T @ h
    return grad_h


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _acc_dtype(h: torch.Tensor) -> torch.dtype:
    """float32 for the logits of a bf16/fp16/fp32 matmul (float64 stays float64, for gradcheck)."""
    return torch.promote_types(h.dtype, torch.float32)


def _select(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t.index_select(0, rows)


class _ChunkedLinearCE(torch.autograd.Function):
    """Per-row cross-entropy of ``hidden @ weight.T`` against ``targets``, slice by slice;
    the backward recomputes each slice (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, groups: tuple[Group, ...], chunk_elements: int):
        # the matmuls' dtype: autocast's when it is on (as for the model's own output
        # layer), else the weight's
        dt = _compute_dtype(hidden, weight)
        ctx.compute_dtype = dt
        hidden_c = hidden.to(dt)
        acc = _acc_dtype(hidden_c)
        lse = torch.full(targets.shape, float("-inf"), dtype=acc, device=hidden.device)
        picked = torch.full(targets.shape, float("-inf"), dtype=acc, device=hidden.device)
        for rows, ranges in groups:
            g_lse, g_picked = _group_forward(
                _select(hidden_c, rows), weight, _select(targets, rows), ranges, chunk_elements
            )
            if rows is None:
                lse, picked = g_lse, g_picked
            else:
                lse.index_copy_(0, rows, g_lse)
                picked.index_copy_(0, rows, g_picked)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.groups, ctx.chunk_elements = groups, chunk_elements
        return lse - picked

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = _acc_dtype(hidden.to(ctx.compute_dtype)[:0])
        grad = grad.to(acc)
        grad_h = torch.zeros(hidden.shape, dtype=acc, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for rows, ranges in ctx.groups:
            g_h = _group_backward(
                _select(hidden.to(ctx.compute_dtype), rows),
                weight,
                _select(targets, rows),
                _select(lse, rows),
                _select(grad, rows),
                ranges,
                ctx.chunk_elements,
                grad_w,
                need_h,
            )
            if g_h is not None:
                grad_h = g_h if rows is None else grad_h.index_add_(0, rows, g_h)
        return (grad_h.to(hidden.dtype) if need_h else None), grad_w, None, None, None


def channel_groups(
    num_columns: int,
    audio_rows: torch.Tensor | None = None,
    audio_columns: tuple[int, int] | None = None,
) -> tuple[Group, ...]:
    """The row groups and their softmax columns: all rows over all columns, or (channels)
    the ``audio_rows`` over ``[a0, a1)`` and the others over the rest."""
    if audio_columns is None:
        return ((None, ((0, num_columns),)),)
    if audio_rows is None:
        raise ValueError("audio_columns needs audio_rows (which rows are audio targets)")
    a0, a1 = audio_columns
    if not 0 <= a0 < a1 <= num_columns:
        raise ValueError(f"audio columns [{a0}, {a1}) do not lie in [0, {num_columns})")
    audio = audio_rows.nonzero().squeeze(1)
    other = (~audio_rows).nonzero().squeeze(1)
    return ((audio, ((a0, a1),)), (other, ((0, a0), (a1, num_columns))))


def liger_unavailable(device: torch.device | str) -> str | None:
    """Why Liger's fused kernel cannot run on ``device`` (None: it can)."""
    from importlib import metadata

    from packaging.version import Version

    if torch.device(device).type != "cuda":
        return "it runs on CUDA devices only"
    for dist in ("liger-kernel", "liger-kernel-nightly"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        if Version(version) < Version(LIGER_MIN_VERSION):
            return f"{dist} {version} is older than {LIGER_MIN_VERSION} (wrong per-token gradients)"
        return None
    return "liger-kernel is not installed (pip install liger-kernel)"


def _liger(hidden, weight, targets) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    ce = liger_fused_linear_cross_entropy(
        hidden, weight, targets, reduction="none", accum_dtype=torch.float32
    )
    return ce.float()


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    audio_rows: torch.Tensor | None = None,
    audio_columns: tuple[int, int] | None = None,
    impl: str = "chunked",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Cross-entropy of each row of ``hidden [n, H] @ weight.T [H, V]`` against ``targets [n]``.

    Returns float32 ``[n]`` (float64 for float64 inputs), differentiable w.r.t. ``hidden`` and ``weight``; the full
    ``[n, V]`` logits never exist. ``audio_columns`` (with ``audio_rows [n]`` bool)
    restricts each row's softmax to its channel's columns (module docstring).
    ``impl``: ``"chunked"`` (PyTorch, any device) or ``"liger"`` (see
    :func:`liger_unavailable`; channels always take the chunked path).
    """
    if impl == "liger" and audio_columns is None and len(targets):
        return _liger(hidden, weight, targets)
    if impl not in ("chunked", "liger"):
        raise ValueError(f"impl must be 'chunked' or 'liger', got {impl!r}")
    groups = channel_groups(weight.shape[0], audio_rows, audio_columns)
    return _ChunkedLinearCE.apply(hidden, weight, targets, groups, chunk_elements)
