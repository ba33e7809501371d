"""Command line: ``python -m effviz.bench kernels [--ops ...] [--lengths ...] [--json PATH]`` and
``python -m effviz.bench sweep --models vim-tiny,deit-tiny --axis resolution --values 224,448``
and ``python -m effviz.bench figure SWEEP.json --html OUT.html`` (the Scaling lab's plots of a
saved sweep) and ``python -m effviz.bench stream --minutes 30 --out docs/stream-bench.json`` (per-chunk
latency and held state of the streaming transcribers as the seconds streamed grow) and
``python -m effviz.bench modality --out docs/modality-table.json`` (the survey's modality table:
transformer against linear-time mixers on text, vision, audio and audio-visual input) and
``python -m effviz.bench roofline --model vim-tiny --size 224 --threads 1`` (a forward's measured
time beside its floor: its matmuls and kernels priced alone) and ``python -m effviz.bench peers``
(our kernels and DeiT-Ti against other libraries' on the same inputs, interleaved in one run).

Tables go to stdout as Markdown (ready to paste into the README); progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..wording import counted


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
    return items


def _comma_numbers(text: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _number_range(text: str) -> tuple[float, float]:
    numbers = _comma_numbers(text)
    if len(numbers) != 2 or numbers[0] >= numbers[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH, got {text!r}")
    return numbers[0], numbers[1]


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .kernels import DEFAULT_LENGTHS, DTYPES, OPS

    parser = argparse.ArgumentParser(prog="python -m effviz bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    k = commands.add_parser(
        "kernels",
        help="time every kernel op by backend and sequence length",
        description="Latency (the backends timed in turn for a time budget, disturbed runs run "
        "again, minimum with p20-p80), peak memory, GB/s and speed-ups of every kernel op and "
        "backend, with this machine's copy bandwidth and matmul GFLOP/s.",
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
    k.add_argument("--budget", type=_non_negative_float, default=1.0,
                   help="seconds of timed runs per op and length, all backends together (default: %(default)s)")
    k.add_argument("--min-runs", type=_positive_int, default=3, help="undisturbed timed runs per backend, at least")
    k.add_argument("--device", default=None, help="cpu or cuda, or cuda:INDEX (default: cuda if available, else cpu)")
    k.add_argument("--dtype", choices=list(DTYPES), default="float32", help="input dtype (math is fp32)")
    k.add_argument("--json", type=Path, metavar="PATH", help="also write all numbers to this JSON file")

    from .sweep import ALLOCATORS, AXES, DTYPES as SWEEP_DTYPES, INTERLEAVE

    s = commands.add_parser(
        "sweep",
        help="latency and peak memory of whole models as resolution, audio length or tokens grow",
        description="At each size, time the models' forwards in turn (A B A B ...; with --interleave all, "
        "every model at every size in turn) in one child "
        "process with normal malloc, filling a time budget and running again any run that waited "
        "for the CPU; then measure each model's peak memory in a child of its own. Fit scaling "
        "exponents with bootstrap intervals and find where the efficient models overtake the "
        "attention baselines beyond noise. Models: official tiny architectures or bundled "
        "recipes, randomly initialised.",
    )
    s.add_argument("--models", type=_comma_list, required=True, help="comma-separated model ids, e.g. vim-tiny,deit-tiny")
    s.add_argument("--axis", choices=list(AXES), required=True,
                   help="resolution: image side in px; seconds: audio length; tokens: fused audio-visual length")
    s.add_argument("--values", type=_comma_numbers, required=True, help="comma-separated sizes in axis units")
    s.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available, else cpu")
    s.add_argument("--dtype", choices=list(SWEEP_DTYPES), default="fp32", help="model and input dtype")
    s.add_argument("--batch", type=_positive_int, default=1)
    s.add_argument("--budget", type=_non_negative_float, default=2.0,
                   help="seconds of timed runs per point, all its models together (default: %(default)s)")
    s.add_argument("--min-runs", type=_positive_int, default=3, help="undisturbed timed runs per model, at least")
    s.add_argument("--max-runs", type=_positive_int, default=30, help="undisturbed timed runs per model, at most")
    s.add_argument("--timeout", type=_positive_float, default=120.0,
                   help="seconds each model may take per point (startup and model build included)")
    s.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's default)")
    s.add_argument("--interleave", choices=list(INTERLEAVE), default="models",
                   help="models: the models of one size take turns, size after size; all: every model at every "
                   "size takes turns in one child, so that a machine whose speed drifts slows every size alike "
                   "(steadier exponents; every point is held in memory at once) (default: %(default)s)")
    s.add_argument("--allocator", choices=list(ALLOCATORS), default="steady",
                   help="steady: time with jemalloc keeping freed memory mapped, as a warm serving process runs "
                   "(no page faults once warm; glibc where jemalloc is not installed); glibc: a plain Python "
                   "process's malloc, whose big buffers are faulted in again by every run (default: %(default)s)")
    s.add_argument("--fit-range", type=_number_range, metavar="LOW,HIGH",
                   help="also fit exponents over the points with LOW <= x <= HIGH (axis units)")
    s.add_argument("--json", type=Path, metavar="PATH", help="also write every point and the summary to this JSON file")
    f = commands.add_parser(
        "figure",
        help="draw a sweep saved with --json as the Scaling lab's plots, in an offline HTML page",
    )
    f.add_argument("sweep_json", type=Path, help="file written by `sweep --json`")
    f.add_argument("--html", type=Path, required=True, metavar="PATH", help="HTML page to write")

    from ..models.registry import TRANSCRIBER_RECIPES
    from .stream import CHECKPOINTS_S, MAX_MINUTES

    st = commands.add_parser(
        "stream",
        help="per-chunk latency and held state of the streaming transcribers as the seconds streamed grow",
        description="Stream synthetic audio through each digit transcriber (saved weights when present, "
        "random ones otherwise) in chunks, the models in turn chunk by chunk, in this process with one "
        "torch thread by default; at checkpoints, the latency of the last chunks (minimum of the undisturbed "
        "ones, p20-p80) and the bytes the state holds. A model stops when its chunks take longer than the "
        "audio they hold, or when its state exceeds --state-budget-mib.",
    )
    st.add_argument("--models", type=_comma_list, default=list(TRANSCRIBER_RECIPES),
                    help="comma-separated transcriber ids (default: all four)")
    st.add_argument("--minutes", type=_positive_float, default=30.0,
                    help=f"audio streamed per model, at most {MAX_MINUTES:g} (default: %(default)s)")
    st.add_argument("--state-budget-mib", type=_positive_float, default=None,
                    help="stop a model whose state holds more than this (default: no budget)")
    st.add_argument("--window", type=_positive_int, default=25,
                    help="consecutive chunks a latency is taken over (default: %(default)s, 4 s of audio)")
    st.add_argument("--checkpoints", type=_comma_numbers, default=list(CHECKPOINTS_S), metavar="SECONDS,...",
                    help="seconds streamed to report (those reached, and the end; default: 10 s to 60 min)")
    st.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: %(default)s)")
    st.add_argument("--out", type=Path, metavar="PATH", help="also write every point and the summary to this JSON file")
    st.add_argument("--html", type=Path, metavar="PATH", help="also draw the curves in an offline HTML page")

    from .modality import MODALITIES

    mo = commands.add_parser(
        "modality",
        help="the survey's modality table, measured: transformer vs linear-time mixers on each modality",
        description="For text (causal language models over token length), vision (resolution), audio "
        "(seconds) and audio-visual input (tokens), sweep the transformer and the efficient models of the "
        "same backbone, randomly initialised, as the sweep command does; then tabulate the speed-up and "
        "memory saving at the longest input, the crossovers and the fitted exponents. The default sizes are "
        "estimated at 10-12 minutes on one thread of a 2-core CPU; --quick is a smoke run of tiny sizes.",
    )
    mo.add_argument("--modalities", type=_comma_list, default=list(MODALITIES),
                    help=f"comma-separated, of {', '.join(MODALITIES)} (default: all)")
    mo.add_argument("--quick", action="store_true",
                    help="tiny sizes and one timed run per model and size: checks the pipeline, not numbers to quote")
    mo.add_argument("--values", action="append", default=[], metavar="MODALITY=V,V,V",
                    help="sizes of one modality in its axis units (text: tokens, vision: px, audio: s, "
                    "audio-visual: tokens); repeat for others")
    mo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    mo.add_argument("--budget", type=_non_negative_float, default=2.0,
                    help="seconds of timed runs per size, all its models together (default: %(default)s)")
    mo.add_argument("--min-runs", type=_positive_int, default=3, help="undisturbed timed runs per model, at least")
    mo.add_argument("--max-runs", type=_positive_int, default=20, help="undisturbed timed runs per model, at most")
    mo.add_argument("--timeout", type=_positive_float, default=300.0,
                    help="seconds each model may take per size (startup and model build included)")
    mo.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: %(default)s)")
    mo.add_argument("--out", type=Path, metavar="PATH", help="also write every point, the fits and the table to this JSON file")
    mo.add_argument("--html", type=Path, metavar="PATH", help="also draw each modality's curves in an offline HTML page")

    from .roofline import DEFAULT_MODELS

    r = commands.add_parser(
        "roofline",
        help="a model's measured forward beside its floor: its matmuls and kernels each timed alone",
        description="Record the matmul/conv and kernel calls of one forward, time the forward and each distinct "
        "call alone, interleaved, and report the floor (matmul FLOPs at the GFLOP/s this machine reaches on the "
        "model's own GEMMs, plus each kernel's per-element cost times the elements the model pushes through it), "
        "the overhead (measured - floor) / measured, and the breakdown by component. Random weights.",
    )
    r.add_argument("--model", type=_comma_list, default=list(DEFAULT_MODELS),
                   help="comma-separated model ids (default: %(default)s)")
    r.add_argument("--size", type=_positive_int, default=224, help="image side in px (default: %(default)s)")
    r.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's default)")
    r.add_argument("--budget", type=_non_negative_float, default=3.0,
                   help="seconds of timed runs per model, forward and calls together (default: %(default)s)")
    r.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this JSON file")

    p = commands.add_parser(
        "peers",
        help="our selective scan, retention and DeiT-Ti against mamba_ssm, mambapy, fla and timm, interleaved",
        description="Time our kernels and DeiT-Ti beside other libraries' implementations of the same function on "
        "the same inputs (timed in turn, in one run), check that they agree, and print the latency ratios. A peer "
        "whose library is not installed is skipped with a note.",
    )
    p.add_argument("--size", type=_positive_int, default=224, help="DeiT-Ti image side in px (default: %(default)s)")
    p.add_argument("--length", type=_positive_int, default=None,
                   help="sequence length of the kernel comparisons (default: the tokens of --size)")
    p.add_argument("--threads", type=_positive_int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--budget", type=_non_negative_float, default=3.0,
                   help="seconds of timed runs per comparison (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write every number to this JSON file")
    return parser


def _modality_values(items: list[str]) -> dict[str, list[float]]:
    """["text=64,128,256", ...] -> {"text": [64.0, 128.0, 256.0], ...}; ValueError otherwise."""
    values = {}
    for item in items:
        modality, sep, numbers = item.partition("=")
        if not sep:
            raise ValueError(f"--values takes MODALITY=V,V,V, got {item!r}")
        try:
            values[modality.strip()] = _comma_numbers(numbers)
        except argparse.ArgumentTypeError as err:
            raise ValueError(f"--values {item!r}: {err}") from None
    return values


def _modality_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import time

    from .modality import ModalitySpec, format_table, make_record, run_modalities
    from .sweep import format_environment, sweep_environment

    try:
        spec = ModalitySpec(modalities=tuple(args.modalities), quick=args.quick, values=_modality_values(args.values),
                            device=args.device, budget_s=args.budget, min_runs=args.min_runs, max_runs=args.max_runs,
                            timeout_s=args.timeout, threads=args.threads)
    except ValueError as err:
        parser.error(str(err))
    print("[modality] calibrating: timing a fixed workload to gauge this machine's noise", file=sys.stderr, flush=True)
    env = sweep_environment(spec.sweep_spec(spec.modalities[0]))
    points: dict[str, list] = {m: [] for m in spec.modalities}
    started = time.perf_counter()
    interrupted = False
    try:
        for modality, point in run_modalities(spec):
            points[modality].append(point)
            value = "no latency" if point.latency_ms is None else f"{point.latency_ms:.1f} ms"
            memory = f", {point.peak_mem_mib:.1f} MiB" if point.peak_mem_mib is not None else ""
            reason = f" ({point.reason})" if point.reason else ""
            print(f"[{modality}] {point.model} at {point.x:g} ({point.tokens} tokens): {point.status}, {value}{memory}"
                  f"{reason}; {time.perf_counter() - started:.0f} s elapsed", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # the running child was killed on the way out; report what was measured
        interrupted = True
        print("interrupted: reporting the points measured so far", file=sys.stderr)
    record = make_record(spec, env, points, time.perf_counter() - started)
    sys.stdout.write(format_environment(env) + "\n" + format_table(record["table"]))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.html is not None:
        from .figure import write_modality_html

        write_modality_html(record, args.html)
    return 130 if interrupted else 0


def _roofline_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from .roofline import environment, format_report, iter_roofline
    from .sweep import plan_input

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        for model_id in args.model:  # refuse an unknown model or a size it cannot take before timing any
            plan_input(model_id, "resolution", args.size)
    except ValueError as err:
        parser.error(str(err))
    env = environment()
    results = list(iter_roofline(args.model, args.size, args.budget))
    sys.stdout.write(format_report(results, env))
    if args.json is not None:
        record = {"environment": env, "size": args.size, "results": [r.to_dict() for r in results]}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _peers_main(args: argparse.Namespace) -> int:
    import torch

    from .peers import format_report, run_peers

    torch.set_num_threads(args.threads)
    record = run_peers(size=args.size, length=args.length, budget_s=args.budget)
    sys.stdout.write(format_report(record))
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _stream_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Exit code 0, or 1 when a model could not stream (its row says why), 130 when interrupted."""
    import time

    import torch

    from .stream import StreamEnd, StreamSpec, duration, format_report, make_record, run_stream, stream_environment

    try:
        spec = StreamSpec(models=tuple(args.models), minutes=args.minutes, state_budget_mib=args.state_budget_mib,
                          window_chunks=args.window, checkpoints_s=tuple(args.checkpoints), threads=args.threads)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(spec.threads)
    env = stream_environment(spec)
    points, ends = [], []
    started = time.perf_counter()
    interrupted = False
    try:
        for event in run_stream(spec):
            if isinstance(event, StreamEnd):
                ends.append(event)
                print(f"[stream] {event.model}: {event.limit or 'done'}: {event.reason}", file=sys.stderr, flush=True)
                continue
            points.append(event)
            if event.checkpoint:
                print(f"[stream] {event.model} at {duration(event.seconds)}: {event.latency_ms:.2f} ms a chunk, "
                      f"state {event.state_bytes:,} bytes", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the models that ended so far", file=sys.stderr)
    record = make_record(spec, env, points, ends, time.perf_counter() - started)
    sys.stdout.write(format_report(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    if args.html is not None:
        from .figure import write_stream_html

        write_stream_html(record, args.html)
    if interrupted:
        return 130
    return 1 if any(end.limit == "error" for end in ends) else 0


def _sweep_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from .sweep import SweepSpec, format_report, run_sweep, summarize, sweep_environment

    try:
        spec = SweepSpec(
            models=tuple(args.models), axis=args.axis, values=tuple(args.values),
            device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype=args.dtype,
            batch=args.batch, budget_s=args.budget, min_runs=args.min_runs, max_runs=args.max_runs,
            timeout_s=args.timeout, threads=args.threads, interleave=args.interleave, allocator=args.allocator,
        )
    except ValueError as err:
        parser.error(str(err))
    print("[sweep] calibrating: timing a fixed workload to gauge this machine's noise", file=sys.stderr, flush=True)
    env = sweep_environment(spec)
    total = len(spec.models) * len(spec.values)
    points = []
    interrupted = False
    try:
        for point in run_sweep(spec):
            points.append(point)
            value = "no latency"
            if point.latency_ms is not None:
                value = (f"{point.latency_ms:.1f} ms (p20-p80 {point.latency_p20_ms:.1f}-{point.latency_p80_ms:.1f}, "
                         f"{counted(len(point.latency_runs_ms), 'run')}, {point.disturbed_runs} redone)")
            memory = f", {point.peak_mem_mib:.1f} MiB" if point.peak_mem_mib is not None else ""
            reason = f" ({point.reason})" if point.reason else ""
            print(f"[{len(points)}/{total}] {point.model} at {point.x:g} {spec.unit} ({point.tokens} tokens): "
                  f"{point.status}, {value}{memory}{reason}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # the running child was killed on the way out; report what was measured
        interrupted = True
        print("interrupted: reporting the points measured so far", file=sys.stderr)
    summary = summarize(points, args.fit_range)
    sys.stdout.write(format_report(env, points, summary, spec.unit))
    if args.json is not None:
        record = {
            "environment": env,
            "spec": {"models": list(spec.models), "axis": spec.axis, "unit": spec.unit, "values": list(spec.values)},
            "points": [p.to_dict() for p in points],
            "summary": summary,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 130 if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return _sweep_main(args, parser)
    if args.command == "stream":
        return _stream_main(args, parser)
    if args.command == "modality":
        return _modality_main(args, parser)
    if args.command == "roofline":
        return _roofline_main(args, parser)
    if args.command == "peers":
        return _peers_main(args)
    if args.command == "figure":
        from .figure import write_html

        try:
            write_html(args.sweep_json, args.html)
        except (OSError, ValueError, KeyError, TypeError) as err:
            parser.error(f"cannot draw {args.sweep_json}: {err}")
        return 0
    import torch

    from .devices import bench_device
    from .kernels import DTYPES, bench_policy, format_report, run_bench

    try:
        device = bench_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        policy = bench_policy(args.budget, device, min_runs=args.min_runs, max_runs=max(30, args.min_runs))
    except ValueError as err:
        parser.error(str(err))
    result = run_bench(args.ops, args.lengths, policy, device, DTYPES[args.dtype])
    sys.stdout.write(format_report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
