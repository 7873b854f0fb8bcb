"""Decode user speech codes with a trained checkpoint: ``python -m bayling_duplex.infer``.

    python -m bayling_duplex.infer --checkpoint runs/sft/checkpoint-final \\
        --input dialogues.jsonl --out decoded.jsonl --temperature 0 --max-epad 0

``--input`` is a ``.jsonl`` file (one ``{"id", "user_codes": [...]}`` per line),
a ``.json`` file (one such object or a list of them) or any other file holding
whitespace-separated codes (one dialogue named after the file). Every output
line holds one dialogue: its stop reason, text channel, assistant codes, events
(with slot start times, format §8) and the responses read off the text channel.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.decode.events import AudioBlock, DecodeResult, Event, Stop
from bayling_duplex.format.interleave import response_events
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import VocabConfig, VocabError

log = logging.getLogger("bayling_duplex.infer")


class InputError(ValueError):
    """An input file or dialogue that cannot be decoded."""


@dataclass(frozen=True)
class UserInput:
    """One dialogue to decode: its id and user speech codes (one per 80 ms frame)."""

    id: str
    user_codes: np.ndarray  # int64 [num_frames]


# --------------------------------------------------------------------------- input


def _parse_codes(value, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in value
    ):
        raise InputError(f"{where}: user_codes must be a list of integers")
    return np.asarray(value, dtype=np.int64)


def _parse_object(obj, where: str, default_id: str) -> UserInput:
    if not isinstance(obj, dict) or "user_codes" not in obj:
        raise InputError(f'{where}: expected an object with "user_codes" (and "id")')
    return UserInput(str(obj.get("id", default_id)), _parse_codes(obj["user_codes"], where))


def read_inputs(path: str | Path) -> list[UserInput]:
    """Parse ``path`` (.jsonl, .json or whitespace-separated codes). Raises :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON: {e}") from e
            out.append(_parse_object(obj, f"{path}:{n}", f"{path.stem}-{n}"))
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON: {e}") from e
        items = data if isinstance(data, list) else [data]
        out = [
            _parse_object(obj, f"{path}[{i}]", f"{path.stem}-{i}") for i, obj in enumerate(items)
        ]
    else:
        words = text.split()
        try:
            codes = np.asarray([int(w) for w in words], dtype=np.int64)
        except ValueError as e:
            raise InputError(f"{path}: expected whitespace-separated integer codes: {e}") from e
        out = [UserInput(path.stem, codes)]
    if not out:
        raise InputError(f"{path}: holds no dialogue")
    return out


def check_inputs(inputs: list[UserInput], num_audio: int, layout: BlockLayout) -> list[UserInput]:
    """Codes in ``[0, num_audio)`` and at least one block; trailing partial blocks are dropped (logged)."""
    B = layout.frames_per_block
    out = []
    for x in inputs:
        codes = x.user_codes
        if len(codes) < B:
            raise InputError(
                f"dialogue {x.id!r}: {len(codes)} code(s), less than one block (B={B}): "
                "nothing to decode"
            )
        bad = np.flatnonzero((codes < 0) | (codes >= num_audio))
        if len(bad):
            i = int(bad[0])
            raise InputError(
                f"dialogue {x.id!r}: code {int(codes[i])} at frame {i} is outside "
                f"[0, {num_audio}) ({len(bad)} such code(s)); is this the right speech tokenizer?"
            )
        extra = len(codes) % B
        if extra:
            log.warning(
                "dialogue %r: dropping the trailing %d frame(s) that do not fill a block of %d",
                x.id,
                extra,
                B,
            )
            codes = codes[: len(codes) - extra]
        out.append(UserInput(x.id, codes))
    return out


# --------------------------------------------------------------------------- output


def event_record(e: Event, layout: BlockLayout) -> dict:
    """An event as JSON: its type, fields and, for text slots, the slot's start time."""
    rec = {"type": type(e).__name__.lower(), **asdict(e)}
    if isinstance(e, AudioBlock):
        rec["codes"] = list(e.codes)
    elif not isinstance(e, Stop):
        rec["time_s"] = layout.slot_start_s(e.block * layout.slots_per_block + e.slot)
    return rec


