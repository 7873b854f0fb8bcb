"""The GPU checks of the paper-scale recipe, in one run and one table (sized for under 8
minutes on one H100/H200-class GPU; not yet run on one where this was written).

    bash benchmarks/gpu_suite.sh                    # the suite, with a time limit
    python benchmarks/gpu_suite.py --layers 8       # the driver itself
    python benchmarks/gpu_suite.py --cpu-smoke      # toy sizes on the CPU: checks the code, measures nothing

Without a CUDA device it exits with status 2 and one line saying so.

1. **SFT step, GLM-4-Voice-9B shape.** Random weights, bf16, ``--layers`` decoder
   layers of the real width (8 by default, not 40: the table says how many) and the
   real output layer (vocabulary 168 960); activation checkpointing, AdamW; 7500
   tokens per step (4 × 1875 padded, or dialogues of 375-1875 tokens packed in one
   row), classes laid out as the duplex format's blocks. Each loss
   (``train.loss_impl`` full, chunked, chunked with the channel softmax, liger when
   installed) on padded rows with sdpa, and each packed attention path (dense mask
   with sdpa; position ids with sdpa, flex attention, flash-attention 2 when
   installed) with the chunked loss: tokens/s, MFU and peak memory. MFU counts the
   model FLOPs of the layers built (``benchmarks/glm9b.py``, ``train_flops``: 6 per
   weight per token plus causal attention, no recompute) against the GPU's dense
   bf16 peak (``--peak-tflops`` for a GPU the table below does not know). One
   model trains through all the rows (lr 1e-5), so their losses are not comparable.
2. **Decode latency.** Per block (0.8 s of audio), the streaming decoder
   (``DuplexDecoder.stream``) against a per-token loop written like the released
   runtime's (``benchmarks/bench_decoder.py``), on all 40 layers.
3. **The converted-checkpoint path.** A random 9B-shaped model (1 layer, the real
   vocabulary) saved natively, exported to the released ChatGLM layout
   (``export_chatglm_dir``), converted back by ``scripts/convert_glm4voice.py``,
   loaded with ``AutoModelForCausalLM.from_pretrained`` (as ``model/backbone.py``
   does; no tokenizer), and one bf16 training step with the chunked loss: the
   tensors must come back unchanged and the step finite.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# dense bf16 peak FLOP/s by device name, most specific first
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
)
PACKED_LENGTHS = [1875, 1500, 1250, 1000, 875, 625, 375]  # 7500 tokens, as 4 × 1875


@dataclass
class Row:
    part: str
    what: str
    figures: str


@dataclass
class Sizes:
    """What the suite builds: the real shapes, or toy ones for ``--cpu-smoke``."""

    device: torch.device
    dtype: torch.dtype
    chatglm: dict  # the ChatGLM config (released layout) the models are built from
    train_layers: int
    padded: tuple[int, int]  # rows, tokens per row
    packed: list[int]
    decode_layers: int
    decode_blocks: int
    steps: int
    audio: tuple[int, int]  # audio ids [start, end)


def real_sizes(layers: int) -> Sizes:
    from glm9b import AUDIO_START_ID, CHATGLM_9B, NUM_AUDIO

    return Sizes(
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        chatglm=dict(CHATGLM_9B),
        train_layers=layers,
        padded=(4, 1875),
        packed=PACKED_LENGTHS,
        decode_layers=40,
        decode_blocks=20,
        steps=4,
        audio=(AUDIO_START_ID, AUDIO_START_ID + NUM_AUDIO),
    )


def smoke_sizes() -> Sizes:
    from glm9b import CHATGLM_9B

    toy = {
        **CHATGLM_9B,
        "hidden_size": 64,
        "ffn_hidden_size": 96,
        "kv_channels": 16,
        "num_attention_heads": 4,
        "padded_vocab_size": 2048,
    }
    return Sizes(
        device=torch.device("cpu"),
        dtype=torch.float32,
        chatglm=toy,
        train_layers=2,
        padded=(2, 50),
        packed=[50, 30, 20],
        decode_layers=2,
        decode_blocks=4,
        steps=1,
        audio=(1000, 1512),
    )


def glm_config(sizes: Sizes, layers: int):
    from bayling_duplex.model.chatglm import chatglm_config_to_glm

    return chatglm_config_to_glm({**sizes.chatglm, "num_layers": layers})


def random_model(config, sizes: Sizes):
    from transformers import GlmForCausalLM

    torch.manual_seed(0)
    with torch.device(sizes.device):
        return GlmForCausalLM._from_config(config, dtype=sizes.dtype)


def _sync(sizes: Sizes) -> None:
    if sizes.device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(sizes: Sizes) -> None:
    if sizes.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(sizes: Sizes) -> str:
    if sizes.device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def peak_flops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


# --------------------------------------------------------------------------- 1. SFT steps


def duplex_rows(lengths: list[int], audio: tuple[int, int], seed: int = 0) -> list[dict]:
    """Dialogues of ``lengths`` tokens in the duplex format's block layout (glm9b)."""
    from glm9b import duplex_tokens

    return [duplex_tokens(n, audio, seed + i) for i, n in enumerate(lengths)]


