"""How fast the dataset build runs, and whether its memory stays flat as the corpus grows.

Target: the 400K-dialogue demo build in under 5 minutes on 2 cores, with peak
memory independent of the corpus size.

    python benchmarks/bench_build.py                        # (a) + 400K build + 20K/80K memory
    python benchmarks/bench_build.py --dialogues 40000      # a smaller build
    python benchmarks/bench_build.py --dialogues 20000 --flat-sizes 5000 20000 --per-core 1000

It measures

(a) per core, in this process: dialogues per second through synthesis +
    tokenizing + interleaving + checking (the work a build worker does per
    record, without the shard write), and interleaving alone;
(b) a full ``run_build`` of ``data_recipes/demo.yaml`` scaled to ``--dialogues``
    training dialogues (no held-out split), with ``--workers`` processes: wall
    time, dialogues/s, and the peak RSS of the main process and of the largest
    worker (``getrusage`` ``RUSAGE_SELF`` / ``RUSAGE_CHILDREN`` ``ru_maxrss``);
(c) memory flatness: the peak RSS of two builds of different sizes side by side.

Each build runs in a fresh subprocess, so its peak RSS is its own. Output
folders are temporary and deleted afterwards (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_DIALOGUES, TARGET_S = 400_000, 300  # 400K dialogues in under 5 minutes on 2 cores

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_recipe(dialogues: int, shard_size: int | None):
    """``data_recipes/demo.yaml`` as a typed recipe, scaled to ``dialogues`` training dialogues."""
    from omegaconf import OmegaConf

    from bayling_duplex.config import recipes_dir
    from bayling_duplex.data.recipe import RecipeConfig

    raw = OmegaConf.load(recipes_dir() / "demo.yaml")
    raw.pop("defaults", None)
    recipe = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RecipeConfig), raw))
    recipe.train.count = dialogues
    recipe.heldout = None
    if shard_size:
        recipe.shard_size = shard_size
    return recipe


def tokenizer_and_vocab(cache_dir: str):
    from bayling_duplex.format.vocab import VocabConfig, extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import ModelConfig, backbone_source, load_tokenizer

    path = backbone_source(ModelConfig(), cache_dir)
    tok = load_tokenizer(path)
    extend_tokenizer(tok, VocabConfig())
    return str(path), tok, resolve_vocab(tok, VocabConfig())


def peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------- (a) per core


def per_core(n: int, cache_dir: str) -> dict[str, float]:
    """Dialogues/s in one process: the whole per-record pipeline, and interleaving alone."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import backchannel_clips, demo_script
    from bayling_duplex.data.synthesis import record_rng, synthesize
    from bayling_duplex.format.interleave import check_sequence, interleave

    recipe = demo_recipe(n, None)
    _, tok, vocab = tokenizer_and_vocab(cache_dir)
    spec, syn = recipe.format.spec(), recipe.synthesis
    codec = ToyCodec(recipe.codec.num_codes)
    clips = backchannel_clips(codec)

    def text_ids(texts: list[str]) -> list[list[int]]:
        return tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    made = []
    start = time.perf_counter()
    for i in range(n):
        script = demo_script("train", i, syn.seed, codec)
        answer_ids = text_ids([t.assistant_text for t in script.turns])  # once, as the build
        for scenario in syn.scenarios_for(record_rng(syn.seed, script.id)):
            t = synthesize(script, answer_ids, scenario, syn, spec, clips)
            ids = answer_ids[: len(t.responses)]
            check_sequence(interleave(t, ids, spec, vocab), spec.layout, vocab)
            made.append((t, ids))
    pipeline = time.perf_counter() - start

    start = time.perf_counter()
    for t, ids in made:
        interleave(t, ids, spec, vocab)
    only = time.perf_counter() - start
    start = time.perf_counter()
    for t, ids in made:
        check_sequence(interleave(t, ids, spec, vocab), spec.layout, vocab)
    checked = time.perf_counter() - start
    return {
        "pipeline": len(made) / pipeline,
        "interleave": len(made) / only,
        "interleave+check": len(made) / checked,
    }


# --------------------------------------------------------------------------- (b), (c) builds


def child_build(dialogues: int, workers: int, shard_size: int | None, out: str, cache: str):
    """One build in this (fresh) process; prints its figures as one JSON line."""
    from bayling_duplex.data.build import run_build
    from bayling_duplex.format.vocab import VocabConfig

    recipe = demo_recipe(dialogues, shard_size)
    tokenizer_dir, _, _ = tokenizer_and_vocab(cache)
    start = time.perf_counter()
    manifest = run_build(recipe, tokenizer_dir, VocabConfig(), Path(out), workers, progress=False)
    wall = time.perf_counter() - start
    train = manifest["splits"]["train"]
    print(
        json.dumps(
            {
                "dialogues": dialogues,
                "sequences": train["sequences"],
                "rejected": train["rejected"],
                "tokens": train["tokens"],
                "shards": len(train["shards"]),
                "wall_s": wall,
                "cpu_s": sum(
                    r.ru_utime + r.ru_stime
                    for r in map(
                        resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                    )
                ),
                "main_rss_mib": peak_rss_mib(resource.RUSAGE_SELF),
                "worker_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
                "disk_mib": sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
                / 2**20,
            }
        )
    )


