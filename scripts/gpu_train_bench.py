"""Forward and forward+backward time of the Triton kernels against the torch backend, on CUDA.

    python scripts/gpu_train_bench.py --json OUT.json

selective_scan at Vim-Ti's shapes (dim 384 = 2 x 192, N 16; L = tokens at 224, 448, 896 and 1248
px plus the class token), for the scan's chunk sizes 32, 64 and 128 (forward), and bi_wkv at
Vision-RWKV-Ti's (C 192). Times are medians of CUDA-event-timed runs after warm-up. With
mamba_ssm importable, its CUDA ``selective_scan_fn`` is timed on the same inputs too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from effviz.kernels import bi_wkv, selective_scan
from effviz.kernels.selective_scan import triton_backend as scan_triton_backend

LENGTHS = (197, 785, 3137, 6085)  # (side / 16)^2 + 1 at 224, 448, 896, 1248 px
CHUNKS = (32, 64, 128)


def median_ms(fn: Callable[[], object], runs: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def scan_inputs(batch: int, length: int, dim: int = 384, n_state: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, device="cuda")  # noqa: E731
    return dict(u=r(batch, dim, length), delta=r(batch, dim, length), A=-torch.exp(r(dim, n_state) * 0.5),
                B=r(batch, n_state, length), C=r(batch, n_state, length), D=r(dim), z=r(batch, dim, length),
                delta_bias=r(dim) * 0.1)


def train_step(run: Callable[[dict[str, torch.Tensor]], torch.Tensor],
               x: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One forward and backward of ``run`` on fresh leaves of ``x``, gradients cleared after."""
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}

    def step() -> None:
        run(leaves).sum().backward()
        for t in leaves.values():
            t.grad = None
    return step


def bench_scan(batch: int, length: int) -> dict[str, float]:
    x = scan_inputs(batch, length)
    row: dict[str, float] = {}
    for backend in ("triton", "torch"):
        run = lambda inputs, backend=backend: selective_scan(  # noqa: E731
            **inputs, delta_softplus=True, backend=backend)
        with torch.no_grad():
            row[f"{backend}_fwd_ms"] = median_ms(lambda: run(x))
        row[f"{backend}_train_ms"] = median_ms(train_step(run, x))
    default_chunk = scan_triton_backend.CHUNK
    for chunk in CHUNKS:
        scan_triton_backend.CHUNK = chunk
        with torch.no_grad():
            row[f"triton_chunk{chunk}_fwd_ms"] = median_ms(
                lambda: selective_scan(**x, delta_softplus=True, backend="triton"))
    scan_triton_backend.CHUNK = default_chunk
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return row
    run = lambda inputs: selective_scan_fn(  # noqa: E731
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"], inputs["z"],
        inputs["delta_bias"], delta_softplus=True)
    with torch.no_grad():
        row["mamba_ssm_fwd_ms"] = median_ms(lambda: run(x))
        mine = selective_scan(**x, delta_softplus=True, backend="triton")
        row["max_abs_diff_vs_mamba_ssm"] = (run(x) - mine).abs().max().item()
    row["mamba_ssm_train_ms"] = median_ms(train_step(run, x))
    return row


def bench_bi_wkv(batch: int, length: int, channels: int = 192) -> dict[str, float]:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = dict(w=torch.rand(channels, generator=g, device="cuda") / length,
             u=torch.randn(channels, generator=g, device="cuda") / length,
             k=torch.randn(batch, length, channels, generator=g, device="cuda"),
             v=torch.randn(batch, length, channels, generator=g, device="cuda"))
    row: dict[str, float] = {}
    for backend in ("triton", "torch"):
        run = lambda inputs, backend=backend: bi_wkv(**inputs, backend=backend)  # noqa: E731
        with torch.no_grad():
            row[f"{backend}_fwd_ms"] = median_ms(lambda: run(x))
        row[f"{backend}_train_ms"] = median_ms(train_step(run, x))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    results = {"device": torch.cuda.get_device_name(), "selective_scan": [], "bi_wkv": []}
    for batch in args.batches:
        for length in LENGTHS:
            for op, bench in (("selective_scan", bench_scan), ("bi_wkv", bench_bi_wkv)):
                row = {"batch": batch, "L": length, **bench(batch, length)}
                results[op].append(row)
                print(op, json.dumps(row), flush=True)
                args.json.write_text(json.dumps(results, indent=1))  # partial results survive a timeout
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
