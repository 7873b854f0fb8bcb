"""Batching of built duplex sequences: right padding, or packing several dialogues per row.

Padding (``DuplexCollator(pack=False)``), example with two rows of lengths 3 and 2::

    input_ids  [[a, b, c], [d, e]]  ->  [[a, b, c], [d, e, P]]
    classes    [[0, 1, 4], [0, 3]]  ->  [[0, 1, 4], [0, 3, 0]]     (padding is USER_AUDIO: no loss)
    attention_mask                  ->  [[1, 1, 1], [1, 1, 0]]
    position_ids                    ->  [[0, 1, 2], [0, 1, 0]]

Packing (``pack=True``) concatenates the batch's dialogues into one row, position
ids restarting per dialogue, so no dialogue attends to another::

    input_ids [[a, b, c, d, e]]   position_ids [[0, 1, 2, 0, 1]]

How the model sees the boundaries is ``attention`` (``train.pack_attention``):

* ``"position_ids"`` — nothing more, no attention mask at all (as transformers'
  ``DataCollatorWithFlattening``): transformers finds the dialogues where the
  position ids restart, and hands them to flash-attention's variable-length
  kernels (``cu_seqlens``) or to flex attention as a block mask; sdpa and eager
  build their mask inside the forward. The batch holds nothing of size ``L × L``.
* ``"mask"`` — a block-diagonal causal 4-D mask, additive (``attention_mask[b, 0, q, k]``
  is 0 where ``k <= q`` in the same dialogue, the float32 minimum elsewhere): ``L²``
  floats in the batch, for models that do not read boundaries from position ids
  (the eager fallback). Additive, not boolean: transformers hands a 4-D mask to the
  attention as it is, and eager attention adds it to the scores (a boolean one
  would mask nothing there); sdpa takes either.

:func:`pack_attention` chooses for ``"auto"``. Sequences of one batch come from a
length-grouped sampler, so padding waste is small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.output_layer import unwrap

PACK_ATTENTIONS = ("position_ids", "mask")


def pack_attention(model, setting: str = "auto") -> str:
    """``"position_ids"`` or ``"mask"`` for ``train.pack_attention=setting`` and ``model``.

    ``auto``: the dense mask for eager attention (its reference path) and for a model
    outside transformers' own classes (remote code may ignore where position ids
    restart); position ids for sdpa, flash-attention and flex attention.
    """
    if setting != "auto":
        return setting
    base = unwrap(model)
    native = type(base).__module__.startswith("transformers.models.")
    attn = getattr(base.config, "_attn_implementation", None)
    return "position_ids" if native and attn != "eager" else "mask"


def pause_blocks(pauses, frames_per_block: int) -> list[int]:
    """The output blocks whose user frames hold part of a hesitation pause: block ``k``
    hears frames ``[k·B, (k+1)·B)``, so its text slots are the decisions made while the
    user is quiet inside a turn (format §3's one-block shift)."""
    b = frames_per_block
    return sorted({k for s, e in pauses for k in range(s // b, (e - 1) // b + 1) if e > s})


def mark_pause_slots(cls: torch.Tensor, pauses, frames_per_block: int, slots_per_block: int):
    """``cls`` with the ``[SILENCE]`` slots of :func:`pause_blocks` as PAUSE_SILENCE (a copy)."""
    blocks = pause_blocks(pauses, frames_per_block)
    if not blocks:
        return cls
    block_len = 2 * frames_per_block + slots_per_block
    k = torch.tensor(blocks)
    pos = (k[:, None] * block_len + frames_per_block + torch.arange(slots_per_block)).flatten()
    pos = pos[pos < len(cls)]
    out = cls.clone()
    hit = out[pos] == TokenClass.SILENCE_SLOT
    out[pos[hit]] = TokenClass.PAUSE_SILENCE
    return out


def speech_positions(
    segments, frames_per_block: int, slots_per_block: int, length: int, pauses=()
) -> torch.Tensor:
    """``[length]`` bool: True at the user audio positions whose frame lies in one of the
    user's ``segments`` (``[start, end, kind]`` frames, as a built row's ``meta`` records
    them) and in none of its hesitation ``pauses`` (``[start, end]``: a turn's segment
    spans the pause inside it). Frame ``f`` sits at position ``(f // B)·(2B + T) + f % B``
    (``U_k`` opens each block)."""
    b = frames_per_block
    block_len = 2 * b + slots_per_block
    out = torch.zeros(length, dtype=torch.bool)
    quiet = {f for s, e, *_ in pauses for f in range(int(s), int(e))}
    frames = [f for s, e, *_ in segments for f in range(int(s), int(e)) if f not in quiet]
    if frames:
        f = torch.tensor(frames)
        pos = (f // b) * block_len + f % b
        out[pos[pos < length]] = True
    return out


def _row_meta(row: dict, key: str) -> list | None:
    meta = row.get("meta")
    return json.loads(meta).get(key) if meta else None


def row_segments(row: dict) -> list | None:
    """The user's speech segments a built row's ``meta`` records, or None if it records none."""
    return _row_meta(row, "user_segments")


def row_pauses(row: dict) -> list | None:
    """The hesitation pauses a built row's ``meta`` records, or None if it records none."""
    return _row_meta(row, "pauses")


@dataclass
class DuplexCollator:
    pad_id: int
    pack: bool = False
    attention: str = "mask"  # packing only: PACK_ATTENTIONS (see the module docstring)
    # (frames_per_block, slots_per_block): mark the [SILENCE] slots that hear a hesitation
    # pause as PAUSE_SILENCE (train.loss_weights.pause_silence); None: leave classes alone
    pause_layout: tuple[int, int] | None = None
    # (frames_per_block, slots_per_block): add ``user_speech``, the user audio positions
    # inside the user's recorded speech, its hesitation pauses left out
    # (train.user_unit_swap_scope=speech); None: no such key
    speech_layout: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.attention not in PACK_ATTENTIONS:
            raise ValueError(f"attention must be one of {PACK_ATTENTIONS}, got {self.attention!r}")

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows]
        cls = [torch.as_tensor(r["classes"], dtype=torch.int8) for r in rows]
        if self.pause_layout is not None:
            cls = [
                mark_pause_slots(c, row_pauses(r) or (), *self.pause_layout)
                for c, r in zip(cls, rows, strict=True)
            ]
        speech = None
        if self.speech_layout is not None:
            speech = [
                speech_positions(
                    row_segments(r) or (), *self.speech_layout, len(x), row_pauses(r) or ()
                )
                for x, r in zip(ids, rows, strict=True)
            ]
        if self.pack:
            out = pack(ids, cls, dense_mask=self.attention == "mask")
            if speech is not None:
                out["user_speech"] = torch.cat(speech)[None]
            return out
        n = max(len(x) for x in ids)
        out_ids = torch.full((len(ids), n), self.pad_id, dtype=torch.long)
        out_cls = torch.full((len(ids), n), TokenClass.USER_AUDIO, dtype=torch.int8)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        pos = torch.zeros((len(ids), n), dtype=torch.long)
        for i, (x, c) in enumerate(zip(ids, cls, strict=True)):
            out_ids[i, : len(x)] = x
            out_cls[i, : len(x)] = c
            mask[i, : len(x)] = 1
            pos[i, : len(x)] = torch.arange(len(x))
        out = {
            "input_ids": out_ids,
            "classes": out_cls,
            "attention_mask": mask,
            "position_ids": pos,
        }
        if speech is not None:
            region = torch.zeros((len(ids), n), dtype=torch.bool)
            for i, r in enumerate(speech):
                region[i, : len(r)] = r
            out["user_speech"] = region
        return out


def pack(
    ids: list[torch.Tensor], cls: list[torch.Tensor], dense_mask: bool = True
) -> dict[str, torch.Tensor]:
    """All dialogues in one row, position ids restarting per dialogue; with ``dense_mask``
    also the block-diagonal causal 4-D mask (see the module docstring)."""
    pos = torch.cat([torch.arange(len(x)) for x in ids])
    classes = torch.cat(cls)
    # the first token of each dialogue is never a target of the previous one
    starts = torch.cumsum(torch.tensor([0] + [len(x) for x in ids[:-1]]), 0)
    classes = classes.clone()
    classes[starts] = TokenClass.USER_AUDIO
    out = {"input_ids": torch.cat(ids)[None], "classes": classes[None], "position_ids": pos[None]}
    if dense_mask:
        allowed = block_diagonal_mask([len(x) for x in ids])
        additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        out["attention_mask"] = additive[None, None]
    return out


def block_diagonal_mask(lengths: list[int]) -> torch.Tensor:
    """``[L, L]`` bool, True where key ``k <= q`` lies in query ``q``'s dialogue."""
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    causal = torch.ones(len(doc), len(doc), dtype=torch.bool).tril()
    return causal & (doc[:, None] == doc[None, :])


def real_token_share(lengths: list[int], batch_size: int, pack: bool = False) -> float:
    """Share of real (non-pad) tokens when ``lengths`` are batched in order by ``batch_size``."""
    real = sum(lengths)
    if pack:
        return 1.0
    padded = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        padded += max(chunk) * len(chunk)
    return real / padded
