"""Kernel benchmark: every op of the runtime, by backend, against sequence length.

Each measurement is judged three ways: against the ``reference`` backend (the readable
definition), against a plain sequential loop (selective_scan only: the baseline a fast backend
has to beat), and against this machine's own limits, measured in the same run: the bandwidth of
a large tensor copy (scans are memory-bound) and matmul GFLOP/s.

Latency is timed in this process with normal malloc by the shared protocol of
``effviz.bench.timing``: after one warm-up run each, the backends of an (op, length) are timed in
turn (A B A B ...) for a time budget; runs that waited for the CPU are run again, and the
minimum is the headline, with p20 and p80 beside it. ``iter_bench`` yields the table after each
(op, length), with an estimate of the time left, so the app can stream it. Peak memory is
measured afterwards for the same calls in a child process (``effviz.bench.memory``), which is
why ``prepare`` builds a call from plain data.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO

import torch
import torch.nn.functional as F

import effviz
from effviz import kernels
from effviz.bench.memory import measure_peak_memory
from effviz.bench.timing import TimingPolicy, measure, measure_interleaved
from effviz.wording import counted

LOOP = "sequential loop"
DEFAULT_LENGTHS = (1024, 4096, 16384)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The reference backends of bi_wkv and retention materialise (T, T) tensors. Above this much
# working memory they are skipped rather than swapping the machine (or the Space) to death.
REFERENCE_MEMORY_CAP = 4 * 2**30
# A backend whose run, extrapolated linearly from the previous length, would take longer than
# this is skipped (the per-token Python loops at L=16384 on a small CPU).
MAX_SECONDS_PER_RUN = 30.0
MEMORY_TIMEOUT_S = 600.0
# The mark of a timed row whose runs kept waiting for the CPU, by the times its numbers come from.
UNSTABLE_MARKS = {"wall": "unstable: wall times†", "cpu": "unstable: CPU times†"}
UNSTABLE_FOOTNOTE = (
    "† unstable: too few runs stayed undisturbed after the redos (the machine was busy throughout), so min, "
    "p20 and p80 come from all runs: their wall times include the waiting; their CPU times (one thread) "
    "leave it out."
)

# Shapes of the bench, the tiny-model sizes of DESIGN.md §3.
SCAN_BATCH, SCAN_DIM, SCAN_STATE = 1, 384, 16  # Vim-Ti: expand 2 x D 192, d_state 16
WKV_BATCH, WKV_CHANNELS = 1, 192  # VRWKV-Ti
RET_BATCH, RET_HEADS, RET_HEAD_DIM = 1, 3, 64  # DeiT-Ti-sized ViR: 3 heads of 64


@dataclass(frozen=True)
class OpCase:
    """One row group of the report: an op (and mode) at fixed sizes, varying only the length."""

    name: str
    shapes: str
    make_inputs: Callable[[int, torch.dtype, torch.Generator], dict[str, torch.Tensor]]
    run: Callable[[dict[str, torch.Tensor], str], torch.Tensor]
    # Working memory of the reference backend at a length, for the ones that are O(L²).
    reference_bytes: Callable[[int], int] | None = None


def _scan_inputs(length: int, dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    b, d, n = SCAN_BATCH, SCAN_DIM, SCAN_STATE
    # Mamba's initialisation: A = -[1..N] per channel, step sizes dt log-uniform in
    # [1e-3, 1e-1] carried by delta_bias (the inverse softplus of dt), small raw deltas.
    dt = torch.exp(torch.empty(d).uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
    return {
        "u": torch.randn(b, d, length, generator=gen, dtype=dtype),
        "delta": (0.1 * torch.randn(b, d, length, generator=gen)).to(dtype),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        "B": torch.randn(b, n, length, generator=gen, dtype=dtype),
        "C": torch.randn(b, n, length, generator=gen, dtype=dtype),
        "D": torch.ones(d),
        "z": torch.randn(b, d, length, generator=gen, dtype=dtype),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def _run_scan(x: dict[str, torch.Tensor], backend: str) -> torch.Tensor:
    """The call Vision Mamba makes: D skip, SiLU(z) gate, delta bias + softplus."""
    if backend == LOOP:
        return sequential_loop_scan(**x)
    return kernels.selective_scan(**x, delta_softplus=True, backend=backend)


def sequential_loop_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    delta_bias: torch.Tensor,
) -> torch.Tensor:
    """The selective scan as a plain Python loop over L that keeps only the (batch, dim, N) state.

    Same math as ``_run_scan`` (softplus deltas, D skip, SiLU gate), fp32 state, in-place
    updates: the honest baseline that the fast backends are measured against.
    """
    u32 = u.float()
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])
    A32, B32, C32 = A.float(), B.float(), C.float()
    batch, dim, length = u.shape
    h = torch.zeros(batch, dim, A.shape[1], device=u.device)
    y = torch.empty(batch, dim, length, device=u.device)
    for t in range(length):
        h.mul_(torch.exp(dt[:, :, t, None] * A32))
        h.add_((dt[:, :, t] * u32[:, :, t])[:, :, None] * B32[:, None, :, t])
        y[:, :, t] = (h * C32[:, None, :, t]).sum(-1)
    y = (y + D.float()[:, None] * u32) * F.silu(z.float())
    return y.to(u.dtype)


def _wkv_inputs(length: int, dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    c = WKV_CHANNELS
    # VRWKV divides its learned decay and bonus by the token count T.
    return {
        "w": torch.rand(c, generator=gen) * 5 / length,
        "u": torch.randn(c, generator=gen) / length,
        "k": torch.randn(WKV_BATCH, length, c, generator=gen, dtype=dtype),
        "v": torch.randn(WKV_BATCH, length, c, generator=gen, dtype=dtype),
    }


def _retention_inputs(length: int, dtype: torch.dtype, gen: torch.Generator) -> dict[str, torch.Tensor]:
    shape = (RET_BATCH, RET_HEADS, length, RET_HEAD_DIM)
    return {
        "q": (torch.randn(shape, generator=gen) * RET_HEAD_DIM**-0.5).to(dtype),
        "k": torch.randn(shape, generator=gen, dtype=dtype),
        "v": torch.randn(shape, generator=gen, dtype=dtype),
        "gamma": 1 - 2.0 ** (-5 - torch.arange(RET_HEADS, dtype=torch.float32)),  # ViR's decays
    }


def _retention_case(mode: str) -> OpCase:
    return OpCase(
        name=f"retention ({mode})",
        shapes=f"batch {RET_BATCH}, heads {RET_HEADS}, dk = dv = {RET_HEAD_DIM}; "
        "the reference is the parallel form whatever the mode",
        make_inputs=_retention_inputs,
        run=lambda x, backend: kernels.retention(**x, mode=mode, backend=backend),
        # Peak of the (batch, heads, T, T) decay mask, scores and masked scores: 3 fp32 copies
        # (measured with effviz.bench.memory).
        reference_bytes=lambda length: 3 * 4 * RET_BATCH * RET_HEADS * length**2,
    )


OPS: dict[str, list[OpCase]] = {
    "selective_scan": [
        OpCase(
            name="selective_scan",
            shapes=f"batch {SCAN_BATCH}, dim {SCAN_DIM}, N {SCAN_STATE}; D, z, delta_bias, softplus",
            make_inputs=_scan_inputs,
            run=_run_scan,
        )
    ],
    "bi_wkv": [
        OpCase(
            name="bi_wkv",
            shapes=f"batch {WKV_BATCH}, C {WKV_CHANNELS}",
            make_inputs=_wkv_inputs,
            run=lambda x, backend: kernels.bi_wkv(**x, backend=backend),
            # Peak of the (batch, T, T, C) logits, softmax and weighted values: 3 fp32 copies
            # (measured with effviz.bench.memory).
            reference_bytes=lambda length: 3 * 4 * WKV_BATCH * WKV_CHANNELS * length**2,
        )
    ],
    "retention": [_retention_case("chunk"), _retention_case("recurrent")],
}
CASES: dict[str, OpCase] = {case.name: case for group in OPS.values() for case in group}


@dataclass
class Row:
    """One (op, backend, length) point; ``skipped`` says why there are no numbers. ``min_ms`` is
    the headline; ``times_ms`` the runs it and ``p20_ms``/``p80_ms`` come from; ``disturbed``
    the runs that waited for the CPU and were run again; ``unstable`` that too few runs stayed
    undisturbed, so the numbers come from all runs (``basis``: their CPU or wall times)."""

    op: str
    backend: str
    length: int | None
    min_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    times_ms: list[float] | None = None
    basis: str = "wall"  # "cpu": too few undisturbed runs on one thread, see effviz.bench.timing.Timing
    disturbed: int = 0
    unstable: bool = False
    gb_per_s: float | None = None
    peak_mib: float | None = None
    vs_reference: float | None = None
    vs_loop: float | None = None
    skipped: str | None = None


def _inputs(
    case: OpCase, length: int, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Drawn on the CPU from a seeded generator, so every device gets the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v.to(device) for k, v in case.make_inputs(length, dtype, gen).items()}


def prepare(
    op: str, backend: str, length: int, device: str, dtype: str, seed: int = 0
) -> Callable[[], torch.Tensor]:
    """Build one benchmark call from plain data: inputs allocated now, the op run on each call.

    This is the factory the memory child uses (``effviz.bench.kernels:prepare``).
    """
    case = CASES[op]
    inputs = _inputs(case, length, torch.device(device), DTYPES[dtype], seed)

    def call() -> torch.Tensor:
        with torch.no_grad():
            return case.run(inputs, backend)

    return call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_policy(budget_s: float, device: torch.device, min_runs: int = 3, max_runs: int = 30) -> TimingPolicy:
    """The timing protocol's settings for this bench (CPU time is no guide on CUDA)."""
    on_cpu = device.type == "cpu"
    return TimingPolicy(budget_s=budget_s, min_runs=min_runs, max_runs=max_runs, check_cpu=on_cpu,
                        cpu_fallback=on_cpu and torch.get_num_threads() == 1)


