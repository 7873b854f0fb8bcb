"""Convert GLM-4-Voice-9B between its released ChatGLM layout and transformers' native Glm.

    python scripts/convert_glm4voice.py SRC DST            # released -> native (no remote code)
    python scripts/convert_glm4voice.py --export SRC DST   # native -> released layout

The native folder loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` alone. ``--remote-code-from`` copies the released
``*.py`` files (ChatGLM's modelling and tokenizer code) into an exported folder.
"""

from __future__ import annotations

import argparse
import sys

from bayling_duplex.model.chatglm import convert_chatglm_dir, export_chatglm_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("src", help="source folder (released GLM-4-Voice, or native with --export)")
    p.add_argument("dst", help="destination folder (created; must be empty unless --overwrite)")
    p.add_argument("--export", action="store_true", help="native Glm -> released ChatGLM layout")
    p.add_argument("--remote-code-from", help="with --export: a released folder whose *.py to copy")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    args = p.parse_args(argv)
    if args.remote_code_from and not args.export:
        p.error("--remote-code-from only applies with --export")
    try:
        if args.export:
            out = export_chatglm_dir(
                args.src, args.dst, remote_code_from=args.remote_code_from, overwrite=args.overwrite
            )
        else:
            out = convert_chatglm_dir(args.src, args.dst, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(out)


if __name__ == "__main__":
    main()
