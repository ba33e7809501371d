"""``python -m effviz.convert ARCH SOURCE [--out DIR]``: import an official checkpoint."""
from __future__ import annotations

import argparse
import sys

from . import OFFICIAL, default_out_dir, import_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effviz import",
        description="Import an official checkpoint (ImageNet-1k, or AudioSet for aum-tiny) into an effviz "
                    "model and save it as a bundled model (config.json, model.safetensors, README.md).",
    )
    parser.add_argument("arch", choices=sorted(OFFICIAL), help="architecture")
    hub_ids = "; ".join(f"{a}: {r.repo_id or 'local file only'}" for a, r in sorted(OFFICIAL.items()))
    parser.add_argument("source", help=f"checkpoint file (.pth/.pt/.bin/.safetensors) or Hugging Face Hub "
                        f"repo id ({hub_ids})")
    parser.add_argument("--out", default=None, help="output folder (default: weights/<arch>-official)")
    args = parser.parse_args(argv)
    try:
        model = import_checkpoint(args.arch, args.source, args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    out = args.out or default_out_dir(args.arch)
    params = sum(p.numel() for p in model.parameters())
    print(f"imported {args.arch} ({params:,} parameters) from {args.source} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
