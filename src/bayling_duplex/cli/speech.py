"""``python -m bayling_duplex.speech {tokenize,silence,render}``: audio in and out of the codes.

* ``tokenize`` — a manifest of spoken dialogues (audio files; schema in
  ``audio_manifest.py`` and docs/data.md) → Script or Timeline JSONL, with
  GLM-4-Voice's 12.5 Hz tokenizer (on the GPU when there is one)::

      python -m bayling_duplex.speech tokenize --manifest dialogues.jsonl \\
          --tokenizer checkpoints/glm-4-voice-tokenizer \\
          --out data/sources/instructs2s_200k.scripts.jsonl

  Resumable: the output is appended to, one whole line per record, and records
  whose id is already there are skipped; a line cut by a crash is dropped on the
  next start. Records with a missing or unreadable file are reported (id and
  reason, also in ``<out>.errors.jsonl``) and skipped. The silence pattern is
  measured first and written beside the output as ``silence_codes.json`` (or
  checked against the one already there).
* ``silence`` — only that measurement.
* ``render`` — assistant codes decoded by ``python -m bayling_duplex.infer``
  rendered to WAV files with GLM-4-Voice's decoder (``vocoder.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from bayling_duplex.audio.codec import GlmSpeechCodec
from bayling_duplex.audio.tokenize import (
    SILENCE_FILE,
    silence_json,
    tokenize_manifest,
    write_or_check_silence,
)
from bayling_duplex.format.records import RecordError, read_jsonl

log = logging.getLogger("bayling_duplex.speech")


def _tokenize(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"no manifest {args.manifest}")
    codec = GlmSpeechCodec.load(args.tokenizer, args.device, args.batch_size)
    log.info("speech tokenizer on %s: %d codes", codec.device, codec.num_codes)
    # 1. the silence pattern of this tokenizer, beside the data
    silence_path = out.parent / SILENCE_FILE
    pattern = codec.measure_silence(args.silence_seconds)
    if write_or_check_silence(silence_path, pattern, codec, str(args.tokenizer)):
        log.info("silence pattern %s written to %s", list(pattern.codes), silence_path)
    # 2. the records; SIGTERM (Slurm preemption, kill) stops between two lines, like Ctrl-C
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = tokenize_manifest(
            Path(args.manifest),
            out,
            codec,
            kind=args.kind,
            audio_root=Path(args.audio_root) if args.audio_root else None,
            chunk_size=args.chunk,
            io_workers=args.io_workers,
            progress=not args.no_progress,
            shard=args.shard,
        )
    except KeyboardInterrupt:
        print(f"interrupted; {out} holds whole lines only: run the same command to go on")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.summary(out, out.with_name(out.stem + ".errors.jsonl")))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _silence(args: argparse.Namespace) -> int:
    codec = GlmSpeechCodec.load(args.tokenizer, args.device)
    pattern = codec.measure_silence(args.silence_seconds)
    out = Path(args.out)
    write_or_check_silence(out, pattern, codec, str(args.tokenizer))
    print(json.dumps(silence_json(pattern, codec, str(args.tokenizer))))
    return 0


def _render(args: argparse.Namespace) -> int:
    import soundfile as sf

    from bayling_duplex.audio.vocoder import DECODER_SAMPLE_RATE, render_audio

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for _, obj in read_jsonl(args.decoded):
        if isinstance(obj, RecordError) or "assistant_codes" not in obj:
            continue
        wav = render_audio(
            obj["assistant_codes"], args.decoder, device=args.device, code_dir=args.code_dir
        )
        sf.write(out_dir / f"{obj['id']}.wav", wav, DECODER_SAMPLE_RATE)
        n += 1
    print(f"{n} WAV files at {DECODER_SAMPLE_RATE} Hz in {out_dir}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return shard


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bayling_duplex.speech", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def tokenizer_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--tokenizer", required=True, help="glm-4-voice-tokenizer folder")
        q.add_argument("--device", default=None, help="default: cuda when present, else cpu")
        q.add_argument("--silence-seconds", type=float, default=30.0, help="silence measured")

    t = sub.add_parser("tokenize", help="manifest of audio dialogues -> Script/Timeline JSONL")
    t.add_argument("--manifest", required=True, help="JSON lines, one dialogue each")
    t.add_argument("--out", required=True, help="output JSONL (appended to; resumable)")
    t.add_argument("--kind", choices=("scripts", "timelines"), default="scripts")
    t.add_argument(
        "--audio-root", default=None, help="relative paths' base (default: manifest's folder)"
    )
    t.add_argument("--chunk", type=int, default=32, help="records tokenized together")
    t.add_argument("--batch-size", type=int, default=64, help="30 s windows per forward pass")
    t.add_argument("--io-workers", type=int, default=4, help="threads reading audio")
    t.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: lines I, I+N, … only")
    t.add_argument("--no-progress", action="store_true")
    tokenizer_args(t)

    s = sub.add_parser("silence", help="measure the silence pattern into a JSON file")
    s.add_argument("--out", required=True, help=f"the JSON file (usually .../{SILENCE_FILE})")
    tokenizer_args(s)

    r = sub.add_parser("render", help="decoded assistant codes -> WAV (GLM-4-Voice decoder)")
    r.add_argument(
        "--decoded", required=True, help="output JSONL of python -m bayling_duplex.infer"
    )
    r.add_argument("--decoder", required=True, help="glm-4-voice-decoder folder")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--code-dir", default=None, help="GLM-4-Voice source clone (if not importable)")
    r.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.command == "tokenize" and (args.chunk < 1 or args.batch_size < 1):
        p.error("--chunk and --batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    commands = {"tokenize": _tokenize, "silence": _silence, "render": _render}
    try:
        return commands[args.command](args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
