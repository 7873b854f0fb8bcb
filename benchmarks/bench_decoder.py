"""Benchmark the streaming duplex decoder (``bayling_duplex.decoder``).

    python benchmarks/bench_decoder.py                 # CPU: tiny and 256x4 models
    python benchmarks/bench_decoder.py --glm9b-shape   # CUDA: GLM-4-Voice-9B-shaped model, bf16

CPU, for each model (randomly initialised, greedy, no early stop):

(a) history: per-block wall time of one 75-block dialogue, median over repeats;
    block 70 over block 1 must stay <= 1.3 (one KV cache, history never re-fed).
(b) batching: dialogues per second decoding 16 dialogues of different lengths
    in one ``decode_batch`` vs one ``decode`` at a time; target >= 4x.

``--glm9b-shape`` builds a randomly initialised GLM-4-Voice-9B-shaped model on
the GPU (hidden 4096, 40 layers, 32 heads, 2 KV heads, FFN 13696, vocab 168960,
bf16, about 19 GB) and prints the per-block latency of this decoder next to a
per-token loop written like the released runtime's ``stream_audio_tokens``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time

import numpy as np
import torch

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.decode.events import AudioBlock
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab, VocabConfig
from bayling_duplex.model.embeddings import extend_vocabulary
from bayling_duplex.model.tiny import TinyConfig, build_tiny_model, build_tiny_tokenizer

LAYOUT = BlockLayout()
CPU_MODELS = {
    "tiny (64x2)": TinyConfig(),
    "cpu (256x4)": TinyConfig(hidden_size=256, intermediate_size=768, num_layers=4),
}


def _codes(rng: np.random.Generator, num_blocks: int, vocab: DuplexVocab) -> np.ndarray:
    return rng.integers(0, vocab.num_audio, size=num_blocks * LAYOUT.frames_per_block)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- (a) history


def block_times(dec: DuplexDecoder, codes: np.ndarray) -> list[float]:
    """Wall seconds of each block of one streamed dialogue (AudioBlock to AudioBlock)."""
    times = []
    t0 = time.perf_counter()
    for e in dec.stream(codes):
        if isinstance(e, AudioBlock):  # its codes are on the host: the block is done
            t1 = time.perf_counter()
            times.append(t1 - t0)
            t0 = t1
    return times


def bench_history(dec: DuplexDecoder, vocab, num_blocks: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    runs = [block_times(dec, _codes(rng, num_blocks, vocab)) for _ in range(repeats)]
    med = [statistics.median(r[k] for r in runs) for k in range(num_blocks)]
    late = min(70, num_blocks - 1)
    return {
        "block1_ms": med[1] * 1e3,
        "late_ms": med[late] * 1e3,
        "late": late,
        "ratio": med[late] / med[1],
    }


# --------------------------------------------------------------------------- (b) batching


def bench_batch(dec: DuplexDecoder, vocab, batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    lengths = rng.integers(16, 25, size=batch)  # blocks per dialogue
    dialogues = [_codes(rng, int(n), vocab) for n in lengths]
    seq, bat = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for d in dialogues:
            dec.decode(d)
        seq.append(time.perf_counter() - t)
        t = time.perf_counter()
        dec.decode_batch(dialogues)
        bat.append(time.perf_counter() - t)
    one, many = batch / min(seq), batch / min(bat)
    return {
        "one_dps": one,
        "batch_dps": many,
        "speedup": one and many / one,
        "blocks": int(lengths.sum()),
    }


def cpu_models(threads: int):
    """(name, model, vocab) for each CPU model: the tiny tokenizer, random weights."""
    tokenizer = build_tiny_tokenizer(TinyConfig())
    for name, cfg in CPU_MODELS.items():
        tok = copy.deepcopy(tokenizer)
        model = build_tiny_model(cfg, tok).eval()
        vocab, _ = extend_vocabulary(model, tok, VocabConfig())
        # random weights may pick <|endoftext|>: no EOS stop, so every dialogue runs to its end
        yield name, model, dataclasses.replace(vocab, eos_id=None)


def run_cpu(args) -> None:
    torch.set_num_threads(args.threads)
    cfg = DecodeConfig(max_epad=0)
    print(f"CPU, {torch.get_num_threads()} thread(s), layout {LAYOUT.ratio}, greedy\n")
    rows = []
    for name, model, vocab in cpu_models(args.threads):
        dec = DuplexDecoder(model, vocab, LAYOUT, cfg)
        dec.decode(_codes(np.random.default_rng(9), 3, vocab))  # warm-up
        h = bench_history(dec, vocab, args.blocks, args.repeats)
        b = bench_batch(dec, vocab, args.batch, args.repeats)
        rows.append((name, h, b))
    print(
        f"| model | block 1 ms | block {rows[0][1]['late']} ms | ratio (<= 1.3) "
        f"| dialogues/s one at a time | dialogues/s batched x{args.batch} | speedup (>= 4) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, h, b in rows:
        print(
            f"| {name} | {h['block1_ms']:.1f} | {h['late_ms']:.1f} | {h['ratio']:.2f} "
            f"| {b['one_dps']:.2f} | {b['batch_dps']:.2f} | {b['speedup']:.1f}x |"
        )
    print(
        f"\n(a) {args.blocks}-block dialogue, per-block median of {args.repeats} runs; "
        f"(b) {args.batch} dialogues of 16-24 blocks ({rows[0][2]['blocks']} blocks in all), "
        f"best of {args.repeats}."
    )


# --------------------------------------------------------------------------- GLM-9B shape (GPU)

# The released duplex tokenizer's ids (format §1); the decoder only needs these.
GLM4VOICE_VOCAB = DuplexVocab(
    silence_id=168736,
    speak_id=151337,  # <|assistant|>
    pad_id=168737,
    epad_id=168738,
    audio_start_id=152353,
    num_audio=16383,
    vocab_size=168739,
    eos_id=None,  # random weights: never stop early
)


def glm9b_shaped(device: torch.device, num_layers: int = 40, hidden: int = 4096):
    """A randomly initialised GLM-4-Voice-9B-shaped ``GlmForCausalLM`` in bf16 on ``device``."""
    from transformers import GlmConfig, GlmForCausalLM

    config = GlmConfig(
        vocab_size=168960,
        hidden_size=hidden,
        intermediate_size=13696 * hidden // 4096,
        num_hidden_layers=num_layers,
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=hidden // 32,
        max_position_embeddings=8192,
        attention_bias=True,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = GlmForCausalLM._from_config(config, dtype=torch.bfloat16)
    return model.eval()


@torch.inference_mode()
def released_style_blocks(
    model, vocab: DuplexVocab, codes: np.ndarray
) -> tuple[list[float], list[int]]:
    """Per-block seconds and the ids of a per-token greedy loop shaped like the released runtime.

    Like ``stream_audio_tokens``: the user block in one forward with logits for
    every position, then one forward per token; each pick clones the logits,
    builds its mask and reads the id back to the host.
    """
    from transformers import DynamicCache

    B, T = LAYOUT.frames_per_block, LAYOUT.slots_per_block
    dev = model.get_output_embeddings().weight.device
    a0, a1 = vocab.audio_start_id, vocab.audio_end_id
    cache = DynamicCache(config=model.config)
    pos = 0

    def feed(ids: list[int]) -> torch.Tensor:
        nonlocal pos
        out = model(
            input_ids=torch.tensor([ids], device=dev),
            position_ids=torch.arange(pos, pos + len(ids), device=dev).unsqueeze(0),
            cache=cache,
            use_cache=True,
        )
        pos += len(ids)
        return out.logits[:, -1, :]

    times, ids = [], []
    for k in range(len(codes) // B):
        t0 = time.perf_counter()
        logits = feed([int(c) + a0 for c in codes[k * B : (k + 1) * B]])
        for _ in range(T):
            masked = logits.clone()
            masked[:, a0:a1] = float("-inf")
            ids.append(int(masked.argmax(-1)[0].item()))
            logits = feed(ids[-1:])
        for _ in range(B):
            masked = logits.clone()
            keep = torch.ones(masked.shape[-1], dtype=torch.bool, device=dev)
            keep[a0:a1] = False
            masked[:, keep] = float("-inf")
            ids.append(int(masked.argmax(-1)[0].item()))
            logits = feed(ids[-1:])
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times, ids


def run_glm9b(args) -> None:
    if not torch.cuda.is_available():
        sys.exit("--glm9b-shape needs a CUDA GPU with about 24 GB free; none was found")
    device = torch.device("cuda")
    torch.manual_seed(0)
    t = time.perf_counter()
    model = glm9b_shaped(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{torch.cuda.get_device_name(device)}: GLM-4-Voice-9B shape, {n_params / 1e9:.2f}B params, "
        f"bf16, built in {time.perf_counter() - t:.0f} s"
    )
    vocab = GLM4VOICE_VOCAB
    codes = _codes(np.random.default_rng(0), args.gpu_blocks, vocab)
    dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=0))
    block_times(dec, codes[: 2 * LAYOUT.frames_per_block])  # warm-up
    released_style_blocks(model, vocab, codes[: 2 * LAYOUT.frames_per_block])  # warm-up
    ours = block_times(dec, codes)[2:]
    theirs, ref_ids = released_style_blocks(model, vocab, codes)
    theirs = theirs[2:]
    r = dec.decode(codes)
    B, T = LAYOUT.frames_per_block, LAYOUT.slots_per_block
    K = r.num_blocks
    our_ids = np.concatenate(
        [r.text_ids.reshape(K, T), r.assistant_codes.reshape(K, B) + vocab.audio_start_id], axis=1
    ).reshape(-1)
    same = int((our_ids == np.asarray(ref_ids)).sum())
    # bf16 and random weights leave near-ties, so a few flips are possible: shown, not asserted
    print(f"greedy ids equal to the released-style loop: {same}/{len(ref_ids)}")
    rng = np.random.default_rng(1)
    batch = [_codes(rng, args.gpu_blocks, vocab) for _ in range(args.batch)]
    _sync(device)
    t = time.perf_counter()
    dec.decode_batch(batch)
    _sync(device)
    batched = (time.perf_counter() - t) / args.gpu_blocks
    block_s = LAYOUT.block_s
    print(
        f"\nper-block latency, {args.gpu_blocks} blocks (first 2 dropped); a block is "
        f"{block_s:.1f} s of audio\n"
    )
    print("| loop | median ms/block | max ms/block | real-time factor |")
    print("|---|---|---|---|")
    for name, ts in (("released-style per-token loop", theirs), ("DuplexDecoder.stream", ours)):
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.1f} | {max(ts) * 1e3:.1f} | {med / block_s:.3f} |")
    print(
        f"| DuplexDecoder.decode_batch x{args.batch} | {batched * 1e3:.1f} | - "
        f"| {batched / block_s:.3f} (all {args.batch} dialogues) |"
    )
    print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=75, help="(a): blocks of the long dialogue")
    p.add_argument("--batch", type=int, default=16, help="(b): dialogues decoded together")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (tiny matmuls: 1 is fastest)"
    )
    p.add_argument("--glm9b-shape", action="store_true", help="GPU run, GLM-4-Voice-9B shape")
    p.add_argument("--gpu-blocks", type=int, default=30, help="blocks per dialogue on the GPU")
    args = p.parse_args(argv)
    if args.blocks < 3:
        p.error("--blocks must be at least 3")
    if args.glm9b_shape:
        run_glm9b(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