def sft_batches(sizes: Sizes) -> dict[str, dict]:
    """The padded batch (rows × tokens) and the packed ones (both attention modes)."""
    from bayling_duplex.train.collate import DuplexCollator

    rows, n = sizes.padded
    padded = DuplexCollator(pad_id=0)(duplex_rows([n] * rows, sizes.audio))
    packed_rows = duplex_rows(sizes.packed, sizes.audio, seed=100)
    out = {"padded": padded}
    for mode in ("mask", "position_ids"):
        out[f"packed/{mode}"] = DuplexCollator(pad_id=0, pack=True, attention=mode)(packed_rows)
    return out


def sft_step_rows(sizes: Sizes, peak: float | None) -> list[Row]:
    from glm9b import train_flops

    from bayling_duplex.train.linear_ce import liger_unavailable
    from bayling_duplex.train.loss import DuplexLoss, LossWeights

    config = glm_config(sizes, sizes.train_layers)
    model = random_model(config, sizes)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = {k: _to(v, sizes.device) for k, v in sft_batches(sizes).items()}
    weights = LossWeights(control=2.0).table().to(sizes.device)
    cases = [  # (loss, channels, attention, batch)
        ("full", False, "sdpa", "padded"),
        ("chunked", False, "sdpa", "padded"),
        ("chunked", True, "sdpa", "padded"),
        ("liger", False, "sdpa", "padded"),
        ("chunked", False, "sdpa", "packed/mask"),
        ("chunked", False, "sdpa", "packed/position_ids"),
        ("chunked", False, "flex_attention", "packed/position_ids"),
        ("chunked", False, "flash_attention_2", "packed/position_ids"),
    ]
    rows = []
    for impl, channels, attn, key in cases:
        what = f"{impl}{' + channel softmax' if channels else ''}, {attn}, {key}"
        why = _cannot_run(impl, attn, sizes, liger_unavailable)
        if why:
            rows.append(Row("SFT step", what, f"skipped: {why}"))
            continue
        try:
            model.set_attn_implementation(attn)
            loss = DuplexLoss(weights, impl, sizes.audio if channels else None)
            seconds, value = _timed_steps(model, opt, loss, batches[key], sizes)
        except Exception as e:  # a path that fails is a row of the table, not the end of it
            rows.append(Row("SFT step", what, f"failed: {_one_line(e)}"))
            continue
        lengths = [sizes.padded[1]] * sizes.padded[0] if key == "padded" else sizes.packed
        tok_s = sum(lengths) / seconds
        flops = train_flops(config, lengths)
        mfu = f"{flops / seconds / peak:.1%}" if peak else "n/a (unknown GPU: --peak-tflops)"
        rows.append(
            Row(
                "SFT step",
                what,
                f"{tok_s:,.0f} tokens/s, MFU {mfu}, peak {_peak_gb(sizes)}, loss {value:.3f}",
            )
        )
    del model, opt
    _free()
    return rows


def _cannot_run(impl: str, attn: str, sizes: Sizes, liger_unavailable) -> str | None:
    import importlib.util

    if impl == "liger":
        return liger_unavailable(sizes.device)
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    if attn == "flash_attention_2" and sizes.device.type != "cuda":
        return "flash-attention runs on CUDA only"
    if attn == "flex_attention" and sizes.device.type != "cuda":
        return "flex attention's backward does not compile on the CPU (torch 2.9)"
    return None


def _one_line(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:300].replace("|", "/")


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _timed_steps(model, opt, loss, batch: dict, sizes: Sizes) -> tuple[float, float]:
    """Median seconds of ``sizes.steps`` optimizer steps after one warm-up; the last loss."""
    inputs = dict(batch)
    classes = inputs.pop("classes")
    times, value = [], float("nan")
    _reset_peak(sizes)
    for i in range(sizes.steps + 1):
        _sync(sizes)
        t0 = time.perf_counter()
        out, _ = loss(model, dict(inputs), classes)
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(sizes)
        if i:
            times.append(time.perf_counter() - t0)
        value = float(out)
    return statistics.median(times), value


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- 2. decode


