"""Dialogues that join and leave one decoding batch at block boundaries (the live server's batch).

:meth:`DuplexDecoder.decode_batch <bayling_duplex.decode.decoder.DuplexDecoder.decode_batch>`
runs dialogues that start together: every row sits at the same position, so no
row is padded. Live sessions start whenever a person connects, so the rows of
one step sit at *different* positions. :class:`SharedBatch` batches them anyway:

* each dialogue keeps its own KV cache (per layer ``[heads, capacity, head_dim]``,
  grown by doubling) and its own decoding state (response and ``[EPAD]`` counts,
  stop reason), so it can join or leave between any two blocks at no cost to the
  others, and leaving frees its cache at once;
* :meth:`SharedBatch.step` decodes one block for any subset of the dialogues
  together: their caches are copied once per block into a right-padded batch
  cache (row ``i`` holds its ``n_i`` cached tokens at ``[0, n_i)``), every
  forward gets per-row position ids ``n_i + t`` and a 4-D additive attention mask
  that lets row ``i``'s token ``t`` see exactly its own keys ``[0, n_i + t]``;
  new keys are scattered to each row's own offset. After the block, each row's
  ``2B+T`` new keys are appended to its own cache.

Masked keys get a weight of exactly 0, so a row sees exactly the inputs it would
see alone: greedy tokens equal those of :meth:`DuplexDecoder.decode` on the
dialogue alone, up to the floating-point order of batched kernels (tested with
dialogues joining at different blocks and random subsets stepping).

The copy into the batch cache costs one read of each row's cache per block,
while the block's ``2B+T`` forwards read it ``2B+T`` times, so it adds about
1/25 to the attention's memory traffic (measured in ``benchmarks/bench_serve.py
--batching``). The padded keys cost compute: a row's attention spans the longest
row's length. The mask is an explicit 4-D tensor, so the attention must be
``sdpa`` or ``eager`` (not flash-attention); on a CPU the grouped KV heads are read
as they are (:func:`_masked_gqa`), not repeated per query head.

Sampling (``temperature > 0``) draws from one generator for the whole batch, so
sampled tokens depend on which dialogues share a step; greedy ones do not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from bayling_duplex.decode.decoder import DuplexDecoder, _Session
from bayling_duplex.decode.events import _REASONS, AudioBlock, Event, Stop, text_events


@dataclass(frozen=True)
class BlockOutput:
    """One decoded block of one dialogue: output block ``block`` covers frames ``[(k+1)B, (k+2)B)``."""

    block: int
    text_ids: tuple[int, ...]  # the T text-channel ids
    codes: tuple[int, ...]  # the B assistant speech codes
    events: tuple[Event, ...]  # text events, the AudioBlock, and a Stop when it stopped
    stop_reason: str | None  # a STOP_* key once max_epad or EOS was decoded, else None


class _Row:
    """One dialogue's own KV cache and decoding state."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # [H, capacity, D]
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.length = 0  # cached tokens
        self.blocks = 0  # decoded blocks
        self.assistant_count = 0
        self.epad_count = 0
        self.reason = 0  # 0 running, else a _REASONS key

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append ``[H, L, D]`` keys and values of ``layer`` (the length moves in :meth:`grow`)."""
        n, new = self.length, keys.shape[1]
        buf = self.keys[layer]
        if buf is None or n + new > buf.shape[1]:
            cap = max(2 * (n + new), 4 * new)
            self.keys[layer] = _regrow(self.keys[layer], n, keys, cap)
            self.values[layer] = _regrow(self.values[layer], n, values, cap)
        self.keys[layer][:, n : n + new] = keys
        self.values[layer][:, n : n + new] = values

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None
        )


def _regrow(old: torch.Tensor | None, n: int, like: torch.Tensor, cap: int) -> torch.Tensor:
    buf = like.new_empty((like.shape[0], cap, like.shape[2]))
    if n:
        buf[:, :n] = old[:, :n]
    return buf


class _RaggedLayer(DynamicLayer):
    """A batch cache layer whose rows hold different lengths (right-padded).

    ``keys``/``values`` are ``[n, H, width, D]``; a forward's ``L`` new tokens of
    row ``i`` are written at ``[lengths[i], lengths[i] + L)`` (``_Ragged.index``)
    and the first ``_Ragged.width`` columns are returned; the mask hides the rest.
    """

    def __init__(self, shared: _Ragged, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.shared = shared
        self.keys, self.values = keys, values
        self.is_initialized = True
        self.device = keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        index = self.shared.index.expand(-1, key_states.shape[1], -1, key_states.shape[3])
        self.keys.scatter_(2, index, key_states)
        self.values.scatter_(2, index, value_states)
        width = self.shared.width
        return self.keys[:, :, :width], self.values[:, :, :width]

    def get_seq_length(self) -> int:
        return self.shared.width


class _Ragged:
    """What every layer of one forward shares: the write index and the visible width."""

    index: torch.Tensor  # long [n, 1, L, 1]: where row i's new tokens go
    width: int  # columns visible in this forward: max length after it


class _RaggedSession(_Session):
    """The decoder's per-block phases over rows at different positions (see the module docstring).

    ``text_phase``/``audio_phase`` are the decoder's own; only the forward differs."""

    def __init__(self, dec: DuplexDecoder, rows: list[_Row], gen: torch.Generator | None) -> None:
        self.dec = dec
        self.gen = gen
        dev = dec.device
        n, block_len = len(rows), dec.layout.block_len
        self.start = [r.length for r in rows]
        self.lengths = torch.tensor(self.start, dtype=torch.long, device=dev)
        self.max_length = max(self.start)
        width = self.max_length + block_len  # room for this block's tokens of every row
        self.shared = _Ragged()
        cache = DynamicCache(config=dec.model.config)
        layers = []
        for li, layer in enumerate(cache.layers):
            if type(layer) is not DynamicLayer:
                raise ValueError(
                    f"SharedBatch supports full-attention layers only, layer {li} is {type(layer)}"
                )
            like = next((r.keys[li] for r in rows if r.keys[li] is not None), None)
            if like is None:  # nobody has a cache yet: shapes from the first forward
                like = _empty_like_layer(dec.model, dev)
            heads, dim = like.shape[0], like.shape[2]
            k = like.new_empty((n, heads, width, dim))
            v = like.new_empty((n, heads, width, dim))
            for i, r in enumerate(rows):
                m = r.length
                if m:
                    k[i, :, :m] = r.keys[li][:, :m]
                    v[i, :, :m] = r.values[li][:, :m]
                # padding must be finite: a masked weight is 0, but 0 x NaN is NaN
                k[i, :, m:] = 0
                v[i, :, m:] = 0
            layers.append(_RaggedLayer(self.shared, k, v))
        cache.layers = layers
        self.cache = cache
        self.assistant_count = torch.tensor([r.assistant_count for r in rows], device=dev)
        self.epad_count = torch.tensor([r.epad_count for r in rows], device=dev)
        self.reason = torch.tensor([r.reason for r in rows], dtype=torch.int8, device=dev)
        self.logits = None
        self.text_out = torch.empty(0)
        self.audio_out = torch.empty(0)
        self._dtype = dec.model.get_output_embeddings().weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids [n, L]``, row ``i`` at positions ``lengths[i] …``; float32 last logits ``[n, V]``."""
        L = ids.shape[1]
        steps = torch.arange(L, device=ids.device)
        position_ids = self.lengths[:, None] + steps  # [n, L]
        width = self.max_length + L
        self.shared.index = position_ids[:, None, :, None]
        self.shared.width = width
        keys = torch.arange(width, device=ids.device)
        visible = keys[None, None, :] <= position_ids[:, :, None]  # [n, L, width]
        mask = torch.zeros(visible.shape, dtype=self._dtype, device=ids.device)
        mask.masked_fill_(~visible, torch.finfo(self._dtype).min)
        with _masked_gqa(ids.device):
            out = self.dec.model(
                input_ids=ids,
                position_ids=position_ids,
                attention_mask=mask[:, None],
                use_cache=True,
                logits_to_keep=1,
                **{self.dec._cache_kw: self.cache},
            )
        self.lengths += L
        self.max_length += L
        return out.logits[:, -1].float()


@contextlib.contextmanager
def _masked_gqa(device: torch.device):
    """On a CPU, let SDPA read the grouped KV heads as they are, mask and all.

    With a mask, transformers' SDPA path first repeats every key and value head to the
    query heads (``repeat_kv``): a copy of the whole cache per layer per token, which
    made a 16-session step at 60 s of history 2-3x slower than one at 10 s. CUDA kernels
    fall back to the math kernel for masked GQA, so there the copy stays; on a CPU
    ``enable_gqa`` with a mask is the same math without the copy.
    ``TRANSFORMERS_SDPA_FORCE_GQA`` is read at each call, so it is set for this forward
    only (the server decodes on one thread)."""
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


def _empty_like_layer(model, device) -> torch.Tensor:
    """An empty ``[kv_heads, 0, head_dim]`` tensor of the model's attention shape and dtype."""
    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = model.get_output_embeddings().weight.dtype
    return torch.empty((heads, 0, dim), dtype=dtype, device=device)


