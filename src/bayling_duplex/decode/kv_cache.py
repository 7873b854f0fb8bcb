"""A KV cache whose layers append into spare room (used by the streaming decoder)."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into spare room instead of re-concatenating.

    transformers' ``DynamicLayer`` concatenates the whole history on every
    token, an ``O(L)`` copy per token that dominates long dialogues on a CPU.
    Here keys and values live in a buffer with room to spare (doubled when
    full), ``keys``/``values`` are views of its filled part, and an append
    copies the new tokens only. A base method that replaces ``keys`` (``crop``
    keeps the view; ``batch_repeat_interleave`` does not) is noticed on the
    next update and the buffer is rebuilt from it.
    """

    def __init__(self, capacity: int = 0) -> None:
        super().__init__()
        self.capacity = capacity
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        kbuf = self._kbuf
        if not self._owns() or n + new > kbuf.shape[-2] or kbuf.shape[0] != key_states.shape[0]:
            cap = max(self.capacity, 2 * (n + new))
            self._kbuf = self._regrow(self.keys, n, key_states, cap)
            self._vbuf = self._regrow(self.values, n, value_states, cap)
        self._kbuf[..., n : n + new, :] = key_states
        self._vbuf[..., n : n + new, :] = value_states
        self.keys = self._kbuf[..., : n + new, :]
        self.values = self._vbuf[..., : n + new, :]
        return self.keys, self.values

    def _owns(self) -> bool:
        """Whether ``keys`` is still the view of the buffer that :meth:`update` left."""
        return (
            self._kbuf is not None
            and self.get_seq_length() > 0
            and self.keys.data_ptr() == self._kbuf.data_ptr()
            and self.keys.shape[0] == self._kbuf.shape[0]
        )

    @staticmethod
    def _regrow(old: torch.Tensor, n: int, like: torch.Tensor, cap: int) -> torch.Tensor:
        buf = like.new_empty((*like.shape[:-2], cap, like.shape[-1]))
        if n:
            buf[..., :n, :] = old
        return buf

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self._owns():
            super().batch_select_indices(indices)
            return
        n = self.get_seq_length()
        self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]


def growing_cache(config, capacity: int = 0) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers are :class:`_GrowingLayer`.

    ``capacity`` (tokens) is the room reserved at the first update; 0 = just double as needed.
    """
    cache = DynamicCache(config=config)
    cache.layers = [
        _GrowingLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers
    ]
    return cache
