"""Batching of built duplex sequences: right padding, or packing several dialogues per row.

Padding (``DuplexCollator(pack=False)``), example with two rows of lengths 3 and 2::

    input_ids  [[a, b, c], [d, e]]  ->  [[a, b, c], [d, e, P]]
    classes    [[0, 1, 4], [0, 3]]  ->  [[0, 1, 4], [0, 3, 0]]     (padding is USER_AUDIO: no loss)
    attention_mask                  ->  [[1, 1, 1], [1, 1, 0]]
    position_ids                    ->  [[0, 1, 2], [0, 1, 0]]

Packing (``pack=True``) concatenates the batch's dialogues into one row,
position ids restarting per dialogue, and a block-diagonal causal 4-D mask
(``attention_mask[b, 0, q, k]`` is True where ``k <= q`` in the same dialogue)
so no dialogue attends to another::

    input_ids [[a, b, c, d, e]]   position_ids [[0, 1, 2, 0, 1]]

Sequences of one batch come from a length-grouped sampler, so padding waste is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayling_duplex.format.interleave import TokenClass


@dataclass
class DuplexCollator:
    pad_id: int
    pack: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(r["input_ids"], dtype=torch.long) for r in rows]
        cls = [torch.as_tensor(r["classes"], dtype=torch.int8) for r in rows]
        if self.pack:
            return pack(ids, cls)
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
        return {
            "input_ids": out_ids,
            "classes": out_cls,
            "attention_mask": mask,
            "position_ids": pos,
        }


def pack(ids: list[torch.Tensor], cls: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """All dialogues in one row with a block-diagonal causal mask (see the module docstring)."""
    total = sum(len(x) for x in ids)
    doc = torch.cat([torch.full((len(x),), i) for i, x in enumerate(ids)])
    pos = torch.cat([torch.arange(len(x)) for x in ids])
    causal = torch.ones(total, total, dtype=torch.bool).tril()
    mask = causal & (doc[:, None] == doc[None, :])
    classes = torch.cat(cls)
    # the first token of each dialogue is never a target of the previous one
    starts = torch.cumsum(torch.tensor([0] + [len(x) for x in ids[:-1]]), 0)
    classes = classes.clone()
    classes[starts] = TokenClass.USER_AUDIO
    return {
        "input_ids": torch.cat(ids)[None],
        "classes": classes[None],
        "attention_mask": mask[None, None],
        "position_ids": pos[None],
    }


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