def _processor_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_machine(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """This machine's own limits: large-copy bandwidth (read + write) and matmul throughput."""
    src = torch.ones(64 * 2**20, device=device)  # 256 MiB: far beyond any cache
    dst = torch.zeros_like(src)
    dst.copy_(src)
    sync = (lambda: _sync(device))
    copy_ms = measure(lambda: dst.copy_(src), bench_policy(0, device, min_runs=5, max_runs=5), sync).min_ms
    size = 4096 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    matmul_ms = measure(lambda: a @ b, bench_policy(0, device, max_runs=3), sync).min_ms
    return {
        "processor": _processor_name(device),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "effviz": effviz.__version__,
        "backends": kernels.available_backends(),
        "copy_gb_per_s": 2 * src.nbytes / copy_ms / 1e6,
        "matmul_gflop_per_s": 2 * size**3 / matmul_ms / 1e6,
    }


def candidate_backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Backends worth timing on ``device``, and the reasons the other available ones are not."""
    names, skipped = [], {}
    for name in kernels.available_backends():
        if name == "triton" and device.type != "cuda":
            skipped[name] = "needs a CUDA device (on CPU it runs only under the slow interpreter)"
        elif name == "cpu" and device.type != "cpu":
            skipped[name] = "runs on CPU tensors only"
        else:
            names.append(name)
    return names, skipped


def _dispatch_refusal(case: OpCase, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """The op's own reason for not running ``backend`` (e.g. no such implementation), if any."""
    tiny = _inputs(case, 8, device, dtype)
    try:
        with torch.no_grad():
            case.run(tiny, backend)
    except ValueError as err:
        return str(err)
    return None


def _reference_refusal(case: OpCase, length: int) -> str | None:
    if case.reference_bytes is None or case.reference_bytes(length) <= REFERENCE_MEMORY_CAP:
        return None
    need = case.reference_bytes(length) / 2**30
    return f"O(L²) reference needs ~{need:.1f} GiB at L={length} (cap {REFERENCE_MEMORY_CAP / 2**30:g} GiB)"


def _too_slow(previous: Row | None, length: int) -> str | None:
    if previous is None:
        return None
    seconds = previous.min_ms / 1e3 * length / previous.length
    if seconds <= MAX_SECONDS_PER_RUN:
        return None
    return (
        f"~{seconds:.0f} s per run (extrapolated from L={previous.length}), "
        f"over the {MAX_SECONDS_PER_RUN:g} s cap"
    )


def _output_bytes(out: torch.Tensor | tuple) -> int:
    return sum(t.nbytes for t in (out if isinstance(out, tuple) else (out,)))


def run_bench(
    ops: Sequence[str],
    lengths: Sequence[int],
    policy: TimingPolicy,
    device: torch.device,
    dtype: torch.dtype,
    log: TextIO = sys.stderr,
) -> dict[str, Any]:
    """Time every (op, backend, length), then measure peak memory of the calls that ran."""
    for result in iter_bench(ops, lengths, policy, device, dtype, log):
        pass
    return result


def iter_bench(
    ops: Sequence[str],
    lengths: Sequence[int],
    policy: TimingPolicy,
    device: torch.device,
    dtype: torch.dtype,
    log: TextIO = sys.stderr,
) -> Iterator[dict[str, Any]]:
    """The bench as it goes: ``{"machine", "rows", "progress"}`` after the machine's limits, after
    each (op, length) is timed, and once more with peak memory filled in (``progress["done"]``
    True). ``progress`` counts the (op, length) groups and estimates the seconds left."""
    print(f"[bench] measuring copy bandwidth and matmul throughput on {device}", file=log, flush=True)
    machine = {**measure_machine(device, dtype), "protocol": describe_policy(policy)}
    backends, unavailable = candidate_backends(device)
    dtype_name = machine["dtype"]
    cases = [c for op in ops for c in OPS[op]]
    lengths = sorted(set(lengths))
    groups = [(case.name, length) for case in cases for length in lengths]
    rows: list[Row] = []
    took: dict[tuple[str, int], float] = {}  # seconds each timed group took

    def snapshot(done: bool = False) -> dict[str, Any]:
        progress = {"groups": len(groups), "timed": len(took), "done": done,
                    "eta_s": None if done else estimate_left_s(groups, took, policy)}
        return {"machine": machine, "rows": [asdict(r) for r in rows], "progress": progress}

    yield snapshot()
    for case in cases:
        names = ([LOOP] if case.name == "selective_scan" else []) + backends
        refused = {b: why for b in backends if (why := _dispatch_refusal(case, b, device, dtype))}
        refused |= unavailable
        last_timed: dict[str, Row] = {}
        for length in lengths:
            started = time.perf_counter()
            by_backend = _time_group(case, length, [b for b in names if b not in refused], last_timed, policy,
                                     device, dtype, log)
            rows.extend(by_backend.values())
            took[(case.name, length)] = time.perf_counter() - started
            yield snapshot()
        rows += [Row(case.name, backend, None, skipped=reason) for backend, reason in refused.items()]
    _measure_memory(rows, device, dtype_name, log)
    yield snapshot(done=True)


def _time_group(
    case: OpCase, length: int, backends: list[str], last_timed: dict[str, Row], policy: TimingPolicy,
    device: torch.device, dtype: torch.dtype, log: TextIO,
) -> dict[str, Row]:
    """Every backend of ``case`` at ``length``: warmed up one by one, then timed in turn."""
    inputs = _inputs(case, length, device, dtype)
    input_bytes = sum(t.nbytes for t in inputs.values())
    by_backend: dict[str, Row] = {}
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    out_bytes: dict[str, int] = {}
    for backend in backends:
        row = by_backend[backend] = Row(case.name, backend, length)
        # The memory cap first: a linear time extrapolation understates an O(L²) reference.
        if backend == "reference":
            row.skipped = _reference_refusal(case, length)
        row.skipped = row.skipped or _too_slow(last_timed.get(backend), length)
        if row.skipped:
            continue
        print(f"[bench] {case.name} {backend} L={length}", file=log, flush=True)

        def call(backend: str = backend) -> torch.Tensor:
            with torch.no_grad():
                return case.run(inputs, backend)

        try:
            out_bytes[backend] = _output_bytes(call())  # also the warm-up run
            _sync(device)
        except (RuntimeError, MemoryError) as err:  # out of memory: a marker, not a crash
            row.skipped = f"failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            continue
        calls[backend] = call
    if calls:
        timings = measure_interleaved(calls, policy, lambda: _sync(device))
        for backend, timing in timings.items():
            row = by_backend[backend]
            row.min_ms, row.p20_ms, row.p80_ms = timing.min_ms, timing.p20_ms, timing.p80_ms
            row.times_ms, row.disturbed, row.basis = timing.used_ms, timing.disturbed, timing.basis
            row.unstable = timing.unstable
            row.gb_per_s = (input_bytes + out_bytes[backend]) / row.min_ms / 1e6
            last_timed[backend] = row
    for row in by_backend.values():
        for base, attr in (("reference", "vs_reference"), (LOOP, "vs_loop")):
            baseline = by_backend.get(base)
            if row.min_ms and baseline is not None and baseline.min_ms:
                setattr(row, attr, baseline.min_ms / row.min_ms)
    return by_backend


def estimate_left_s(groups: Sequence[tuple[str, int]], took: dict[tuple[str, int], float],
                    policy: TimingPolicy) -> float | None:
    """Seconds the untimed (op, length) groups should take: each at least the time budget, and
    at least the op's last timed group scaled linearly with the length (an O(L²) reference
    grows faster, so this is a lower bound). None before any group is timed."""
    if not took:
        return None
    left = 0.0
    for op, length in groups:
        if (op, length) in took:
            continue
        before = [(n, t) for (o, n), t in took.items() if o == op]
        scaled = max(before)[1] * length / max(before)[0] if before else 0.0
        left += max(policy.budget_s, scaled)
    return left


def describe_policy(policy: TimingPolicy) -> str:
    """How the bench times, in one sentence."""
    return (
        f"backends timed in turn for {policy.budget_s:g} s per op and length, {policy.min_runs}-{policy.max_runs} "
        f"undisturbed runs each, minimum shown (p20-p80 beside it); runs that waited for the CPU "
        f"(wall over CPU time by {100 * policy.margin:.0f}%) run again"
    )


def _measure_memory(rows: list[Row], device: torch.device, dtype_name: str, log: TextIO) -> None:
    timed = [r for r in rows if r.min_ms is not None]
    if not timed:
        return
    print(f"[bench] measuring peak memory of {counted(len(timed), 'call')} in a child process", file=log, flush=True)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    calls = [
        {"op": r.op, "backend": r.backend, "length": r.length, "device": str(device), "dtype": dtype_name}
        for r in timed
    ]
    readings = measure_peak_memory(
        "effviz.bench.kernels:prepare", calls, device=str(device), timeout_s=MEMORY_TIMEOUT_S
    )
    for row, reading in zip(timed, readings):
        row.peak_mib = reading.peak_mib
        if reading.error:
            print(f"[bench] peak memory of {row.op} {row.backend} L={row.length}: {reading.error}", file=log)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def format_report(result: dict[str, Any]) -> str:
    """Markdown: a header with the machine's limits, then one table per op (pastes into README)."""
    m = result["machine"]
    lines = [
        f"**{m['processor']}** ({m['device']}, {counted(m['threads'], 'thread')}), {m['dtype']}, "
        f"torch {m['torch']}, effviz {m['effviz']}; backends available: {', '.join(m['backends'])}",
        "",
        f"Measured limits: copy bandwidth **{m['copy_gb_per_s']:.1f} GB/s** (read + write), "
        f"matmul **{m['matmul_gflop_per_s']:.0f} GFLOP/s**.",
        "",
        f"Timing: {m['protocol']}.",
    ]
    rows = result["rows"]
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        with_loop = any(r["backend"] == LOOP for r in op_rows)
        header = ["backend", "L", "min ms", "p20-p80 ms", "runs (redone)", "peak MiB", "GB/s", "% of copy BW",
                  "vs reference"]
        header += ["vs loop"] if with_loop else []
        lines += ["", f"### {op}", "", CASES[op].shapes, ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in op_rows:
            length = "all" if r["length"] is None else str(r["length"])
            if r["skipped"]:
                cells = [r["backend"], length, f"skipped: {r['skipped']}"] + [""] * (len(header) - 3)
            else:
                share = None if r["gb_per_s"] is None else 100 * r["gb_per_s"] / m["copy_gb_per_s"]
                cells = [
                    r["backend"],
                    length,
                    _fmt(r["min_ms"]),
                    f"{_fmt(r['p20_ms'])}-{_fmt(r['p80_ms'])}",
                    f"{len(r['times_ms'])} ({r['disturbed']})" + (f" {UNSTABLE_MARKS[r['basis']]}" if r["unstable"] else ""),
                    _fmt(r["peak_mib"]),
                    _fmt(r["gb_per_s"]),
                    _fmt(share, 2),
                    _fmt(r["vs_reference"]) + ("x" if r["vs_reference"] else ""),
                ]
                if with_loop:
                    cells.append(_fmt(r["vs_loop"]) + ("x" if r["vs_loop"] else ""))
            lines.append("| " + " | ".join(cells) + " |")
        if any(r["unstable"] for r in op_rows):
            lines += ["", UNSTABLE_FOOTNOTE]
    return "\n".join(lines) + "\n"
