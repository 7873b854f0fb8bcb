"""The memory plan of the paper-scale SFT: the loss at GLM-4-Voice-9B's shape, measured on
this CPU, and the model states per GPU from DeepSpeed's own estimators.

    python benchmarks/bench_memory.py                  # both parts (about 10 minutes on 2 cores)
    python benchmarks/bench_memory.py --repeats 5      # more repeats of part 1
    python benchmarks/bench_memory.py --zero-only      # part 2 only (seconds)

1. **Output layer + loss, 1875 tokens (one 60 s dialogue), bf16.** The final norm
   and the output layer of the real shape (hidden 4096, vocabulary 168 960) and the
   duplex loss over the positions of 75 blocks (per block 10 user audio, 5
   text-channel, 10 assistant audio positions: 40 % carry no loss), forward and
   backward, once per variant:

   * ``full`` — today's path: the full logits and ``train.loss.weighted_loss``;
   * ``chunked`` — ``train.loss_impl=chunked``: target positions only, a slice of
     the vocabulary at a time (``train/linear_ce.py``);
   * ``chunked+channels`` — the same with ``train.channel_softmax=true`` (another
     objective: each target normalised over its channel's ids only).

   Each measurement runs in a fresh subprocess: the peak resident memory (VmHWM,
   reset through ``/proc/self/clear_refs`` just before the step) above the resident
   memory before it, and the wall time of forward + backward. Variants alternate
   within each repeat, so a busy CPU slows all of them alike. Two settings: the
   output layer frozen (the loss's own memory: what it needs besides the model's
   states) and trained (full fine-tuning: the output layer's weight gradient,
   168 960 × 4096 in bf16 = 1.38 GB, is in the peak of every variant).
2. **Model states per GPU** (bf16 weights and gradients, fp32 master weights and Adam)
   for ZeRO-2 and ZeRO-3 on 1-64 GPUs, from the parameter count of the converted
   9B config (``benchmarks/glm9b.py``), by DeepSpeed's ``estimate_zero2_model_states_mem_needs``
   and ``estimate_zero3_model_states_mem_needs`` (the functions behind its
   ``..._all_cold`` tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("full", "chunked", "chunked+channels")
GB = 1e9


# --------------------------------------------------------------------------- 1. one measurement


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def measure(variant: str, tokens: int, train_head: bool, threads: int) -> dict:
    """One forward + backward of final norm + output layer + loss; see the module docstring."""
    import torch
    from glm9b import AUDIO_START_ID, NUM_AUDIO, duplex_tokens, glm_config
    from transformers.models.glm.modeling_glm import GlmRMSNorm

    from bayling_duplex.train.loss import (
        LossWeights,
        select_targets,
        target_losses,
        weighted_loss,
        weighted_mean,
    )

    torch.set_num_threads(threads)
    cfg = glm_config()
    V, H = cfg.vocab_size, cfg.hidden_size
    torch.manual_seed(0)
    weight = torch.empty(V, H, dtype=torch.bfloat16).normal_(std=0.02)  # no float32 transient
    weight.requires_grad_(train_head)
    norm = GlmRMSNorm(H, eps=cfg.rms_norm_eps).to(torch.bfloat16)
    last = torch.randn(1, tokens, H, dtype=torch.bfloat16, requires_grad=True)
    row = duplex_tokens(tokens, (AUDIO_START_ID, AUDIO_START_ID + NUM_AUDIO))
    ids = torch.tensor([row["input_ids"]])
    classes = torch.tensor([row["classes"]], dtype=torch.int8)
    weights = LossWeights(control=2.0).table()
    audio = (AUDIO_START_ID, AUDIO_START_ID + NUM_AUDIO) if variant == "chunked+channels" else None
    before = _status_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    hidden = norm(last)
    if variant == "full":
        loss = weighted_loss(hidden @ weight.T, ids, classes, weights)
    else:
        targets = select_targets(ids, classes, weights)
        ce = target_losses(hidden, weight, targets, "chunked", audio)
        loss = weighted_mean(ce, targets.classes, weights)
    loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "variant": variant,
        "train_head": train_head,
        "peak_gb": (_status_kb("VmHWM") - before) * 1024 / GB,
        "seconds": seconds,
        "loss": float(loss),
    }


def run_measure(variant: str, tokens: int, train_head: bool, threads: int) -> dict:
    """:func:`measure` in a fresh Python process (its own allocator state and peak)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_measure", variant]
    cmd += ["--tokens", str(tokens), "--threads", str(threads)]
    cmd += ["--train-head"] if train_head else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{variant}: measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}–{max(xs):{fmt}}]"


