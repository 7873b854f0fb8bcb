"""On-policy preference pairs: the policy's own continuations at its decision blocks (docs/dpo.md §2b).

Gold-perturbation pairs (:mod:`bayling_duplex.data.pairs`) guess the model's errors
(a start one or two blocks late, a stop too late…). These pairs take them from the
model instead. For ``onpolicy.dialogues`` dialogues of the SFT data's train split:

1. **Greedy rollout** of the whole dialogue (batched, the decoder of evaluation):
   where its responses start or stop in another slot than the reference's, the
   block is a *decision block* the policy gets wrong; the reference's own event
   blocks (each response's start and ``[EPAD]``, each backchannel onset) are
   decision blocks too, so sampled errors are found where greedy is right.
2. **Continuations** at each decision block ``d``: the prompt is the reference
   sequence of blocks ``[0, d)`` (the same timing as the greedy rollout up to its
   first departure, and the same history for both sides), continued for ``N``
   blocks over the dialogue's own user audio, ``onpolicy.samples`` times sampled
   and once greedy, all prompts of one length in one batch
   (:func:`bayling_duplex.decode.branch.continue_prompts`).
3. **Rewards** of each continuation from the timeline
   (:func:`bayling_duplex.data.rewards.window_reward`: answer onset vs the turn's end,
   starts inside a user turn, stop delay after an interruption, stops before the
   answer's end such as at a backchannel, answer text kept).
4. **A pair** per decision block: the best continuation against the worst
   (the greedy one among equals: it is what decoding does) when their rewards
   differ by ``min_margin``; where no continuation is right (within
   ``right_tolerance`` of the reference's 0), the reference window itself is the
   chosen side. Blocks where every continuation is equally good give no pair, and
   every skip is counted by reason.

Pairs have the columns and invariants of the gold pairs
(:func:`~bayling_duplex.data.pairs.check_pair`), plus each side's reward; a set is
written with a manifest whose fingerprint names the policy checkpoint, the SFT
data and this configuration (:func:`build_onpolicy_pairs`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayling_duplex.data.pairs import PreferencePair, check_pair, scored_mask
from bayling_duplex.data.rewards import COMPONENTS, Reference, RewardWeights, window_reward
from bayling_duplex.format.interleave import TokenClass, response_events
from bayling_duplex.format.records import RecordError

log = logging.getLogger("bayling_duplex.onpolicy")
ONPOLICY_BUILDER_VERSION = 1


@dataclass
class OnPolicyConfig:
    """How on-policy pairs are made (``pairs.onpolicy.*``)."""

    dialogues: int = 600  # training dialogues rolled out (train split of the SFT data)
    heldout_dialogues: int = 60  # from its held-out split: rewards on unseen pairs (0: none)
    samples: int = 4  # sampled continuations per decision block (plus the greedy one)
    temperature: float = 1.0
    top_p: float = 1.0
    window_blocks: int = 2  # N
    max_points: int = 4  # decision blocks per dialogue at most (the greedy errors first)
    right_tolerance: float = 0.25  # a continuation within this of 0 is right
    min_margin: float = 0.25  # best - worst reward, at least, for a rollout-vs-rollout pair
    gold_fallback: bool = True  # no continuation right: the reference window is chosen
    batch_size: int = 128  # rows per decoding batch
    seed: int = 0
    rewards: RewardWeights = field(default_factory=RewardWeights)

    def __post_init__(self) -> None:
        checks = {
            "dialogues": self.dialogues >= 1,
            "heldout_dialogues": self.heldout_dialogues >= 0,
            "samples": self.samples >= 1,
            "temperature": self.temperature > 0,
            "top_p": 0 < self.top_p <= 1,
            "window_blocks": self.window_blocks >= 1,
            "max_points": self.max_points >= 1,
            "right_tolerance": self.right_tolerance >= 0,
            "min_margin": self.min_margin > 0,
            "batch_size": self.batch_size >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"pairs.onpolicy.{bad[0]} is out of range: {getattr(self, bad[0])!r} "
                "(dialogues, samples, window_blocks, max_points, batch_size >= 1; "
                "temperature, min_margin > 0; top_p in (0, 1])"
            )


# ----------------------------------------------------------------------------- pieces


def window_classes(ids: np.ndarray, layout, vocab) -> np.ndarray:
    """Token classes of decoded whole blocks (format §5), read off the ids alone."""
    B, T, L = layout.frames_per_block, layout.slots_per_block, layout.block_len
    ids = np.asarray(ids)
    pos = np.arange(len(ids)) % L
    cls = np.full(len(ids), int(TokenClass.SPEECH), dtype=np.int8)
    cls[pos < B] = int(TokenClass.USER_AUDIO)
    text = (pos >= B) & (pos < B + T)
    control = np.isin(ids, [vocab.speak_id, vocab.pad_id, vocab.epad_id])
    cls[text] = int(TokenClass.TEXT)
    cls[text & control] = int(TokenClass.CONTROL)
    cls[text & (ids == vocab.silence_id)] = int(TokenClass.SILENCE_SLOT)
    return cls


def interleave_window(user: np.ndarray, text: np.ndarray, audio: np.ndarray, layout, vocab):
    """Ids of ``N`` blocks ``U_k X_k A_k`` from user codes ``[N·B]``, text ids ``[N·T]`` and
    assistant codes ``[N·B]``."""
    B, T = layout.frames_per_block, layout.slots_per_block
    N = len(text) // T
    return (
        np.concatenate(
            [
                np.asarray(user).reshape(N, B) + vocab.audio_start_id,
                np.asarray(text).reshape(N, T),
                np.asarray(audio).reshape(N, B) + vocab.audio_start_id,
            ],
            axis=1,
        )
        .reshape(-1)
        .astype(np.int64)
    )


def decision_blocks(
    gold_slots: np.ndarray,
    greedy_slots: np.ndarray | None,
    ref: Reference,
    layout,
    vocab,
    window: int,
    num_blocks: int,
    max_points: int,
) -> list[tuple[int, str]]:
    """``(d, why)`` of one dialogue, the greedy rollout's errors first, then the reference's
    events; ``1 <= d <= num_blocks - window``, at most ``max_points``."""
    T, B = layout.slots_per_block, layout.frames_per_block

    def marks(slots):
        ev = response_events(slots, vocab)
        return {e.speak_slot for e in ev}, {e.epad_slot for e in ev if e.epad_slot is not None}

    g_start, g_stop = marks(gold_slots)
    out: list[tuple[int, str]] = []
    if greedy_slots is not None:
        n = min(len(gold_slots), len(greedy_slots))
        p_start, p_stop = marks(greedy_slots[:n])
        wrong = sorted(
            {(s // T, "greedy_start") for s in p_start ^ {x for x in g_start if x < n}}
            | {(s // T, "greedy_stop") for s in p_stop ^ {x for x in g_stop if x < n}}
        )
        # a late start/stop is decided where the reference acts: the earlier block of the two
        out += wrong
    events = [(s // T, "reference_start") for s in g_start] + [
        (s // T, "reference_stop") for s in g_stop
    ]
    for s, _, kind in ref.user_segments:
        if kind == "backchannel" and s >= B:
            events.append((layout.slot_index_of_frame(s) // T, "backchannel"))
    out += sorted(events)
    seen, points = set(), []
    for d, why in out:
        if 1 <= d <= num_blocks - window and d not in seen:
            seen.add(d)
            points.append((d, why))
        if len(points) == max_points:
            break
    return points


@dataclass
class _Point:
    row: int  # index of the dialogue
    id: str
    d: int
    why: str


def _choose(rewards, greedy_index: int, cfg: OnPolicyConfig):
    """``(chosen, rejected, reason)``: indices into the candidates (-1: the reference), or a
    skip reason."""
    totals = [r.total for r in rewards]
    worst = min(totals)
    losers = [i for i, t in enumerate(totals) if t == worst]
    rejected = greedy_index if greedy_index in losers else losers[0]
    best = max(range(len(totals)), key=lambda i: totals[i])
    if any(r.right(cfg.right_tolerance) for r in rewards):
        if totals[best] - worst < cfg.min_margin:
            return None, None, "all_alike"
        return best, rejected, "rollout_vs_rollout"
    if cfg.gold_fallback:
        return -1, rejected, "reference_vs_rollout"
    if totals[best] - worst < cfg.min_margin:
        return None, None, "none_right"
    return best, rejected, "rollout_vs_rollout"


def _kind(chosen, rejected, weights: RewardWeights) -> str:
    """The component the chosen side wins most on (what the pair teaches)."""
    gain = {
        k: getattr(weights, k) * (chosen.components[k] - rejected.components[k]) for k in COMPONENTS
    }
    return "op_" + max(gain, key=gain.get)


# ----------------------------------------------------------------------------- build


def make_onpolicy_pairs(
    model, vocab, spec, rows, cfg: OnPolicyConfig, score: str = "timing", progress: bool = True
) -> tuple[dict, dict, list[dict]]:
    """``(columns, stats, skips)`` from built rows (``id``, ``input_ids``, ``meta``).

    ``columns`` holds the gold pair columns plus ``chosen_reward``/``rejected_reward``;
    ``stats`` the counts, timings and rollouts per second; ``skips`` one entry per
    decision block that gave no pair (id, reason)."""
    from tqdm.auto import tqdm

    from bayling_duplex.decode.branch import continue_prompts
    from bayling_duplex.decode.config import DecodeConfig
    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.format.interleave import split_channels

    lay = spec.layout
    B, T, L, N = lay.frames_per_block, lay.slots_per_block, lay.block_len, cfg.window_blocks
    greedy = DuplexDecoder(model, vocab, lay, DecodeConfig())
    sampler = DuplexDecoder(
        model, vocab, lay, DecodeConfig(temperature=cfg.temperature, top_p=cfg.top_p)
    )
    gold = [np.asarray(r["input_ids"], dtype=np.int64) for r in rows]
    chans = [split_channels(g, lay, vocab) for g in gold]
    refs = [
        Reference.from_row(json.loads(r["meta"]), c.text_slots, vocab)
        for r, c in zip(rows, chans, strict=True)
    ]
    t0 = time.perf_counter()
    # 1. greedy rollouts of the whole dialogues
    greedy_slots = []
    bar = tqdm(total=len(rows), desc="rollouts (greedy)", unit="dialogue", disable=not progress)
    for lo in range(0, len(rows), cfg.batch_size):
        batch = [c.user_codes for c in chans[lo : lo + cfg.batch_size]]
        for res in greedy.decode_batch(batch):
            greedy_slots.append(res.text_ids)
        bar.update(len(batch))
    bar.close()
    greedy_blocks = sum(len(g) // L for g in gold)
    t1 = time.perf_counter()
    # 2. decision blocks and continuations
    points: list[_Point] = []
    for i, r in enumerate(rows):
        for d, why in decision_blocks(
            chans[i].text_slots,
            greedy_slots[i],
            refs[i],
            lay,
            vocab,
            N,
            len(gold[i]) // L,
            cfg.max_points,
        ):
            points.append(_Point(i, str(r["id"]), d, why))
    prompts = [gold[p.row][: p.d * L] for p in points]
    users = [chans[p.row].user_codes[p.d * B : (p.d + N) * B].reshape(N, B) for p in points]
    log.info("%d decision blocks in %d dialogues", len(points), len(rows))
    g_cont = continue_prompts(
        greedy, prompts, users, 1, cfg.seed, cfg.batch_size, _label("greedy", progress)
    )
    s_cont = continue_prompts(
        sampler, prompts, users, cfg.samples, cfg.seed, cfg.batch_size, _label("sampled", progress)
    )
    t2 = time.perf_counter()
    # 3. rewards, 4. pairs
    cols = {
        c: []
        for c in (
            "id",
            "kind",
            "decision_block",
            "shift_blocks",
            "prompt_ids",
            "chosen_ids",
            "rejected_ids",
            "chosen_mask",
            "rejected_mask",
            "chosen_reward",
            "rejected_reward",
        )
    }
    skips: list[dict] = []
    reasons, kinds, whys = Counter(), Counter(), Counter()
    greedy_comp = dict.fromkeys(COMPONENTS, 0.0)
    greedy_right = 0
    for n, p in enumerate(points):
        ch = chans[p.row]
        prompt_slots = ch.text_slots[: p.d * T]
        ref_window = gold[p.row][p.d * L : (p.d + N) * L]
        ref_slots = ch.text_slots[p.d * T : (p.d + N) * T]
        words = window_reward_words(prompt_slots, ref_slots, p.d, vocab, lay)
        cands = [g_cont[n], *s_cont[n * cfg.samples : (n + 1) * cfg.samples]]
        rewards = [
            window_reward(
                refs[p.row], prompt_slots, c.text_ids, p.d, vocab, lay, cfg.rewards, words
            )
            for c in cands
        ]
        for k in COMPONENTS:
            greedy_comp[k] += rewards[0].components[k]
        greedy_right += rewards[0].right(cfg.right_tolerance)
        chosen, rejected, reason = _choose(rewards, 0, cfg)
        reasons[reason] += 1
        if chosen is None:
            skips.append({"id": p.id, "decision_block": p.d, "reason": reason})
            continue
        user = ch.user_codes[p.d * B : (p.d + N) * B]

        if chosen == -1:  # the reference window
            c_ids = ref_window
            c_rw = window_reward(
                refs[p.row], prompt_slots, ref_slots, p.d, vocab, lay, cfg.rewards, words
            )
        else:
            c = cands[chosen]
            c_ids = interleave_window(user, c.text_ids, c.assistant_codes, lay, vocab)
            c_rw = rewards[chosen]
        r = cands[rejected]
        r_ids = interleave_window(user, r.text_ids, r.assistant_codes, lay, vocab)
        r_rw = rewards[rejected]
        pair = PreferencePair(
            id=f"{p.id}:op:{p.d}",
            kind=_kind(c_rw, r_rw, cfg.rewards),
            decision_block=p.d,
            shift_blocks=0,
            prompt_ids=gold[p.row][: p.d * L],
            chosen_ids=c_ids,
            rejected_ids=r_ids,
            chosen_mask=scored_mask(window_classes(c_ids, lay, vocab), score),
            rejected_mask=scored_mask(window_classes(r_ids, lay, vocab), score),
        )
        try:
            check_pair(pair, lay)
        except RecordError as e:
            reasons[e.reason] += 1
            skips.append({"id": p.id, "decision_block": p.d, "reason": e.reason})
            continue
        kinds[pair.kind] += 1
        whys[p.why] += 1
        for name in ("id", "kind", "decision_block", "shift_blocks"):
            cols[name].append(getattr(pair, name))
        for name in ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask"):
            cols[name].append(np.asarray(getattr(pair, name)).tolist())
        cols["chosen_reward"].append(c_rw.total)
        cols["rejected_reward"].append(r_rw.total)
    t3 = time.perf_counter()
    rollouts = len(rows) + len(points) * (1 + cfg.samples)
    cont_blocks = len(points) * (1 + cfg.samples) * N
    stats = {
        "pairs": len(cols["id"]),
        "dialogues": len(rows),
        "decision_blocks": len(points),
        "outcomes": dict(reasons),
        "kinds": dict(kinds),
        "decision_blocks_of_pairs": dict(whys),
        "greedy": {
            "right_share": round(greedy_right / max(len(points), 1), 4),
            "mean_components": {
                k: round(v / max(len(points), 1), 4) for k, v in greedy_comp.items()
            },
        },
        "rollouts": rollouts,
        "decoded_blocks": greedy_blocks + cont_blocks,
        "seconds": {
            "greedy_rollouts": round(t1 - t0, 2),
            "continuations": round(t2 - t1, 2),
            "rewards_and_pairs": round(t3 - t2, 2),
        },
        "rollouts_per_s": round(rollouts / max(t2 - t0, 1e-9), 2),
        "blocks_per_s": round((greedy_blocks + cont_blocks) / max(t2 - t0, 1e-9), 1),
    }
    return cols, stats, skips


def _label(kind: str, progress: bool) -> str | None:
    return f"continuations ({kind})" if progress else None


def window_reward_words(prompt_slots, window_slots, d, vocab, layout) -> list[int]:
    """The answer tokens the reference writes in the window (the ``text`` component)."""
    from bayling_duplex.data.rewards import window_times

    return window_times(prompt_slots, window_slots, d, vocab, layout)[3]


def policy_fingerprint(checkpoint: Path) -> str:
    """Names the policy's weights: their files' names, sizes and modification times."""
    h = hashlib.sha256()
    for f in sorted(Path(checkpoint).glob("*.safetensors")) + sorted(
        Path(checkpoint).glob("*.bin")
    ):
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def onpolicy_fingerprint(
    cfg: OnPolicyConfig, policy: Path, data_manifest: dict, score: str
) -> dict:
    from bayling_duplex.runtime import plain

    made = {"onpolicy": plain(cfg), "score": score, "builder": ONPOLICY_BUILDER_VERSION}
    parts = {
        "made": hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()[:16],
        "policy": policy_fingerprint(policy),
        "data": data_manifest["fingerprint"]["combined"],
    }
    parts["combined"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return parts


def _select(ds, n: int, seed: int):
    order = np.random.default_rng(seed).permutation(len(ds))[: min(n, len(ds))]
    return ds.select(sorted(order.tolist())).select_columns(["id", "input_ids", "meta"])


def build_onpolicy_pairs(
    model,
    vocab,
    spec,
    data_path: Path,
    policy: Path,
    cfg: OnPolicyConfig,
    out: Path,
    score: str = "timing",
) -> dict:
    """Roll out ``model`` (the checkpoint ``policy``) on the SFT data at ``data_path`` and
    write the pairs into ``out`` (a dataset per split, ``rejections.jsonl`` of the skips,
    ``manifest.json``). Nothing is replaced until every split is written."""
    import datasets

    from bayling_duplex.data.build import MANIFEST, load_split
    from bayling_duplex.runtime import write_json

    data_path = Path(data_path)
    data_manifest = json.loads((data_path / MANIFEST).read_text())
    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = {}
    for split, n in (("train", cfg.dialogues), ("heldout", cfg.heldout_dialogues)):
        if n == 0 or split not in data_manifest["splits"]:
            continue
        rows = _select(load_split(data_path, split), n, cfg.seed)
        cols, stats, skips = make_onpolicy_pairs(model, vocab, spec, rows, cfg, score)
        if not cols["id"]:
            raise RecordError(
                str(data_path), "no_pairs", f"no on-policy pair from {split}: {stats['outcomes']}"
            )
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(cols).save_to_disk(str(tmp / split))
        with open(tmp / split / "rejections.jsonl", "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in skips)
        splits[split] = stats
        log.info(
            "on-policy pairs (%s): %d from %d decision blocks, %.1f rollouts/s",
            split,
            stats["pairs"],
            stats["decision_blocks"],
            stats["rollouts_per_s"],
        )
    manifest = {
        "name": f"{data_manifest['name']}_onpolicy",
        "source": "on_policy",
        "policy": str(policy),
        "data": str(data_path),
        "fingerprint": onpolicy_fingerprint(cfg, policy, data_manifest, score),
        "status": "ok",
        "build_seconds": round(time.perf_counter() - t0, 2),
        "splits": splits,
    }
    write_json(tmp / MANIFEST, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def load_onpolicy_pairs(conf, model, vocab, spec, policy: Path, sft_codec: dict | None):
    """``(train, heldout or None, manifest)`` of the on-policy pairs of ``policy`` (``model``)
    on the SFT data ``conf.data.path``: built once per policy and configuration into
    ``<pairs.path>_onpolicy/<fingerprint>`` (rank 0; the others wait), then loaded.

    Refuses SFT data coded by another codec than the checkpoint's (``sft_codec``, its
    ``duplex.json`` entry) or built in another format."""
    import datasets

    from bayling_duplex.data.build import MANIFEST
    from bayling_duplex.data.load import DataMismatchError, manifest_format
    from bayling_duplex.runtime import is_main_process, wait_for_rank0

    cfg, score = conf.pairs.onpolicy, conf.pairs.make.score
    data = Path(conf.data.path)
    if not (data / MANIFEST).is_file():
        raise DataMismatchError(
            f"on-policy pairs roll out the policy on the SFT data, but data.path={data} holds "
            "no built dataset; point data.path at the folder the SFT checkpoint was trained on"
        )
    data_manifest = json.loads((data / MANIFEST).read_text())
    have = (data_manifest.get("codec") or {}).get("fingerprint")
    want = (sft_codec or {}).get("fingerprint")
    if have != want:
        raise DataMismatchError(
            f"data.path={data} was coded by codec {have}, the SFT checkpoint by {want}: "
            "on-policy pairs need the dialogues the checkpoint was trained on"
        )
    diff = spec.differences(manifest_format(data_manifest))
    if diff:
        raise DataMismatchError(f"data.path={data}: another format than the checkpoint's ({diff})")
    fp = onpolicy_fingerprint(cfg, policy, data_manifest, score)
    out = Path(f"{conf.pairs.path}_onpolicy") / fp["combined"]

    def ready() -> bool:
        return (out / MANIFEST).is_file()

    if not ready():
        if is_main_process():
            log.info("rolling out %s on %s for on-policy pairs into %s", policy, data, out)
            was_training = model.training
            model.eval()
            build_onpolicy_pairs(model, vocab, spec, data, policy, cfg, out, score)
            model.train(was_training)
        else:
            wait_for_rank0(ready, f"the on-policy pairs {out}")
    manifest = json.loads((out / MANIFEST).read_text())
    train = datasets.load_from_disk(str(out / "train"))
    heldout = (
        datasets.load_from_disk(str(out / "heldout")) if "heldout" in manifest["splits"] else None
    )
    return train, heldout, {**manifest, "path": str(out)}
