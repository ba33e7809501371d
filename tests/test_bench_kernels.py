"""The kernel benchmark CLI and the child-process peak-memory measurement."""
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
    previous = Row("selective_scan", LOOP, 1024, median_ms=MAX_SECONDS_PER_RUN * 1e3 / 3)
    assert _too_slow(previous, 2048) is None
    assert "extrapolated from L=1024" in _too_slow(previous, 4096)
    assert _too_slow(None, 16384) is None


def test_cli_reports_every_op_and_backend(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "effviz.bench", "kernels"]
        + ["--lengths", "32", "--repeats", "1", "--json", str(out)],
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
            assert row["median_ms"] > 0 and row["gb_per_s"] > 0 and row["vs_reference"] > 0
            assert row["peak_mib"] is not None and row["peak_mib"] >= 0
    for row in rows:
        assert (row["median_ms"] is None) == (row["skipped"] is not None), row
    (torch_scan,) = [r for r in rows if r["op"] == "selective_scan" and r["backend"] == "torch"]
    assert torch_scan["vs_loop"] > 0

    table = proc.stdout
    assert "copy bandwidth" in table and "GFLOP/s" in table
    for op in CASES:
        assert f"### {op}\n\n{CASES[op].shapes}\n" in table
    torch_lines = [ln for ln in table.splitlines() if ln.startswith("| torch | 32 |")]
    assert len(torch_lines) == len(CASES)
    for line in torch_lines:
        median, peak, gbps = line.split("|")[3:6]
        float(median), float(peak), float(gbps)  # numbers, not blanks
