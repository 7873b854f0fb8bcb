"""SFT stage benchmark: this stage's step vs a plain ``transformers.Trainer`` step, side by side.

    python benchmarks/bench_sft.py                 # CPU, tiny model (a minute or two)
    python benchmarks/bench_sft.py --glm9b-shape   # GPU: tokens/s and MFU of a GLM-4-Voice-9B-shaped model

Prints:
1. step time of DuplexTrainer (class-weighted loss, duplex collator) and of a plain
   Trainer (the model's own unweighted loss on ``labels``) on the same model, data and
   batches, interleaved A/B rounds; the ratio (target <= 1.10) and tokens/s;
2. the share of real (non-pad) tokens per batch for random batches, length-grouped
   batches and packing, on the demo lengths and on a 400K-like length distribution.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _timed_trainer(trainer_cls, model, ds, collator, steps, batch, extra):
    from transformers import TrainerCallback, TrainingArguments

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-3,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            seed=0,
            data_seed=0,
            train_sampling_strategy="group_by_length",
            length_column_name="num_blocks",
        )
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=ds,
            data_collator=collator,
            callbacks=[Clock()],
            **extra,
        )
        trainer.train()
    return times[2:]  # the first steps warm up


def bench_step(steps: int, batch: int, rounds: int, default_model: bool = False) -> None:
    from helpers import build_small_demo
    from transformers import Trainer

    from bayling_duplex.data.build import load_split
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model.backbone import ModelConfig, load_backbone
    from bayling_duplex.train.collate import DuplexCollator
    from bayling_duplex.train.sft_trainer import DuplexTrainer

    model_config = ModelConfig()
    if default_model:  # the main job's model (configs/model/tiny.yaml)
        import yaml

        from bayling_duplex.model.tiny import TinyConfig

        tiny = yaml.safe_load((ROOT / "configs" / "model" / "tiny.yaml").read_text())["tiny"]
        model_config = ModelConfig(tiny=TinyConfig(**tiny))
    tmp = Path(tempfile.mkdtemp())
    data = build_small_demo(
        tmp / "demo", tmp / "cache", train=steps * batch, heldout=4, shard_size=500
    )
    ds = load_split(data, "train").select_columns(["input_ids", "classes", "num_blocks"])
    duplex_collate = DuplexCollator(pad_id=0)

    def plain_collate(rows):
        b = duplex_collate(rows)
        classes = b.pop("classes")
        b["labels"] = torch.where(classes == 0, -100, b["input_ids"])
        return b

    from bayling_duplex.train.loss import LossWeights

    ours, full, plain = [], [], []
    tokens = float(np.mean([len(x) for x in ds["input_ids"]])) * batch
    for _ in range(rounds):
        for impl, times in (("chunked", ours), ("full", full)):
            model, _, _ = load_backbone(model_config, VocabConfig(), tmp / "cache")
            extra = {"loss_weights": LossWeights().table(), "loss_impl": impl}
            times += _timed_trainer(DuplexTrainer, model, ds, duplex_collate, steps, batch, extra)
        model, _, _ = load_backbone(model_config, VocabConfig(), tmp / "cache")
        plain += _timed_trainer(Trainer, model, ds, plain_collate, steps, batch, {})
    mo, mf, mp = statistics.median(ours), statistics.median(full), statistics.median(plain)
    print(
        "\n## SFT step time (tiny model, CPU)"
        if not torch.cuda.is_available()
        else "\n## SFT step time"
    )
    print(f"{'trainer':<28}{'median step s':>15}{'tokens/s':>12}")
    print(f"{'plain Trainer, model loss':<28}{mp:>15.4f}{tokens / mp:>12.0f}")
    print(f"{'DuplexTrainer, chunked':<28}{mo:>15.4f}{tokens / mo:>12.0f}")
    print(f"{'DuplexTrainer, full logits':<28}{mf:>15.4f}{tokens / mf:>12.0f}")
    print(
        f"ratio ours (chunked)/plain: {mo / mp:.3f}  (target <= 1.10); chunked/full "
        f"{mo / mf:.3f}; {len(ours)} steps each, batch {batch}, "
        f"{tokens / batch:.0f} tokens per dialogue on average; model hidden "
        f"{model_config.tiny.hidden_size} x {model_config.tiny.num_layers} layers"
    )


def lengths_400k_like(n: int, seed: int = 0) -> list[int]:
    """Dialogue lengths in blocks like the 400K set's: up to 60 s (75 blocks), most 10-40 s.

    An assumption, not a measurement of InstructS2S: a log-normal around 30 blocks (24 s),
    clipped to [6, 75].
    """
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(30), 0.45, n)), 6, 75).astype(int).tolist()


def padding_report(batch: int) -> None:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from bayling_duplex.train.collate import real_token_share

    tmp = Path(tempfile.mkdtemp())
    from helpers import build_small_demo

    from bayling_duplex.data.build import load_split

    demo = load_split(
        build_small_demo(tmp / "demo", tmp / "cache", train=4000, heldout=4, shard_size=1000),
        "train",
    )["num_blocks"]
    print(f"\n## Real-token share per batch (batch {batch})")
    print(f"{'lengths':<24}{'random':>10}{'grouped':>10}{'packed':>10}")
    for name, lens in (
        ("demo (4000)", list(demo)),
        ("400K-like (20000)", lengths_400k_like(20000)),
    ):
        rng = np.random.default_rng(0)
        random_order = [lens[i] for i in rng.permutation(len(lens))]
        torch.manual_seed(0)
        grouped_order = [lens[i] for i in LengthGroupedSampler(batch, lengths=lens)]
        print(
            f"{name:<24}{real_token_share(random_order, batch):>10.3f}"
            f"{real_token_share(grouped_order, batch):>10.3f}{real_token_share(lens, batch, pack=True):>10.3f}"
        )


def bench_glm9b(seq: int, batch: int, steps: int) -> None:
    """Tokens/s and MFU of a GLM-4-Voice-9B-shaped model (random weights, bf16) on one GPU."""
    if not torch.cuda.is_available():
        raise SystemExit("--glm9b-shape needs a CUDA device")
    from transformers import GlmConfig, GlmForCausalLM

    cfg = GlmConfig(
        vocab_size=168960,
        hidden_size=4096,
        intermediate_size=13696,
        num_hidden_layers=40,
        num_attention_heads=32,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=8192,
    )
    with torch.device("cuda"):
        model = GlmForCausalLM(cfg).to(torch.bfloat16)
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 168960, (batch, seq), device="cuda")
    classes = torch.randint(1, 6, (batch, seq), device="cuda", dtype=torch.int8)
    from bayling_duplex.train.loss import LossWeights, weighted_loss

    w = LossWeights().table().cuda()
    times = []
    for i in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = weighted_loss(model(ids).logits, ids, classes, w)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    tok_s = batch * seq / step
    flops = 8 * n_params * tok_s  # 6N for fwd+bwd, +2N for the checkpointed recompute
    peak = 989e12  # H100/H200 dense bf16
    print(f"\n## GLM-4-Voice-9B shape, bf16, one GPU ({torch.cuda.get_device_name()})")
    print(
        f"params {n_params / 1e9:.2f} B, batch {batch} x {seq} tokens, step {step:.3f} s, "
        f"{tok_s:.0f} tokens/s, MFU {flops / peak:.1%} (8N FLOPs/token with recompute; 6N: {6 * n_params * tok_s / peak:.1%}), "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--glm9b-shape", action="store_true")
    p.add_argument("--seq", type=int, default=1875)
    p.add_argument(
        "--default-model", action="store_true", help="the main job's size (configs/model/tiny.yaml)"
    )
    a = p.parse_args()
    if a.glm9b_shape:
        bench_glm9b(a.seq, 1, 8)
        return
    bench_step(a.steps, a.batch, a.rounds, a.default_model)
    padding_report(a.batch)


if __name__ == "__main__":
    main()