class SharedBatch:
    """Dialogues keyed by any hashable, each at its own position; see the module docstring.

    ``join(key)`` adds a dialogue (no cache yet), ``step({key: codes})`` decodes one
    block for the given dialogues together, ``leave(key)`` drops one and frees its
    cache. ``max_tokens`` (default: the model's ``max_position_embeddings``) bounds a
    dialogue's length; :meth:`blocks_left` says how many blocks it may still take.
    """

    def __init__(
        self, decoder: DuplexDecoder, seed: int | None = None, max_tokens: int | None = None
    ) -> None:
        self.dec = decoder
        self.gen = decoder._generator(seed)
        cfg = decoder.model.config
        self.num_layers = cfg.num_hidden_layers
        self.max_tokens = max_tokens or getattr(cfg, "max_position_embeddings", None) or 1 << 30
        self._rows: dict[Hashable, _Row] = {}

    # ------------------------------------------------------------------ membership

    def join(self, key: Hashable) -> None:
        if key in self._rows:
            raise KeyError(f"{key!r} is already in the batch")
        self._rows[key] = _Row(self.num_layers)

    def leave(self, key: Hashable) -> None:
        """Drop ``key`` and free its cache (a key not in the batch is ignored)."""
        self._rows.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> list[Hashable]:
        return list(self._rows)

    def blocks_done(self, key: Hashable) -> int:
        return self._rows[key].blocks

    def blocks_left(self, key: Hashable) -> int:
        """Blocks ``key`` may still decode before its positions reach ``max_tokens``."""
        return (self.max_tokens - self._rows[key].length) // self.dec.layout.block_len

    def cache_bytes(self) -> int:
        """Bytes held by every dialogue's own KV cache (capacity, not just the filled part)."""
        return sum(r.nbytes() for r in self._rows.values())

    # ------------------------------------------------------------------ decoding

    @torch.inference_mode()
    def step(self, blocks: Mapping[Hashable, np.ndarray]) -> dict[Hashable, BlockOutput]:
        """Decode one block for each ``key: codes`` (``B`` user speech codes) together.

        Returns each key's :class:`BlockOutput`. A dialogue that already stopped
        (max_epad or EOS) or has no room left is refused (ValueError), as is an
        unknown key or codes outside ``[0, num_audio)``.
        """
        dec, lay = self.dec, self.dec.layout
        B = lay.frames_per_block
        if not blocks:
            return {}
        keys = list(blocks)
        rows = []
        for key in keys:
            row = self._rows.get(key)
            if row is None:
                raise KeyError(f"{key!r} has not joined the batch")
            if row.reason:
                raise ValueError(f"{key!r} already stopped ({_REASONS[row.reason]})")
            if self.blocks_left(key) < 1:
                raise ValueError(
                    f"{key!r} has no room left: {row.length} of {self.max_tokens} positions used"
                )
            rows.append(row)
        user = np.empty((len(keys), B), dtype=np.int64)
        for i, key in enumerate(keys):
            codes = np.asarray(blocks[key])
            if codes.shape != (B,) or (codes.size and codes.dtype.kind not in "iu"):
                raise ValueError(f"{key!r}: a block is {B} integer codes, got shape {codes.shape}")
            dec._check_codes(codes.astype(np.int64), f"{key!r} block {rows[i].blocks}")
            user[i] = codes
        session = _RaggedSession(dec, rows, self.gen)
        session.text_phase(dec._user_ids(user))
        session.audio_phase()
        text = session.text_out.cpu().numpy()  # one host sync per block
        audio = session.audio_out.cpu().numpy()
        assistant = session.assistant_count.cpu().tolist()
        epads = session.epad_count.cpu().tolist()
        reasons = session.reason.cpu().tolist()
        block_len = lay.block_len
        out: dict[Hashable, BlockOutput] = {}
        for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
            start = session.start[i]
            for li, layer in enumerate(session.cache.layers):
                row.append(
                    li,
                    layer.keys[i, :, start : start + block_len],
                    layer.values[i, :, start : start + block_len],
                )
            row.length += block_len
            k = row.blocks
            row.blocks += 1
            row.assistant_count, row.epad_count = int(assistant[i]), int(epads[i])
            row.reason = int(reasons[i])
            ids = tuple(int(t) for t in text[i])
            codes = tuple(int(c) for c in audio[i])
            events: list[Event] = [*text_events(k, ids, dec.vocab), AudioBlock(k, codes)]
            reason = _REASONS[row.reason] if row.reason else None
            if reason:
                events.append(Stop(k, reason))
            out[key] = BlockOutput(k, ids, codes, tuple(events), reason)
        return out