def run_child(args, dialogues: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"bench-build-{dialogues}-", dir=args.tmp)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        str(dialogues),
        "--workers",
        str(args.workers),
        "--out",
        out,
        "--cache-dir",
        args.cache_dir,
    ]
    if args.shard_size:
        cmd += ["--shard-size", str(args.shard_size)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"build of {dialogues} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if args.keep:
            print(f"kept {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dialogues", type=int, default=400_000, help="(b) training dialogues")
    p.add_argument("--workers", type=int, default=2, help="(b, c) build processes")
    p.add_argument("--per-core", type=int, default=4000, help="(a) dialogues in one process")
    p.add_argument("--flat-sizes", type=int, nargs=2, default=[20_000, 80_000], help="(c)")
    p.add_argument("--shard-size", type=int, default=None, help="default: the recipe's")
    p.add_argument("--skip", default="", help="comma list of parts to skip: a,b,c")
    p.add_argument("--cache-dir", default="data/.backbones", help="where the tiny backbone is")
    p.add_argument("--tmp", default=None, help="parent folder of the temporary outputs")
    p.add_argument("--keep", action="store_true", help="keep the built folders")
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child_build(args.child, args.workers, args.shard_size, args.out, args.cache_dir)
        return

    skip = set(filter(None, args.skip.split(",")))
    tokenizer_and_vocab(args.cache_dir)  # build the tiny backbone once, outside every timing
    print(f"cores: {os.cpu_count()}, workers: {args.workers}, python {sys.version.split()[0]}")
    rows: list[tuple[str, str]] = []
    if "a" not in skip:
        a = per_core(args.per_core, args.cache_dir)
        for name, rate in a.items():
            rows.append((f"(a) per core: {name} ({args.per_core} dialogues)", f"{rate:,.0f} /s"))
        _flush(rows)
    if "b" not in skip:
        b = run_child(args, args.dialogues)
        rows += [
            (
                f"(b) build {b['dialogues']:,} dialogues, {args.workers} workers: wall",
                f"{b['wall_s']:.1f} s",
            ),
            ("(b) throughput", f"{b['dialogues'] / b['wall_s']:,.0f} dialogues/s"),
            ("(b) CPU time, main + workers", f"{b['cpu_s']:.1f} s"),
            (
                "(b) sequences / rejected / shards",
                f"{b['sequences']:,} / {b['rejected']} / {b['shards']}",
            ),
            ("(b) tokens / on disk", f"{b['tokens']:,} / {b['disk_mib']:,.0f} MiB"),
            (
                "(b) peak RSS main / largest worker",
                f"{b['main_rss_mib']:,.0f} / {b['worker_rss_mib']:,.0f} MiB",
            ),
        ]
        if b["dialogues"] != TARGET_DIALOGUES:
            rows.append(
                (
                    "(b) projected 400K wall, at this rate",
                    f"{TARGET_DIALOGUES * b['wall_s'] / b['dialogues']:.0f} s",
                )
            )
        # other processes on the machine slow the wall clock, not the CPU time
        rows.append(
            (
                f"(b) projected 400K wall on {args.workers} idle cores (CPU / workers)",
                f"{TARGET_DIALOGUES * b['cpu_s'] / b['dialogues'] / args.workers:.0f} s "
                f"(target < {TARGET_S} s)",
            )
        )
        _flush(rows)
    if "c" not in skip:
        small, large = (run_child(args, n) for n in args.flat_sizes)
        for key, label in [("main_rss_mib", "main"), ("worker_rss_mib", "largest worker")]:
            rows.append(
                (
                    f"(c) peak RSS {label}: {small['dialogues']:,} vs {large['dialogues']:,}",
                    f"{small[key]:,.0f} vs {large[key]:,.0f} MiB (ratio {large[key] / small[key]:.2f})",
                )
            )
        _flush(rows)


_printed = 0


def _flush(rows: list[tuple[str, str]]) -> None:
    """Print the rows not printed yet (the table grows as the parts finish)."""
    global _printed
    for k, v in rows[_printed:]:
        print(f"{k:<58}  {v}", flush=True)
    _printed = len(rows)


if __name__ == "__main__":
    main()
