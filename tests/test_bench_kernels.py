"""The kernel benchmark CLI and the child-process peak-memory measurement."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effviz import kernels
from effviz.bench.kernels import CASES, LOOP, MAX_SECONDS_PER_RUN, Row, _reference_refusal, _too_slow, prepare
from effviz.bench.memory import MemoryMeasurementError, measure_peak_memory, peak_memory_mib

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

pytestmark = pytest.mark.timeout(300)


def scenario(kind: str, mib: int = 0):
    """Memory-child factory (``tests.test_bench_kernels:scenario``): one call per kind."""
    if kind == "allocate":
        return lambda: torch.ones(mib * MIB // 4)  # ones, not empty: the pages must be touched
    if kind == "in_place":
        x = torch.zeros(mib * MIB // 4)  # allocated before the baseline: not part of the peak
        return lambda: x.add_(1)
    if kind == "raise":

        def fail():
            raise ValueError("deliberate failure")

        return fail
    if kind == "exit":
        return lambda: os._exit(3)  # the child dies, as under the OOM killer
    raise AssertionError(kind)


def test_memory_reads_known_allocations_and_survives_failures():
    readings = measure_peak_memory(
        f"{__name__}:scenario",
        [
            {"kind": "allocate", "mib": 64},
            {"kind": "in_place", "mib": 128},
            {"kind": "raise"},
            {"kind": "exit"},
            {"kind": "allocate", "mib": 16},  # runs in a fresh child after the one that died
        ],
    )
    assert len(readings) == 5
    assert 60 <= readings[0].peak_mib <= 80
    assert readings[1].error is None and readings[1].peak_mib < 8
    assert readings[2].peak_mib is None and "deliberate failure" in readings[2].error
    assert readings[3].peak_mib is None and "exited with code 3" in readings[3].error
    assert 14 <= readings[4].peak_mib <= 24


def test_peak_memory_mib_raises_on_failure():
    # Any importable factory works; json.loads fails on this input without importing torch.
    with pytest.raises(MemoryMeasurementError, match="JSONDecodeError"):
        peak_memory_mib("json:loads", {"s": "not json"})


def test_sequential_loop_computes_the_selective_scan():
    call = prepare("selective_scan", "reference", 37, "cpu", "float32")
    loop = prepare("selective_scan", LOOP, 37, "cpu", "float32")
    torch.testing.assert_close(loop(), call(), rtol=6e-4, atol=2e-3)


def test_caps_skip_quadratic_references_and_slow_loops():
    assert _reference_refusal(CASES["selective_scan"], 16384) is None
    for op in ("bi_wkv", "retention (chunk)"):
        assert _reference_refusal(CASES[op], 64) is None
        assert "O(L²)" in _reference_refusal(CASES[op], 16384)

    # A run extrapolated linearly from the previous length past the time cap is skipped.
    previous = Row("selective_scan", LOOP, 1024, min_ms=MAX_SECONDS_PER_RUN * 1e3 / 3)
    assert _too_slow(previous, 2048) is None
    assert "extrapolated from L=1024" in _too_slow(previous, 4096)
    assert _too_slow(None, 16384) is None


def test_cli_reports_every_op_and_backend(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "effviz.bench", "kernels"]
        + ["--lengths", "32", "--budget", "0", "--min-runs", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    machine = result["machine"]
    assert machine["copy_gb_per_s"] > 0 and machine["matmul_gflop_per_s"] > 0
    rows = result["rows"]
    assert {r["op"] for r in rows} == set(CASES)
    for op in CASES:
        expected = set(kernels.available_backends()) | ({LOOP} if op == "selective_scan" else set())
        assert {r["backend"] for r in rows if r["op"] == op} == expected, op
        for backend in ("reference", "torch"):  # always runnable on CPU at L=32
            (row,) = [r for r in rows if r["op"] == op and r["backend"] == backend]
            assert row["skipped"] is None and row["length"] == 32
            assert row["min_ms"] > 0 and row["gb_per_s"] > 0 and row["vs_reference"] > 0
            assert row["min_ms"] == min(row["times_ms"]) <= row["p20_ms"] <= row["p80_ms"]
            assert row["peak_mib"] is not None and row["peak_mib"] >= 0
    for row in rows:
        assert (row["min_ms"] is None) == (row["skipped"] is not None), row
    (torch_scan,) = [r for r in rows if r["op"] == "selective_scan" and r["backend"] == "torch"]
    assert torch_scan["vs_loop"] > 0

    table = proc.stdout
    assert "copy bandwidth" in table and "GFLOP/s" in table and "timed in turn" in table
    assert result["progress"] == {"groups": len(CASES), "timed": len(CASES), "done": True, "eta_s": None}
    for op in CASES:
        assert f"### {op}\n\n{CASES[op].shapes}\n" in table
    torch_lines = [ln for ln in table.splitlines() if ln.startswith("| torch | 32 |")]
    assert len(torch_lines) == len(CASES)
    for line in torch_lines:
        low, spread, runs, peak, gbps = line.split("|")[3:8]
        float(low), float(peak), float(gbps)  # numbers, not blanks
        assert "-" in spread and "(" in runs


def test_bench_streams_a_table_per_op_and_length_with_a_time_left():
    from effviz.bench.kernels import bench_policy, estimate_left_s, iter_bench

    device = torch.device("cpu")
    policy = bench_policy(0, device, min_runs=1, max_runs=1)
    updates = list(iter_bench(["bi_wkv"], [16, 32], policy, device, torch.float32, log=io.StringIO()))
    # The machine's limits, then each length, then peak memory filled in.
    assert [u["progress"]["timed"] for u in updates] == [0, 1, 2, 2]
    assert [u["progress"]["done"] for u in updates] == [False, False, False, True]
    assert updates[0]["progress"]["eta_s"] is None and updates[1]["progress"]["eta_s"] >= 0
    assert [len(u["rows"]) for u in updates[1:3]] == [len(updates[1]["rows"]), 2 * len(updates[1]["rows"])]
    assert updates[-1]["rows"][0]["peak_mib"] is not None
    # Linear in L from the op's last timed length, and at least the budget per group.
    groups = [("scan", 100), ("scan", 200), ("scan", 400), ("wkv", 100)]
    assert estimate_left_s(groups, {("scan", 100): 1.0}, bench_policy(0.5, device)) == pytest.approx(2 + 4 + 0.5)
    assert estimate_left_s(groups, {}, policy) is None


def report_of(rows: list[Row], threads: int = 1) -> str:
    """The Markdown report of hand-made rows on a made-up machine (nothing is timed)."""
    from dataclasses import asdict

    from effviz.bench.kernels import format_report

    machine = {"processor": "Test CPU", "device": "cpu", "threads": threads, "dtype": "float32", "torch": "x",
               "effviz": "x", "backends": ["reference", "torch"], "copy_gb_per_s": 10.0,
               "matmul_gflop_per_s": 100.0, "protocol": "made up"}
    return format_report({"machine": machine, "rows": [asdict(r) for r in rows]})


def test_report_says_1_thread_and_2_threads():
    from effviz.wording import counted

    assert (counted(1, "thread"), counted(2, "thread"), counted(0, "size")) == ("1 thread", "2 threads", "0 sizes")
    assert "(cpu, 1 thread)" in report_of([], threads=1) and "(cpu, 2 threads)" in report_of([], threads=2)


def test_rows_whose_runs_kept_waiting_are_marked_unstable_with_a_footnote(monkeypatch):
    from effviz.bench import kernels as kernel_bench
    from effviz.bench.timing import Run, Timing, TimingPolicy

    # Every run waited for the CPU: the timing falls back to all runs' wall times, and the row says so.
    waited = Timing(tuple(Run(2.0, 1.0, True) for _ in range(3)), unstable=True, basis="wall")
    monkeypatch.setattr(kernel_bench, "measure_interleaved", lambda calls, *a, **k: {b: waited for b in calls})
    case = CASES["bi_wkv"]
    rows = kernel_bench._time_group(case, 16, ["reference"], {}, TimingPolicy(budget_s=0), torch.device("cpu"),
                                    torch.float32, io.StringIO())
    row = rows["reference"]
    assert row.unstable and row.basis == "wall" and row.min_ms == 2.0
    calm = Row("bi_wkv", "torch", 16, min_ms=1.0, p20_ms=1.0, p80_ms=1.1, times_ms=[1.0, 1.1, 1.2])
    cpu = Row("bi_wkv", "cpu", 16, min_ms=1.0, p20_ms=1.0, p80_ms=1.1, times_ms=[1.0] * 3, basis="cpu",
              disturbed=3, unstable=True)
    lines = report_of([row, calm, cpu]).splitlines()
    marked = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert "3 (3) unstable: wall times†" in marked["reference"]
    assert "3 (3) unstable: CPU times†" in marked["cpu"]
    assert "unstable" not in marked["torch"]
    assert lines[-1].startswith("† unstable: too few runs stayed undisturbed")
    assert "†" not in report_of([calm])  # no footnote without a marked row
