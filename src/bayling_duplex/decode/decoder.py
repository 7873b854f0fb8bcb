"""Streaming full-duplex decoding with one KV cache, one dialogue or many in lock-step (format §8).

Per block ``k`` the decoder does what the released BayLing-Duplex runtime does:

1. feed the ``B`` user audio tokens ``U_k`` in one forward (explicit positions);
2. ``T`` times: pick a text-channel token with the audio ids masked out, feed it back;
3. ``B`` times: pick an assistant audio token with every non-audio id masked out, feed it back.

So the cache grows by exactly ``2B+T`` per block and history is never re-encoded.
Decoding stops after ``max_epad`` ``[EPAD]``\\ s or an ``<|endoftext|>``, but only
once the block that holds it is complete (its remaining text slots and its
audio), as the released runtime does; otherwise when the user audio runs out.

**Batches.** Every dialogue advances one block per step, so dialogues decoded
together stay in lock-step: all rows sit at the same position, no row is ever
padded and no attention mask is needed (rows of a batch never attend to each
other). A row that stops, or whose user audio runs out, is dropped from the
batch and the cache at the end of that block (``DynamicCache.batch_select_indices``),
so it costs nothing afterwards and the remaining rows see exactly the inputs
they would see alone. Greedy decoding thus gives the same tokens batched or one
at a time, up to the floating-point order of batched kernels.

**KV cache.** A transformers ``DynamicCache`` whose layers append into spare
room (:func:`growing_cache`) rather than re-concatenating the whole history on
every token, so a token's cost grows only by the attention it must read.

**Host syncs.** The per-row state that decides the silence bias and the stop
(response count, ``[EPAD]`` count, stop reason) lives on the device, so the
``2B+T`` forwards of a block are queued without waiting for the host; tokens
are read back once per phase (streaming) or once per block (batch).

The decoder knows nothing about tokenization: it takes speech codes and a
:class:`~bayling_duplex.format.vocab.DuplexVocab` and returns ids.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.events import (
    _REASONS,
    STOP_END_OF_INPUT,
    AudioBlock,
    DecodeResult,
    Event,
    Stop,
    text_events,
)
from bayling_duplex.decode.kv_cache import growing_cache
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab, check_vocab

# --------------------------------------------------------------------------- decoder


class DuplexDecoder:
    """Streams dialogues through ``model`` block by block; see the module docstring.

    ``model`` is a causal LM with a transformers cache (``GlmForCausalLM``);
    device and dtype are the model's. Codes are speech codes in ``[0, num_audio)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        vocab: DuplexVocab,
        layout: BlockLayout | None = None,
        cfg: DecodeConfig | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.layout = layout or BlockLayout()
        self.cfg = cfg or DecodeConfig()
        head = model.get_output_embeddings().weight
        self.device = head.device
        num_logits = head.shape[0]
        check_vocab(vocab, num_logits)
        # additive masks over the logits, float32: text slots never pick audio ids,
        # audio frames pick nothing else
        audio = torch.zeros(num_logits, dtype=torch.bool, device=self.device)
        audio[vocab.audio_start_id : vocab.audio_end_id] = True
        ninf = torch.tensor(float("-inf"), device=self.device)
        self._text_mask = torch.where(audio, ninf, 0.0)
        self._audio_mask = torch.where(audio, 0.0, ninf)
        # transformers 5.x renamed the forward's `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ------------------------------------------------------------------ public API

    @torch.inference_mode()
    def stream(self, user_codes: Iterable[int], seed: int | None = None) -> Iterator[Event]:
        """Decode one dialogue, yielding events as each block is decoded.

        ``user_codes`` may be a lazy iterable (e.g. codes arriving live): it is
        read ``B`` codes at a time; a trailing partial block is ignored. A block's
        text events come once its ``T`` slots are decoded (before its audio),
        its :class:`AudioBlock` after its audio; a :class:`Stop` ends the stream.
        """
        B = self.layout.frames_per_block
        session = _Session(self, 1, self._generator(seed), 32 * self.layout.block_len)
        it = iter(user_codes)
        k = 0
        while True:
            block = np.fromiter((c for _, c in zip(range(B), it, strict=False)), dtype=np.int64)
            if len(block) < B:
                break
            self._check_codes(block, "user_codes", k * B)
            text = session.text_phase(self._user_ids(block[None])).tolist()[0]
            yield from text_events(k, text, self.vocab)
            audio = session.audio_phase().tolist()[0]
            yield AudioBlock(k, tuple(audio))
            reason = int(session.reason[0])
            if reason:
                yield Stop(k, _REASONS[reason])
                return
            k += 1
        if k == 0:
            raise ValueError(
                f"user_codes: fewer than one block (B={B}) of codes: nothing to decode"
            )
        yield Stop(k - 1, STOP_END_OF_INPUT)

    def decode(
        self, user_codes: Sequence[int] | np.ndarray, seed: int | None = None
    ) -> DecodeResult:
        """Decode one dialogue; the same as ``decode_batch([user_codes])[0]``."""
        return self.decode_batch([user_codes], seed)[0]

    @torch.inference_mode()
    def decode_batch(
        self, dialogues: Sequence[Sequence[int] | np.ndarray], seed: int | None = None
    ) -> list[DecodeResult]:
        """Decode many dialogues at once, in lock-step; one result per dialogue, in order.

        Each dialogue is a 1-D array of user speech codes; lengths may differ
        (a trailing partial block is dropped). Greedy results equal those of
        :meth:`decode` on each dialogue alone.
        """
        B, T = self.layout.frames_per_block, self.layout.slots_per_block
        if len(dialogues) == 0:
            raise ValueError("decode_batch needs at least one dialogue")
        blocks = [self._as_blocks(c, f"dialogue {i}") for i, c in enumerate(dialogues)]
        n = len(blocks)
        texts: list[list[np.ndarray]] = [[] for _ in range(n)]
        audios: list[list[np.ndarray]] = [[] for _ in range(n)]
        events: list[list[Event]] = [[] for _ in range(n)]
        reasons = [STOP_END_OF_INPUT] * n
        capacity = max(len(b) for b in blocks) * self.layout.block_len
        session = _Session(self, n, self._generator(seed), capacity)
        active = list(range(n))  # original row of each batch row
        k = 0
        while active:
            user = np.stack([blocks[r][k] for r in active])
            session.text_phase(self._user_ids(user))
            session.audio_phase()
            text = session.text_out.cpu().numpy()  # one host sync per block
            audio = session.audio_out.cpu().numpy()
            stop = session.reason.cpu().numpy()
            keep = []
            for i, r in enumerate(active):
                texts[r].append(text[i])
                audios[r].append(audio[i])
                events[r] += text_events(k, text[i].tolist(), self.vocab)
                events[r].append(AudioBlock(k, tuple(audio[i].tolist())))
                if stop[i]:
                    reasons[r] = _REASONS[int(stop[i])]
                if stop[i] or k + 1 == len(blocks[r]):
                    events[r].append(Stop(k, reasons[r]))
                else:
                    keep.append(i)
            if keep and len(keep) < len(active):
                session.keep(keep)
            active = [active[i] for i in keep]
            k += 1
        results = []
        for r in range(n):
            K = len(texts[r])
            results.append(
                DecodeResult(
                    num_blocks=K,
                    user_codes=blocks[r][:K].reshape(-1),
                    text_ids=np.concatenate(texts[r]).astype(np.int64).reshape(K * T),
                    assistant_codes=np.concatenate(audios[r]).astype(np.int64).reshape(K * B),
                    events=tuple(events[r]),
                    stop_reason=reasons[r],
                )
            )
        return results

    # ------------------------------------------------------------------ helpers

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if self.cfg.temperature <= 0:
            return None
        return torch.Generator(device=self.device).manual_seed(
            self.cfg.seed if seed is None else seed
        )

    def _check_codes(self, codes: np.ndarray, name: str, offset: int = 0) -> None:
        bad = np.flatnonzero((codes < 0) | (codes >= self.vocab.num_audio))
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"{name}: code {int(codes[i])} at frame {offset + i} is outside "
                f"[0, {self.vocab.num_audio}) ({len(bad)} such code(s))"
            )

    def _as_blocks(self, codes: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
        """Validate one dialogue's codes; return them as int64 ``[K, B]`` (partial block dropped)."""
        B = self.layout.frames_per_block
        arr = np.asarray(codes)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"{name}: user codes must be a 1-D sequence of integers")
        if len(arr) < B:
            raise ValueError(
                f"{name}: {len(arr)} code(s) is less than one block (B={B}): nothing to decode"
            )
        arr = arr.astype(np.int64)
        self._check_codes(arr, name)
        K = len(arr) // B
        return arr[: K * B].reshape(K, B)

    def _user_ids(self, codes: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(codes + self.vocab.audio_start_id).to(self.device)

    def _pick(self, logits: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """One id per row of float32 ``logits [n, V]``: argmax, or temperature + top-p sampling."""
        cfg = self.cfg
        if cfg.temperature <= 0:
            return logits.argmax(dim=-1)
        logits = logits / cfg.temperature
        if cfg.top_p >= 1.0:
            return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        mass_before = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the tokens ranked above it already hold top_p (the top one stays)
        drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
        drop[:, 1:] = mass_before[:, :-1] > cfg.top_p
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        choice = torch.multinomial(probs, 1, generator=gen)
        return order.gather(-1, choice).squeeze(-1)


class _Session:
    """One KV cache over ``n`` dialogues in lock-step, and their per-row state on the device."""

    def __init__(
        self, dec: DuplexDecoder, n: int, gen: torch.Generator | None, capacity: int = 0
    ) -> None:
        self.dec = dec
        self.gen = gen
        self.cache = growing_cache(dec.model.config, capacity)
        self.pos = 0  # every row sits at the same position: no padding
        dev = dec.device
        self.assistant_count = torch.zeros(n, dtype=torch.long, device=dev)
        self.epad_count = torch.zeros(n, dtype=torch.long, device=dev)
        self.reason = torch.zeros(n, dtype=torch.int8, device=dev)  # 0 running, else _REASONS key
        self.logits: torch.Tensor | None = None
        self.text_out = torch.empty(0)
        self.audio_out = torch.empty(0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ``ids [n, L]`` at the next ``L`` positions; return float32 last logits ``[n, V]``."""
        L = ids.shape[1]
        position_ids = torch.arange(self.pos, self.pos + L, device=ids.device).unsqueeze(0)
        out = self.dec.model(
            input_ids=ids,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.dec._cache_kw: self.cache},
        )
        self.pos += L
        return out.logits[:, -1].float()

    def text_phase(self, user_ids: torch.Tensor) -> torch.Tensor:
        """Feed ``U_k`` then decode the ``T`` text slots; returns ids ``[n, T]`` (on the device)."""
        dec, vocab, cfg = self.dec, self.dec.vocab, self.dec.cfg
        logits = self.forward(user_ids)
        out = []
        for _ in range(dec.layout.slots_per_block):
            logits = logits + dec._text_mask
            if cfg.silence_bias:
                # only while listening: every response so far has its [EPAD] (and, as
                # released, not once the stop count is reached)
                listening = self.assistant_count <= self.epad_count
                if cfg.max_epad:
                    listening &= self.epad_count < cfg.max_epad
                logits[:, vocab.silence_id] += cfg.silence_bias * listening.float()
            tok = dec._pick(logits, self.gen)
            out.append(tok)
            is_epad = tok == vocab.epad_id
            self.assistant_count += tok == vocab.speak_id
            self.epad_count += is_epad
            if cfg.max_epad:
                hit = is_epad & (self.epad_count >= cfg.max_epad)
                self.reason = torch.where((self.reason == 0) & hit, 1, self.reason).to(torch.int8)
            if vocab.eos_id is not None:
                hit = tok == vocab.eos_id
                self.reason = torch.where((self.reason == 0) & hit, 2, self.reason).to(torch.int8)
            logits = self.forward(tok[:, None])
        self.logits = logits
        self.text_out = torch.stack(out, dim=1)
        return self.text_out

    def audio_phase(self) -> torch.Tensor:
        """Decode the ``B`` assistant frames of the block; returns codes ``[n, B]`` (on the device)."""
        dec = self.dec
        logits = self.logits
        out = []
        for _ in range(dec.layout.frames_per_block):
            tok = dec._pick(logits + dec._audio_mask, self.gen)
            out.append(tok)
            logits = self.forward(tok[:, None])
        self.logits = None  # the next block's logits come from its user audio
        self.audio_out = torch.stack(out, dim=1) - dec.vocab.audio_start_id
        return self.audio_out

    def keep(self, rows: list[int]) -> None:
        """Keep only batch ``rows`` (cache and state), dropping finished dialogues."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.dec.device)
        self.cache.batch_select_indices(idx)
        self.assistant_count = self.assistant_count[idx]
        self.epad_count = self.epad_count[idx]
        self.reason = self.reason[idx]
