"""Scaling sweeps: records, fits, crossovers, memory estimate, time limits, stopping, and the CLI.

Every point costs child processes that each import torch (one timing child for the point's models,
one memory child per model), so the sweeps here are a handful of bundled-config models at their
smallest sizes, one timed run each (no time budget), one thread.
"""
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from effviz.bench import sweep
from effviz.bench.__main__ import main
from effviz.bench.fit import Crossover, crossover, fit_exponent, loglog_slope, upper_half
from effviz.bench.sweep import PointResult, SweepSpec, plan_input, run_sweep, summarize

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(180)


def tiny_spec(models, axis, values, **kw) -> SweepSpec:
    return SweepSpec(models=tuple(models), axis=axis, values=tuple(values), budget_s=0, min_runs=1, threads=1, **kw)


@pytest.fixture
def spawned(monkeypatch):
    """Every point's child process the sweep starts, to check none is left running."""
    procs = []
    real_popen = subprocess.Popen

    def recording_popen(args, *rest, **kwargs):
        proc = real_popen(args, *rest, **kwargs)
        if "effviz.bench.sweep" in args:  # not a compiler run building the native kernels
            procs.append(proc)
        return proc

    monkeypatch.setattr(sweep.subprocess, "Popen", recording_popen)
    return procs


@pytest.fixture
def no_children(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("this point should not have started a child process")

    monkeypatch.setattr(sweep, "_run_child", refuse)


# ---- real measurements -----------------------------------------------------------------------


def test_tiny_sweep_gives_well_formed_records(spawned):
    # The tokens axis runs end to end in the CLI test below.
    cases = [(["deit-cifar", "vim-cifar"], "resolution", 32), (["aum-fsdd"], "seconds", 0.32)]
    for models, axis, x in cases:
        points = list(run_sweep(tiny_spec(models, axis, [x])))
        assert [p.model for p in points] == models
        for p in points:
            assert (p.axis, p.x) == (axis, x)
            assert p.status == "ok"
            assert p.tokens == plan_input(p.model, axis, x).tokens
            assert p.latency_ms > 0 and p.peak_mem_mib >= 0
            assert p.latency_ms == min(p.latency_runs_ms) <= p.latency_p20_ms <= p.latency_p80_ms
            # Every run: wall ms, CPU ms, disturbed, minor page faults. The statistics come from the
            # undisturbed runs' wall times or, when the redos left too few (a busy test machine),
            # from all runs' CPU times (one thread), and the reason says so.
            assert all(len(run) == 4 and run[3] >= 0 for run in p.all_runs)
            assert p.disturbed_runs == sum(run[2] for run in p.all_runs)
            if p.reason.startswith("unstable"):
                assert p.latency_basis == "cpu" and p.latency_runs_ms == [run[1] for run in p.all_runs]
            else:
                assert p.latency_basis == "wall" and p.latency_runs_ms == [run[0] for run in p.all_runs if not run[2]]
            assert set(p.to_dict()) >= {"model", "axis", "x", "tokens", "latency_ms", "peak_mem_mib", "status", "reason"}
    # deit-cifar: 4x4 tokens of 8 px from a 32 px image + class token; aum-fsdd: 32 frames = 7
    # full-spectrum strips of 8 frames, one every 4 frames, + class token
    assert plan_input("deit-cifar", "resolution", 32).tokens == 17
    assert plan_input("aum-fsdd", "seconds", 0.32).tokens == 8
    # One timing child per value, for all its models together; a memory child per model.
    assert len(spawned) == (1 + 2) + (1 + 1)
    assert all(proc.poll() is not None for proc in spawned)


def test_timeout_is_recorded_and_larger_points_of_that_model_are_skipped(spawned):
    points = list(run_sweep(tiny_spec(["vim-cifar"], "resolution", [32, 16, 64], timeout_s=0.2)))
    assert [p.x for p in points] == [16, 32, 64]  # smallest first
    assert points[0].status == "timeout" and "0.2 s" in points[0].reason
    assert [p.status for p in points[1:]] == ["skipped", "skipped"]
    assert all("timeout at 16 px" in p.reason for p in points[1:])
    assert len(spawned) == 1 and spawned[0].poll() is not None  # killed, and only the first ran


def test_stop_event_kills_the_running_child_and_waiting_sweeps_are_counted(spawned):
    stop_first, stop_second = threading.Event(), threading.Event()
    got_first, got_second = [], []
    first = threading.Thread(target=lambda: got_first.extend(run_sweep(tiny_spec(["vim-cifar"], "resolution", [16, 32]), stop_first)))
    second = threading.Thread(target=lambda: got_second.extend(run_sweep(tiny_spec(["deit-cifar"], "resolution", [16]), stop_second)))
    first.start()
    deadline = time.monotonic() + 30
    while not spawned and time.monotonic() < deadline:  # the first sweep holds the slot, its child runs
        time.sleep(0.01)
    assert sweep.sweep_running()
    second.start()
    while sweep.sweeps_waiting() != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sweep.sweeps_waiting() == 1
    stop_second.set()  # a waiting sweep can be called off before it starts
    second.join(timeout=5)
    assert not second.is_alive() and got_second == [] and sweep.sweeps_waiting() == 0
    stopped_at = time.monotonic()
    stop_first.set()
    first.join(timeout=10)
    assert not first.is_alive()
    assert time.monotonic() - stopped_at < 2  # promptly, not after the point finished
    assert got_first == []  # the interrupted point is not reported
    assert all(proc.poll() is not None for proc in spawned)
    assert not sweep.sweep_running()


def test_cli_sweep_end_to_end_on_the_tokens_axis_writes_parseable_json(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "effviz.bench", "sweep", "--models", "av-mamba-digits,av-transformer-digits",
         "--axis", "tokens", "--values", "40", "--device", "cpu", "--budget", "0", "--min-runs", "1", "--threads", "1",
         "--timeout", "120", "--fit-range", "20,80", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert record["environment"]["device"] == "cpu" and record["environment"]["threads"] == 1
    assert record["environment"]["calibration"]["runs"] == 9
    assert set(record["environment"]["kernel_backends"]) == set(sweep.KERNEL_OPS)
    points = record["points"]
    assert [(p["model"], p["status"]) for p in points] == [("av-mamba-digits", "ok"), ("av-transformer-digits", "ok")]
    # 40 tokens asked: a 4x4 image grid, 23 full-spectrum audio strips, and the class token.
    assert all(p["x"] == 40 and p["tokens"] == 40 for p in points)
    assert points[0]["inputs"] == "image 28x28 + audio 0.96 s (96 frames)"
    assert all(p["latency_ms"] > 0 and p["peak_mem_mib"] >= 0 for p in points)
    (pair,) = record["summary"]["crossovers"]
    assert (pair["efficient"], pair["baseline"]) == ("av-mamba-digits", "av-transformer-digits")
    assert pair["latency"]["kind"] in ("too few points", "within noise")  # one common point: no verdict
    assert "| av-mamba-digits | 40 tokens | 40 |" in proc.stdout  # the table
    assert "[2/2] av-transformer-digits" in proc.stderr  # progress

    # The same sweep drawn as the Scaling lab's two plots in an offline page.
    html = tmp_path / "sweep.html"
    drawn = subprocess.run([sys.executable, "-m", "effviz.bench", "figure", str(out), "--html", str(html)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert drawn.returncode == 0, drawn.stderr
    page = html.read_text()
    assert page.count("latency (ms) vs tokens") == 1 and page.count("peak memory (MiB) vs tokens") == 1
    assert "av-mamba-digits" in page and "device: cpu" in page and "machine noise" in page
    # plotly.js embedded, nothing fetched: the page draws offline.
    assert 'src="http' not in page and len(page) > 1_000_000


def test_cli_figure_of_a_file_that_is_not_a_sweep_is_a_clear_error(tmp_path):
    bad = tmp_path / "not-a-sweep.json"
    bad.write_text('{"points": 3}')
    proc = subprocess.run([sys.executable, "-m", "effviz.bench", "figure", str(bad), "--html", str(tmp_path / "x.html")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot draw" in proc.stderr


# ---- no child processes ----------------------------------------------------------------------


def test_absurd_size_is_refused_by_the_estimate_without_running(no_children):
    points = list(run_sweep(tiny_spec(["deit-tiny-eager"], "resolution", [100_000, 200_000])))
    assert points[0].status == "oom" and "estimated to need" in points[0].reason
    assert points[0].latency_ms is None and points[0].peak_mem_mib is None
    assert points[1].status == "skipped" and "oom at 100000 px" in points[1].reason


def test_memory_estimate_grows_quadratically_only_for_eager_attention():
    def growth(model):
        small = sweep.estimate_memory_mib(model, "resolution", 2048)
        return sweep.estimate_memory_mib(model, "resolution", 4096) / small

    assert growth("deit-tiny-eager") > 10  # 4x the tokens: ~16x the scores
    assert growth("vim-tiny") < 4.5 and growth("deit-tiny") < 4.5


def test_model_axis_mismatch_is_a_clear_error_before_anything_runs(no_children, capsys):
    with pytest.raises(ValueError, match="'vim-tiny' takes image input, but the seconds axis needs"):
        tiny_spec(["vim-tiny"], "seconds", [1])
    with pytest.raises(ValueError, match="'aum-tiny' takes audio .* resolution axis needs .* image"):
        tiny_spec(["deit-tiny", "aum-tiny"], "resolution", [224])
    with pytest.raises(ValueError, match="tokens axis needs a model that takes image and audio"):
        tiny_spec(["deit-tiny"], "tokens", [200])
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        tiny_spec(["no-such-model"], "resolution", [224])
    with pytest.raises(ValueError, match="smaller than one 16 px patch"):
        tiny_spec(["vim-tiny"], "resolution", [8])
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--models", "vim-tiny", "--axis", "seconds", "--values", "1,2"])
    assert exit_info.value.code == 2
    assert "takes image input, but the seconds axis needs" in capsys.readouterr().err


def test_a_device_other_than_cpu_or_cuda_is_a_clear_error_naming_them(no_children, capsys):
    for device in ("gpu", "mps", "meta", "", "cuda:first", "CPU"):
        with pytest.raises(ValueError, match=f"unknown device {device!r}: choose cpu or cuda"):
            tiny_spec(["vim-tiny"], "resolution", [224], device=device)
    assert tiny_spec(["vim-tiny"], "resolution", [224], device="cpu:0").device == "cpu:0"
    with pytest.raises(SystemExit) as exit_info:  # the kernel bench's CLI, before it measures anything
        main(["kernels", "--device", "gpu", "--lengths", "32"])
    assert exit_info.value.code == 2 and "unknown device 'gpu': choose cpu or cuda" in capsys.readouterr().err

def test_tokens_axis_grows_image_and_audio_together():
    for target in (40, 200, 1000, 5000):
        point = plan_input("av-mamba-digits", "tokens", target)
        assert abs(point.tokens - target) <= 0.1 * target
        assert point.image_side is not None and point.audio_frames is not None
    small, large = plan_input("av-mamba-digits", "tokens", 200), plan_input("av-mamba-digits", "tokens", 5000)
    assert large.image_side > small.image_side and large.audio_frames > small.audio_frames


def test_default_spec_is_small_and_valid():
    spec = sweep.default_spec()
    assert len(spec.models) * len(spec.values) <= 12 and spec.threads == 1 and spec.budget_s <= 3
    assert {sweep.model_config(m).mixer for m in spec.models} >= {"mamba", "attention"}
    # Enough sizes for an exponent: its upper half holds 3 sizes spanning 2x in tokens.
    tokens = sorted(plan_input(spec.models[0], spec.axis, x).tokens for x in spec.values)
    assert len(tokens) >= 3 and tokens[-1] >= 2 * tokens[-3]


# ---- fits --------------------------------------------------------------------------------------


def test_exponent_fit_recovers_linear_and_quadratic_scaling():
    ns = [100, 400, 1600, 6400]
    assert loglog_slope(ns, [3.0 * n for n in ns]) == pytest.approx(1.0)
    assert loglog_slope(ns, [0.5 * n**2 for n in ns]) == pytest.approx(2.0)
    # A fixed overhead flattens the small sizes; the upper half (3 points at least) sees the
    # asymptotic exponent.
    ns = [100, 200, 400, 1600, 3200, 6400]
    with_overhead = [1e5 + n**2 for n in ns]
    full = loglog_slope(ns, with_overhead)
    assert upper_half(ns, with_overhead)[0] == [1600, 3200, 6400]
    upper = loglog_slope(*upper_half(ns, with_overhead))
    assert full < upper and upper == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope([1, 2], [0, 1])


def test_crossover_interpolates_in_log_space():
    xs = [250, 500, 2000, 4000]
    efficient = [10.0 * x for x in xs]
    baseline = [0.01 * x**2 for x in xs]  # equal at x = 1000, cheaper above
    found = crossover(xs, efficient, baseline, tokens=[x / 4 for x in xs])
    assert found.kind == "crossover" and found.exact
    assert found.x == pytest.approx(1000) and found.tokens == pytest.approx(250)
    assert crossover(xs, [1.0] * 4, [2.0] * 4).kind == "always"
    assert crossover(xs, [3.0] * 4, [2.0] * 4).kind == "never in range"
    assert crossover(xs, [None] * 4, [2.0] * 4).kind == "no common points"
    # The baseline ran out of memory at 2000: the efficient model is cheaper by then.
    failed = crossover(xs, [5.0, 5.0, 5.0, 5.0], [9.0 / 2, 4.0, math.inf, math.inf])
    assert (failed.kind, failed.x, failed.exact) == ("crossover", 2000, False)
    assert failed.describe(" px") == "by 2000 px"
    on_tokens = Crossover("crossover", x=621.5, tokens=621.5)
    assert on_tokens.describe(" tokens") == "~622 tokens"  # not "621.5 tokens (~622 tokens)"
    assert Crossover("crossover", x=795.3, tokens=2474.4).describe(" px") == "795.3 px (~2474 tokens)"


def test_summary_fits_each_model_and_pairs_efficient_models_with_baselines():
    def point(model, x, tokens, latency, memory, status="ok"):
        return PointResult(model, "resolution", x, tokens, latency, memory, status, "", "")

    xs = [224, 448, 896, 1792]
    tokens = [(x // 16) ** 2 + 1 for x in xs]
    points = [point("vim-tiny", x, n, 0.1 * n, 0.01 * n) for x, n in zip(xs, tokens)]
    points += [point("deit-tiny-eager", x, n, 1e-4 * n**2, 1e-5 * n**2) for x, n in zip(xs[:3], tokens)]
    points.append(point("deit-tiny-eager", 1792, tokens[3], None, None, status="oom"))
    summary = summarize(points, fit_range=(224, 896))
    fits = {f["model"]: f for f in summary["fits"]}
    assert fits["vim-tiny"]["latency"]["value"] == pytest.approx(1.0)
    assert fits["deit-tiny-eager"]["memory"]["value"] == pytest.approx(2.0)
    assert fits["deit-tiny-eager"]["latency_in_range"]["value"] == pytest.approx(2.0)
    # Two sizes are not a fit.
    two = summarize(points, fit_range=(448, 896))
    assert all(f["latency_in_range"]["value"] is None and "2 sizes" in f["latency_in_range"]["refused"]
               for f in two["fits"])
    (pair,) = summary["crossovers"]
    assert (pair["efficient"], pair["baseline"]) == ("vim-tiny", "deit-tiny-eager")
    # 0.1 n = 1e-4 n^2 at n = 1000 tokens: between 448 px (785 tokens) and 896 px (3137).
    assert pair["latency"]["kind"] == "crossover" and 448 < pair["latency"]["x"] < 896
    assert pair["latency"]["tokens"] == pytest.approx(1000, rel=0.05)
    report = sweep.format_report(
        {"device_name": "cpu", "device": "cpu", "threads": 1, "dtype": "fp32", "batch": 1, "budget_s": 1,
         "min_runs": 3, "max_runs": 9, "timeout_s": 1, "python": "3", "torch": "2", "triton": None, "effviz": "0",
         "kernel_backends": {}, "memory_available_mib": None,
         "calibration": {"workload": "loop", "runs": 9, "min_ms": 10, "p80_ms": 11, "max_ms": 12, "spread": 0.1,
                         "disturbed": 0}},
        points, summary, "px",
    )
    assert "| vim-tiny | deit-tiny-eager |" in report and "| deit-tiny-eager | 1792 px |" in report


def test_out_of_memory_is_told_apart_from_other_failures():
    # What the latency/memory child reports when torch's CPU allocator fails, or CUDA runs out.
    cpu_alloc = {"error": "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB",
                 "type": "RuntimeError"}
    assert sweep._outcome_from_result(cpu_alloc, "latency").status == "oom"
    cuda = {"error": "OutOfMemoryError: CUDA out of memory.", "type": "OutOfMemoryError"}
    assert sweep._outcome_from_result(cuda, "memory").status == "oom"
    bug = {"error": "ValueError: bad shape", "type": "ValueError"}
    assert sweep._outcome_from_result(bug, "latency").status == "error"
    # A child that vanishes with SIGKILL (we only kill on timeout or stop, handled before) met the OOM killer.
    assert sweep._outcome_from_death(-9, "", "memory").status == "oom"
    crashed = sweep._outcome_from_death(1, "Traceback ...\nImportError: boom", "latency")
    assert crashed.status == "error" and "ImportError: boom" in crashed.reason


def test_ast_base_overlapping_patches_and_two_prefix_tokens_are_counted():
    # 10.24 s = 1024 frames: 12 x 101 patches of 16 every 10, plus class and distillation tokens.
    point = plan_input("ast-base", "seconds", 10.24)
    assert (point.audio_frames, point.tokens) == (1016, 12 * 101 + 2)
    assert plan_input("ast-tiny", "seconds", 10.24).tokens == 8 * 64 + 1  # no overlap: AST-Ti as AuM


def test_exponent_is_refused_from_two_sizes_or_a_narrow_span():
    two = fit_exponent([100, 400], [[1.0], [4.0]])
    assert two.value is None and "2 sizes" in two.refused and "needs 3" in two.refused
    narrow = fit_exponent([100, 130, 180], [[1.0], [1.3], [1.8]])
    assert narrow.value is None and "1.8x" in narrow.refused
    assert two.describe().startswith("—")
    with pytest.raises(ValueError, match="at least one run"):
        fit_exponent([1, 2, 4], [[1.0], [], [3.0]])


def test_exponent_interval_comes_from_resampling_the_runs():
    ns = [200, 800, 3200]
    steady = fit_exponent(ns, [[1.0, 1.01, 1.02], [4.0, 4.02, 4.1], [16.0, 16.1, 16.3]])
    assert steady.value == pytest.approx(1.0) and steady.low <= steady.value <= steady.high
    assert steady.high - steady.low < 0.05
    noisy = fit_exponent(ns, [[1.0, 3.0, 5.0], [4.0, 9.0, 12.0], [16.0, 30.0, 40.0]])
    assert noisy.high - noisy.low > steady.high - steady.low
    assert noisy == fit_exponent(ns, [[1.0, 3.0, 5.0], [4.0, 9.0, 12.0], [16.0, 30.0, 40.0]])  # seeded
    assert "N^1.00 (" in steady.describe()
    assert fit_exponent(ns, [[1.0], [4.0], [16.0]]).describe() == "N^1.00"  # one run each: no interval


def test_crossover_needs_separated_intervals_and_two_points_for_always_or_never():
    xs = [224, 448, 896]
    # Headlines cross, but the intervals overlap at the crossing: within noise, no crossover x.
    overlapping = crossover(xs, [(5.0, 9.0), (9.0, 12.0), (10.0, 13.0)], [(4.0, 6.0), (8.0, 11.0), (12.5, 14.0)])
    assert overlapping.kind == "within noise" and overlapping.x is None
    # Tied at 448, cheaper beyond noise at 896: where exactly is unknown, cheaper from 896.
    tied = crossover(xs, [(5.0, 6.0), (9.0, 12.0), (10.0, 11.0)], [(2.0, 3.0), (10.0, 11.0), (20.0, 22.0)])
    assert (tied.kind, tied.x) == ("within noise", 896) and "cheaper from" in tied.describe(" px")
    # Separated on both sides: a crossover between them.
    clear = crossover(xs, [(5.0, 6.0), (9.0, 10.0), (10.0, 11.0)], [(2.0, 3.0), (20.0, 22.0), (40.0, 44.0)])
    assert clear.kind == "crossover" and 224 < clear.x < 448
    # One common point says nothing about "always" or "never".
    assert crossover([224], [1.0], [2.0]).kind == "too few points"
    assert crossover([224], [3.0], [2.0]).kind == "too few points"
    assert crossover([224, 448], [(1.0, 1.1), (2.0, 2.1)], [(3.0, 3.1), (6.0, 6.2)]).kind == "always"
    assert crossover([224, 448], [(1.0, 1.1), (2.0, 2.1)], [(1.05, 1.2), (2.05, 2.2)]).kind == "within noise"


# ---- the timing child --------------------------------------------------------------------------


def test_latency_child_times_points_in_turn_and_refuses_a_warm_up_over_its_limit(tmp_path):
    points = [["deit-cifar", 32], ["vim-cifar", 32], ["deit-cifar", 48]]
    request = {"points": points, "axis": "resolution", "device": "cpu", "dtype": "fp32",
               "batch": 1, "policy": {"budget_s": 0, "min_runs": 2, "max_runs": 2}, "warmup_limit_s": 60,
               "progress": str(tmp_path / "progress.jsonl")}
    result = sweep._latency_child(request)["points"]
    assert len(result) == 3
    for timed in result:
        timing = timed["timing"]
        # 2 undisturbed runs each, or up to 5 redos more when this busy test machine disturbs them
        assert 2 <= len(timing["all_runs"]) <= 7 and timing["min_ms"] == min(timing["runs_ms"])
    progress = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert progress == [{"starting": 0}, {"warmed": 0}, {"starting": 1}, {"warmed": 1}, {"starting": 2}, {"warmed": 2}]
    slow = sweep._latency_child({**request, "warmup_limit_s": 0.0, "progress": str(tmp_path / "again.jsonl")})["points"]
    assert all("timed runs would not fit the time limit" in slow[i]["timeout"] for i in (0, 1))
    # a model too slow at one size is not built at its larger sizes
    assert slow[2] == {"skipped": f"after timeout at 32: {slow[0]['timeout']}"}


TIMING = {"min_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0, "runs_ms": [1.0], "disturbed": 0, "unstable": False,
          "basis": "wall", "all_runs": [[1.0, 1.0, False]]}


def test_a_point_that_hangs_its_timing_child_is_blamed_and_the_others_are_timed_again(monkeypatch):
    spec = tiny_spec(["deit-cifar", "vim-cifar"], "resolution", [32, 48])
    requests = []

    def fake_child(spec_, request, timeout_s, stop):
        requests.append((request["points"], request["policy"]["budget_s"], timeout_s))
        if len(requests) == 1:  # vim-cifar at 32 px never finishes its warm-up
            progress = [{"starting": 0}, {"warmed": 0}, {"starting": 1}]
            return sweep._ChildEnding("timeout", None, progress, -9, "")
        return sweep._ChildEnding("exited", {"points": [{"timing": TIMING}] * len(request["points"])}, [], 0, "")

    monkeypatch.setattr(sweep, "_run_child", fake_child)
    points = [("deit-cifar", 32), ("vim-cifar", 32), ("deit-cifar", 48), ("vim-cifar", 48)]
    outcomes = sweep._time_point(spec, points, None)
    # The budget is per size; the limit per point. The culprit's larger size is skipped, not retried.
    assert requests == [([list(p) for p in points], 2 * spec.budget_s, 4 * spec.timeout_s),
                        ([["deit-cifar", 32], ["deit-cifar", 48]], 2 * spec.budget_s, 2 * spec.timeout_s)]
    assert outcomes[("vim-cifar", 32)].status == "timeout"
    assert outcomes[("vim-cifar", 48)].status == "skipped" and "after timeout at 32" in outcomes[("vim-cifar", 48)].reason
    assert outcomes[("deit-cifar", 32)].timing == TIMING and outcomes[("deit-cifar", 48)].timing == TIMING


def test_interleave_all_times_every_size_in_one_child_and_reports_in_order(monkeypatch):
    requests = []

    def fake_child(spec_, request, timeout_s, stop):
        requests.append(request)
        if request["mode"] == "memory":
            return sweep._ChildEnding("exited", {"value": 10.0}, [], 0, "")
        timings = [{"timing": {**TIMING, "min_ms": float(x) * (2 if m == "vim-cifar" else 1)}}
                   for m, x in request["points"]]
        return sweep._ChildEnding("exited", {"points": timings}, [], 0, "")

    monkeypatch.setattr(sweep, "_run_child", fake_child)
    spec = replace(tiny_spec(["deit-cifar", "vim-cifar"], "resolution", [48, 32, 64]), interleave="all")
    points = list(sweep.run_sweep(spec))
    latency = [r for r in requests if r["mode"] == "latency"]
    assert len(latency) == 1 and latency[0]["policy"]["budget_s"] == 3 * spec.budget_s
    assert [(p.model, p.x) for p in points] == [(m, x) for x in (32, 48, 64) for m in ("deit-cifar", "vim-cifar")]
    assert [p.latency_ms for p in points] == [32, 64, 48, 96, 64, 128]
    assert all(p.status == "ok" and p.peak_mem_mib == 10.0 for p in points)
    with pytest.raises(ValueError, match="unknown interleave 'sizes'"):
        replace(spec, interleave="sizes")


def test_figure_draws_error_bars_keeps_guides_inside_the_data_and_stacks_crossover_labels():
    from effviz.bench.figure import scaling_figure

    def point(model, x, n, latency, p80):
        return PointResult(model, "resolution", x, n, latency, 1.0, "ok", "", "", latency, p80, [latency, p80])

    xs, ns = [224, 448, 896, 1792], [197, 785, 3137, 12545]
    points = [point("vim-tiny", x, n, 0.5 * n, 0.55 * n) for x, n in zip(xs, ns)]
    points += [point("vrwkv-tiny", x, n, 0.4 * n, 0.44 * n) for x, n in zip(xs, ns)]
    points += [point("deit-tiny-eager", x, n, 1e-3 * n**2, 1.1e-3 * n**2) for x, n in zip(xs, ns)]
    summary = summarize(points)
    fig = scaling_figure(points, "latency", summary, "px")
    traces = {t.name: t for t in fig.data}
    vim = next(t for name, t in traces.items() if name.startswith("vim-tiny N^1.00"))
    assert list(vim.error_y.array) == pytest.approx([0.05 * n for n in ns]) and list(vim.error_y.arrayminus) == [0] * 4
    low, high = (10**v for v in fig.layout.yaxis.range)
    for guide in ("O(N)", "O(N²)"):  # a steep guide never stretches the axis
        assert traces[guide].y and all(low <= y <= high for y in traces[guide].y)
    crossings = [t for name, t in traces.items() if name.startswith("crossover")]
    assert len(crossings) == 2 and all(list(t.y) == pytest.approx([low, high]) for t in crossings)  # the full height
    assert high < 10 * max(p.latency_p80_ms for p in points)  # the labels sit above the plot, not on the axis
    assert sorted(a.yshift for a in fig.layout.annotations) == [0, 18]  # two close labels, two rows


def test_close_crossover_labels_stack_a_row_apart_and_distant_ones_share_a_row():
    from effviz.bench import figure

    def point(model, n, latency):
        return PointResult(model, "resolution", n, n, latency, 1.0, "ok", "", "", latency, 1.1 * latency,
                           [latency, 1.1 * latency])

    ns = [197, 785, 3137, 12545]
    # Four efficient models overtake eager attention (1e-3 N²) at 400-550 tokens, a fifth at 8000.
    slopes = {"vir-tiny": 0.40, "vrwkv-tiny": 0.45, "vim-tiny": 0.50, "vim-tiny-hybrid": 0.55, "vim-small": 8.0}
    points = [point(m, n, a * n) for m, a in slopes.items() for n in ns]
    points += [point("deit-tiny-eager", n, 1e-3 * n**2) for n in ns]
    fig = figure.scaling_figure(points, "latency", summarize(points), "px")
    labels = fig.layout.annotations
    assert len(labels) == 5
    # Each label on the page: its width at the assumed text width on the narrowest plot assumed,
    # its height the shift above the plot area (rows are apart in pixels, however the plot is sized).
    px_per_x_decade = figure.PLOT_WIDTH_PX / math.log10(max(ns) / min(ns))

    def box(label):
        centre, half_width = label.x * px_per_x_decade, len(label.text) * figure.CHAR_WIDTH_PX / 2
        return centre - half_width, centre + half_width, label.yshift

    boxes = [box(label) for label in labels]
    for i, (left, right, shift) in enumerate(boxes):
        for other_left, other_right, other_shift in boxes[i + 1:]:
            if left < other_right + figure.LABEL_GAP_PX and other_left < right + figure.LABEL_GAP_PX:
                assert abs(shift - other_shift) >= figure.LABEL_ROW_PX  # side by side: a row apart
    assert sorted(label.yshift for label in labels if not label.text.startswith("vim-small")) == [0, 18, 36, 54]
    far = next(label for label in labels if label.text.startswith("vim-small"))
    assert far.yshift == 0  # the distant label shares the lowest row
    # The top margin, and the figure, grow by the four rows: the plot area keeps its height.
    assert fig.layout.margin.t == figure.TOP_MARGIN_PX + 4 * figure.LABEL_ROW_PX
    assert fig.layout.height == figure.FIGURE_HEIGHT_PX + 4 * figure.LABEL_ROW_PX


def test_environment_and_protocol_say_1_thread_not_1_threads():
    env = {"device_name": "Test CPU", "device": "cpu", "threads": 1, "dtype": "fp32", "batch": 1, "timeout_s": 60,
           "python": "3", "torch": "x", "triton": None, "effviz": "x", "memory_available_mib": 1024.0,
           "budget_s": 2, "min_runs": 3, "max_runs": 20, "kernel_backends": {"selective_scan": "torch"},
           "calibration": {"workload": "loop", "min_ms": 10.0, "spread": 0.1, "max_ms": 12.0, "runs": 9,
                           "disturbed": 0}}
    text = sweep.format_environment(env)
    assert "(cpu, 1 thread)" in text and "1 torch thread;" in text and "threads" not in text
    assert "(cpu, 2 threads)" in sweep.format_environment({**env, "threads": 2})