def decode_rows(sizes: Sizes) -> list[Row]:
    import numpy as np
    from bench_decoder import LAYOUT, block_times, released_style_blocks

    from bayling_duplex.decode.config import DecodeConfig
    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.format.vocab import DuplexVocab

    config = glm_config(sizes, sizes.decode_layers)
    model = random_model(config, sizes).eval()
    a0, a1 = sizes.audio
    vocab = DuplexVocab(  # the released ids' pattern: controls right after the audio ids
        silence_id=a1,
        speak_id=a0 - 1,
        pad_id=a1 + 1,
        epad_id=a1 + 2,
        audio_start_id=a0,
        num_audio=a1 - a0,
        vocab_size=a1 + 3,
        eos_id=None,  # random weights: never stop early
    )
    B = LAYOUT.frames_per_block
    codes = np.random.default_rng(0).integers(0, vocab.num_audio, size=sizes.decode_blocks * B)
    dec = DuplexDecoder(model, vocab, LAYOUT, DecodeConfig(max_epad=0))
    block_times(dec, codes[: 2 * B])  # warm-up
    released_style_blocks(model, vocab, codes[: 2 * B])
    ours = block_times(dec, codes)[2:] or block_times(dec, codes)
    theirs, _ = released_style_blocks(model, vocab, codes)
    theirs = theirs[2:] or theirs
    del model, dec
    _free()
    what = f"{sizes.decode_layers} layers, {sizes.decode_blocks} blocks of {LAYOUT.block_s:.1f} s"
    return [
        Row(
            "decode",
            f"{name}, {what}",
            f"median {statistics.median(ts) * 1e3:.1f} ms/block, "
            f"max {max(ts) * 1e3:.1f}, real-time factor {statistics.median(ts) / LAYOUT.block_s:.3f}",
        )
        for name, ts in (("released-style per-token loop", theirs), ("DuplexDecoder.stream", ours))
    ]


# --------------------------------------------------------------------------- 3. converted path


def converted_rows(sizes: Sizes) -> list[Row]:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from bayling_duplex.model.chatglm import export_chatglm_dir, weight_files
    from bayling_duplex.train.loss import DuplexLoss, LossWeights

    config = glm_config(sizes, 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        original = random_model(config, sizes)
        original.save_pretrained(tmp / "native")
        del original
        _free()
        export_chatglm_dir(tmp / "native", tmp / "released")
        conv = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "convert_glm4voice.py"),
                str(tmp / "released"),
                str(tmp / "converted"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if conv.returncode:
            raise RuntimeError(f"convert_glm4voice.py failed: {conv.stderr.strip()[-300:]}")
        convert_s = time.perf_counter() - t0
        same = _same_tensors(
            weight_files(tmp / "native"), weight_files(tmp / "converted"), load_file
        )
        model = AutoModelForCausalLM.from_pretrained(str(tmp / "converted"), dtype=sizes.dtype).to(
            sizes.device
        )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = _to(sft_batches(sizes)["padded"], sizes.device)
    inputs = dict(batch)
    classes = inputs.pop("classes")
    _sync(sizes)
    t0 = time.perf_counter()
    loss, _ = DuplexLoss(LossWeights().table().to(sizes.device), "chunked")(model, inputs, classes)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync(sizes)
    step_s = time.perf_counter() - t0
    ok = same and torch.isfinite(loss).item() and torch.isfinite(norm).item()
    del model, opt
    _free()
    return [
        Row(
            "converted checkpoint",
            f"native -> released layout -> scripts/convert_glm4voice.py -> {sizes.dtype} step",
            f"{'ok' if ok else 'FAILED'}: tensors {'unchanged' if same else 'CHANGED'}, "
            f"loss {float(loss):.3f}, grad norm {float(norm):.3f}, "
            f"round trip {convert_s:.0f} s, step {step_s:.2f} s, peak {_peak_gb(sizes)}",
        )
    ]


def _same_tensors(files_a, files_b, load_file) -> bool:
    a, b = {}, {}
    for f in files_a:
        a.update(load_file(str(f)))
    for f in files_b:
        b.update(load_file(str(f)))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- the table


def run(sizes: Sizes, args) -> int:
    peak = peak_flops(args)
    name = torch.cuda.get_device_name() if sizes.device.type == "cuda" else "CPU (smoke run)"
    print(f"# GPU suite: {name}, {sizes.dtype}, torch {torch.__version__}")
    print(
        f"SFT: {sizes.train_layers} of 40 decoder layers (real width) + the real output layer; "
        f"MFU against {peak / 1e12:.0f} TFLOP/s\n"
        if peak
        else f"SFT: {sizes.train_layers} of 40 decoder layers; no peak FLOP/s known: MFU n/a\n"
    )
    print("| part | what | figures |")
    print("|---|---|---|", flush=True)
    failed = 0
    parts = (
        lambda: sft_step_rows(sizes, peak),
        lambda: decode_rows(sizes),
        lambda: converted_rows(sizes),
    )
    for part in parts:  # each part's rows as soon as they are measured (a time limit keeps them)
        t0 = time.perf_counter()
        try:
            rows = part()
        except Exception as e:
            rows = [Row("error", type(e).__name__, _one_line(e))]
        for r in rows:
            failed += r.figures.startswith(("failed", "FAILED")) or r.part == "error"
            print(f"| {r.part} | {r.what} | {r.figures} |", flush=True)
        print(f"(part done in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if sizes.device.type != "cuda":
        print("\n(CPU smoke run: toy sizes, the figures measure nothing)")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the SFT model")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, TFLOP/s")
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (tests)")
    args = p.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            "gpu_suite: no CUDA device (torch.cuda.is_available() is False): "
            "run it on a machine with a CUDA GPU",
            file=sys.stderr,
        )
        return 2
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "src"))
    sizes = smoke_sizes() if args.cpu_smoke else real_sizes(args.layers)
    return run(sizes, args)


if __name__ == "__main__":
    sys.exit(main())
