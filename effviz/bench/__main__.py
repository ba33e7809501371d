"""Command line: ``python -m effviz.bench kernels [--ops ...] [--lengths ...] [--json PATH]``.

Tables go to stdout as Markdown (ready to paste into the README); progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .kernels import DEFAULT_LENGTHS, DTYPES, OPS

    parser = argparse.ArgumentParser(prog="python -m effviz.bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    k = commands.add_parser(
        "kernels",
        help="time every kernel op by backend and sequence length",
        description="Latency (median after warm-up), peak memory, GB/s and speed-ups of every "
        "kernel op and backend, with this machine's copy bandwidth and matmul GFLOP/s.",
    )
    k.add_argument(
        "--ops", nargs="+", choices=list(OPS), default=list(OPS), help="ops to run (default: all)"
    )
    k.add_argument(
        "--lengths",
        nargs="+",
        type=_positive_int,
        default=list(DEFAULT_LENGTHS),
        help="sequence lengths L (default: %(default)s)",
    )
    k.add_argument("--repeats", type=_positive_int, default=3, help="timed runs per point (median shown)")
    k.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    k.add_argument("--dtype", choices=list(DTYPES), default="float32", help="input dtype (math is fp32)")
    k.add_argument("--json", type=Path, metavar="PATH", help="also write all numbers to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from .kernels import DTYPES, format_report, run_bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = run_bench(args.ops, args.lengths, args.repeats, device, DTYPES[args.dtype])
    sys.stdout.write(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
