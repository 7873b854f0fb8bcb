"""Continuations of given prompts, batched: the rollouts of on-policy preference pairs.

A *prompt* is an interleaved sequence of whole blocks ``[0, d)`` (format §3); its
continuation is decoded for ``N`` more blocks over given user audio, exactly as
:class:`~bayling_duplex.decode.decoder.DuplexDecoder` decodes (the same text and
audio masks, the same sampling). Prompts of the same length run in one batch in
lock-step: the prompt is fed in one forward (a prefill, no padding and no mask,
since every row has the same length), then the ``N`` blocks one by one. Each prompt
may be continued ``repeats`` times (sampled rows of the same prompt differ only in
their draws); rows are processed in chunks of at most ``max_batch``.

Greedy continuations of a prompt equal the last ``N`` blocks of a greedy
:meth:`~bayling_duplex.decode.decoder.DuplexDecoder.decode` whose first ``d``
blocks happened to produce the prompt (tested).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bayling_duplex.decode.decoder import DuplexDecoder, _Session


@dataclass(frozen=True)
class Continuation:
    """``N`` decoded blocks after a prompt: text ids ``[N·T]`` and assistant codes ``[N·B]``."""

    prompt: int  # index of its prompt
    repeat: int  # which of the prompt's continuations
    text_ids: np.ndarray
    assistant_codes: np.ndarray


@torch.inference_mode()
def continue_prompts(
    decoder: DuplexDecoder,
    prompts: Sequence[np.ndarray],
    user_blocks: Sequence[np.ndarray],
    repeats: int = 1,
    seed: int = 0,
    max_batch: int = 256,
    progress: str | None = None,
) -> list[Continuation]:
    """Decode ``repeats`` continuations of each prompt; in order of prompt, then repeat.

    ``prompts[i]``: interleaved ids of whole blocks (``d_i·(2B+T)``, ``d_i >= 1``);
    ``user_blocks[i]``: the user's speech codes of the continuation's blocks, ``[N_i, B]``.
    Prompts of the same ``(d, N)`` are decoded together; the draws of a batch come from
    one generator seeded with ``seed`` plus the batch's index, so a call is reproducible.
    ``progress``: the label of a progress bar over the rows (None: no bar).
    """
    from tqdm.auto import tqdm

    lay, vocab = decoder.layout, decoder.vocab
    L, B, T = lay.block_len, lay.frames_per_block, lay.slots_per_block
    if repeats < 1 or max_batch < 1:
        raise ValueError("repeats and max_batch must be >= 1")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (p, u) in enumerate(zip(prompts, user_blocks, strict=True)):
        p, u = np.asarray(p), np.asarray(u)
        if len(p) == 0 or len(p) % L:
            raise ValueError(f"prompt {i}: length {len(p)} is not a positive multiple of {L}")
        if u.ndim != 2 or u.shape[1] != B or len(u) == 0:
            raise ValueError(f"user_blocks[{i}] must be [N >= 1, B={B}], got {u.shape}")
        decoder._check_codes(u.reshape(-1), f"user_blocks[{i}]")
        groups[(len(p) // L, len(u))].append(i)
    out: dict[tuple[int, int], Continuation] = {}
    rows_all = [(i, r) for key in sorted(groups) for i in groups[key] for r in range(repeats)]
    batch_no = 0
    bar = tqdm(total=len(rows_all), desc=progress, unit="rollout", disable=progress is None)
    for (d, n), members in sorted(groups.items()):
        rows = [(i, r) for i in members for r in range(repeats)]
        for lo in range(0, len(rows), max_batch):
            chunk = rows[lo : lo + max_batch]
            gen = decoder._generator(seed + batch_no)
            batch_no += 1
            ids = torch.as_tensor(
                np.stack([np.asarray(prompts[i]) for i, _ in chunk]),
                dtype=torch.long,
                device=decoder.device,
            )
            session = _Session(decoder, len(chunk), gen, (d + n) * L)
            slots = ids.view(len(chunk), d, L)[:, :, B : B + T]
            session.assistant_count += (slots == vocab.speak_id).sum(dim=(1, 2))
            session.epad_count += (slots == vocab.epad_id).sum(dim=(1, 2))
            session.forward(ids)  # the prefill; its logits are not used (a block starts with U)
            texts, audios = [], []
            for k in range(n):
                user = np.stack([np.asarray(user_blocks[i])[k] for i, _ in chunk])
                texts.append(session.text_phase(decoder._user_ids(user)).cpu().numpy())
                audios.append(session.audio_phase().cpu().numpy())
            text = np.concatenate(texts, axis=1)
            audio = np.concatenate(audios, axis=1)
            for row, (i, r) in enumerate(chunk):
                out[(i, r)] = Continuation(
                    i, r, text[row].astype(np.int64), audio[row].astype(np.int64)
                )
            bar.update(len(chunk))
    bar.close()
    assert len(out) == len(rows_all)
    return [out[(i, r)] for i in range(len(prompts)) for r in range(repeats)]