def bench_loss(tokens: int, repeats: int, threads: int) -> None:
    print(f"## 1. Output layer + loss, GLM-4-Voice-9B shape, {tokens} tokens, bf16, CPU")
    print(
        f"method: peak resident memory (VmHWM reset via /proc/self/clear_refs) above the "
        f"resident memory before the step, and wall time of forward + backward; one fresh "
        f"subprocess per measurement, {threads} torch threads, variants alternating, "
        f"{repeats} repeats; figures are median [min–max]\n"
    )
    for train_head in (False, True):
        results = {v: [] for v in VARIANTS}
        for _ in range(repeats):
            for v in VARIANTS:
                results[v].append(run_measure(v, tokens, train_head, threads))
        what = (
            "output layer trained (its weight gradient in every peak)"
            if train_head
            else ("output layer frozen (the loss's own memory)")
        )
        print(f"### {what}\n")
        print("| variant | peak GB | seconds | loss |")
        print("|---|---|---|---|")
        for v in VARIANTS:
            rs = results[v]
            print(
                f"| {v} | {_spread([r['peak_gb'] for r in rs], '.3f')} "
                f"| {_spread([r['seconds'] for r in rs], '.1f')} | {rs[0]['loss']:.5f} |"
            )
        full, ours = results["full"], results["chunked"]
        mem = [f["peak_gb"] / c["peak_gb"] for f, c in zip(full, ours, strict=True)]
        tim = [c["seconds"] / f["seconds"] for f, c in zip(full, ours, strict=True)]
        print(
            f"\nfull / chunked peak memory: {_spread(mem, '.1f')}x (bar >= 4x); "
            f"chunked / full time: {_spread(tim, '.2f')} (bar <= 1.10), per repeat\n"
        )


# --------------------------------------------------------------------------- 2. model states


def bench_zero() -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from glm9b import glm_config, param_counts

    counts = param_counts(glm_config())
    total, largest = counts["total"], counts["largest_layer"]
    print("## 2. Model states per GPU, GLM-4-Voice-9B (DeepSpeed's estimators)")
    print(
        f"parameters {total:,} (40 layers of {counts['layer']:,}; embedding and output layer "
        f"{counts['head']:,} each); largest layer {largest:,}; 8 GPUs per node beyond 8; "
        "DeepSpeed's additional_buffer_factor 1.5 (CPU figures)\n"
    )
    print(
        "| GPUs | ZeRO-2 GPU GB | ZeRO-2 + offload optimizer GPU / CPU per node GB "
        "| ZeRO-3 GPU GB | ZeRO-3 + offload optimizer GPU / CPU GB "
        "| ZeRO-3 + offload optimizer and params GPU / CPU GB |"
    )
    print("|---|---|---|---|---|---|")
    for gpus in (1, 2, 4, 8, 16, 32, 64):
        per_node, nodes = min(gpus, 8), max(1, gpus // 8)
        _, z2 = estimate_zero2_model_states_mem_needs(total, per_node, nodes, cpu_offload=False)
        z2o_cpu, z2o = estimate_zero2_model_states_mem_needs(total, per_node, nodes, True)
        z3 = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, False, False)
        z3o = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, True, False)
        z3p = estimate_zero3_model_states_mem_needs(total, largest, per_node, nodes, True, True)
        print(
            f"| {gpus} | {z2 / GB:.1f} | {z2o / GB:.1f} / {z2o_cpu / GB:.0f} | {z3[1] / GB:.1f} "
            f"| {z3o[1] / GB:.1f} / {z3o[0] / GB:.0f} | {z3p[1] / GB:.1f} / {z3p[0] / GB:.0f} |"
        )
    print(
        "\nDeepSpeed counts 18 bytes per parameter besides the bf16 weights (bf16 and fp32 "
        "gradients, fp32 master weights, Adam m and v) and, for ZeRO-3, the largest layer "
        "gathered in fp32 (4 bytes per parameter); activations are not included."
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=1875, help="positions (75 blocks = 60 s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--zero-only", action="store_true", help="part 2 only")
    p.add_argument("--_measure", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--train-head", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    sys.stdout.reconfigure(line_buffering=True)  # tables appear as they are measured
    if a._measure:
        print(json.dumps(measure(a._measure, a.tokens, a.train_head, a.threads)))
        return
    if not a.zero_only:
        bench_loss(a.tokens, a.repeats, a.threads)
    bench_zero()


if __name__ == "__main__":
    main()