def result_record(dialogue_id: str, r: DecodeResult, tokenizer, vocab, layout: BlockLayout) -> dict:
    responses = []
    for ev in response_events(r.text_ids, vocab):
        responses.append(
            {
                "speak_slot": ev.speak_slot,
                "epad_slot": ev.epad_slot,
                "start_s": layout.slot_start_s(ev.speak_slot),
                "end_s": None if ev.epad_slot is None else layout.slot_start_s(ev.epad_slot),
                "text": tokenizer.decode(list(ev.text_ids)),
            }
        )
    return {
        "id": dialogue_id,
        "stop_reason": r.stop_reason,
        "num_blocks": r.num_blocks,
        "responses": responses,
        "text_ids": r.text_ids.tolist(),
        "assistant_codes": r.assistant_codes.tolist(),
        "events": [event_record(e, layout) for e in r.events],
    }


# --------------------------------------------------------------------------- command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = DecodeConfig()
    p = argparse.ArgumentParser(
        prog="python -m bayling_duplex.infer", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint folder trained by this project"
    )
    p.add_argument("--input", required=True, help=".jsonl / .json / whitespace-separated codes")
    p.add_argument("--out", default="-", help="output JSONL (default: stdout)")
    p.add_argument(
        "--ratio",
        default=None,
        help="block layout B:T:B: must match the checkpoint's duplex.json (the default); "
        "a checkpoint without one: default 10:5:10",
    )
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument(
        "--silence-bias",
        type=float,
        default=d.silence_bias,
        help="added to the [SILENCE] logit while listening; the released silence_penalty p is -p",
    )
    p.add_argument(
        "--max-epad", type=int, default=d.max_epad, help="stop after N [EPAD]s; 0 = never"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=16, help="dialogues decoded together")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=("fp32", "bf16", "fp16"),
        help="weights' precision (default: bf16 on cuda, else fp32)",
    )
    return p.parse_args(argv)


def checkpoint_layout(path: Path, ratio: str | None) -> BlockLayout:
    """The block layout to decode ``path`` with: the one its ``duplex.json`` records.

    ``--ratio`` may only repeat it (a model trained on 10:5:10 blocks decoded as 8:4:8
    gives garbage, silently); a checkpoint without ``duplex.json`` decodes with
    ``--ratio`` (default 10:5:10) and a warning that the layout is unchecked."""
    from bayling_duplex.format.spec import FormatSpec
    from bayling_duplex.model.checkpoint import DUPLEX_META, read_meta

    if not (path / DUPLEX_META).is_file():
        layout = BlockLayout.parse(ratio or FormatSpec().layout.ratio)
        log.warning(
            "%s has no %s: decoding with the %s layout (%s), which nothing checks against "
            "what the model was trained on",
            path,
            DUPLEX_META,
            layout.ratio,
            "--ratio" if ratio else "the default",
        )
        return layout
    trained = read_meta(path).format.layout
    if ratio is not None:
        asked = BlockLayout.parse(ratio, trained.frame_rate_hz)
        if (asked.frames_per_block, asked.slots_per_block) != (
            trained.frames_per_block,
            trained.slots_per_block,
        ):
            raise ValueError(
                f"--ratio {ratio} does not match the checkpoint: {path / DUPLEX_META} says it "
                f"was trained on {trained.ratio} blocks; drop --ratio (or pass {trained.ratio})"
            )
    return trained


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        # 1. decoding config and layout (validated before anything is loaded)
        cfg = DecodeConfig(
            temperature=args.temperature,
            top_p=args.top_p,
            silence_bias=args.silence_bias,
            max_epad=args.max_epad,
            seed=args.seed,
        )
        from bayling_duplex.model import checkpoint

        path = checkpoint.resolve(args.checkpoint, "sft")  # names a missing folder
        layout = checkpoint_layout(path, args.ratio)
        if args.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        # 2. input file
        inputs = read_inputs(args.input)
        # 3. checkpoint (the duplex tokens must be there)
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
        model, tokenizer, vocab = checkpoint.load(path, VocabConfig(), dtype=dtype)
        model.to(device).eval()
        inputs = check_inputs(inputs, vocab.num_audio, layout)
    except (InputError, VocabError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # 4. decode in batches, write one line per dialogue
    decoder = DuplexDecoder(model, vocab, layout, cfg)
    sink = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for start in range(0, len(inputs), args.batch_size):
            chunk = inputs[start : start + args.batch_size]
            results = decoder.decode_batch([x.user_codes for x in chunk], seed=cfg.seed + start)
            for x, r in zip(chunk, results, strict=True):
                rec = result_record(x.id, r, tokenizer, vocab, layout)
                sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
                log.info(
                    "%s: %d block(s), %d response(s), stop: %s",
                    x.id,
                    r.num_blocks,
                    len(rec["responses"]),
                    r.stop_reason,
                )
    finally:
        if sink is not sys.stdout:
            sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
