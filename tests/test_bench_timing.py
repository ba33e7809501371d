"""The timing protocol: budgets, interleaving, and disturbed runs flagged and measured again."""
import os
import subprocess
import sys

import pytest

from effviz.bench import timing
from effviz.bench.timing import Run, Timing, TimingPolicy, is_disturbed, measure, measure_interleaved, percentile

pytestmark = pytest.mark.timeout(60)


def busy(steps: int = 300_000) -> int:
    """CPU-bound pure Python (~10-30 ms): its wall time equals its CPU time unless it waits."""
    total = 0
    for i in range(steps):
        total += i % 3
    return total


@pytest.fixture
def one_core():
    """This process pinned to one core for the test (restored after); the core's number."""
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    yield core
    os.sched_setaffinity(0, before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_run_disturbed_by_a_busy_process_on_its_core_is_flagged_and_measured_again(one_core):
    """A busy child process pinned to the measured code's core starts just before the third run
    and is killed after it: the scheduler shares the core, so that run's wall time is about twice
    its CPU time. It must be flagged, left out of the statistics, and replaced. The other runs are
    ~1 ms, too short for a busy test machine to disturb them all (redos are plentiful here)."""
    hog: list[subprocess.Popen] = []
    calls = 0

    def measured() -> None:
        nonlocal calls
        calls += 1
        if calls != 3:
            busy(20_000)
            return
        proc = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{one_core}}}); print(flush=True)\nwhile True: pass"],
            stdout=subprocess.PIPE,
        )
        hog.append(proc)
        proc.stdout.readline()  # it runs on our core now
        busy(1_000_000)  # tens of ms with the hog sharing the core throughout
        proc.kill()
        proc.wait()

    policy = TimingPolicy(budget_s=0, min_runs=4, max_runs=4, max_redos=40)
    result = measure(measured, policy)
    assert hog and hog[0].poll() is not None
    disturbed_run = result.runs[2]
    assert disturbed_run.disturbed and disturbed_run.wall_ms > 1.5 * disturbed_run.cpu_ms
    # Measured again: four undisturbed runs after all, and the disturbed one is not among them.
    assert sum(not r.disturbed for r in result.runs) == 4 and len(result.runs) >= 5
    assert not result.unstable and disturbed_run.wall_ms not in result.used_ms
    assert result.min_ms <= result.p20_ms <= result.p80_ms


def test_interleaving_alternates_and_the_budget_decides_the_count():
    order: list[str] = []
    policy = TimingPolicy(budget_s=0, min_runs=3, max_runs=10)
    measure_interleaved({"a": lambda: busy(1000), "b": lambda: busy(2000)}, policy,
                        on_run=lambda name, run: order.append(name))
    # Undisturbed runs stop at min_runs once the budget is spent; disturbed ones add rounds.
    assert order[:6] == ["a", "b"] * 3
    lots = measure(lambda: busy(100), TimingPolicy(budget_s=0.05, min_runs=3, max_runs=40))
    assert sum(not r.disturbed for r in lots.runs) == 40  # a cheap call fills the budget up to max_runs


def test_redos_are_bounded_and_an_always_disturbed_call_is_unstable():
    # Sleeping takes wall time but no CPU time: every run is disturbed.
    import time

    policy = TimingPolicy(budget_s=0, min_runs=3, max_runs=10, max_redos=2)
    result = measure(lambda: time.sleep(0.002), policy)
    assert len(result.runs) == 5 and result.disturbed == 5 and result.unstable
    assert result.min_ms >= 2 and result.basis == "wall"  # too few undisturbed runs: statistics of all runs
    # Code on one thread: the CPU time of a run is the run without its waiting.
    cpu_based = measure(lambda: time.sleep(0.002), TimingPolicy(budget_s=0, min_runs=2, max_redos=0, cpu_fallback=True))
    assert cpu_based.unstable and cpu_based.basis == "cpu"
    assert cpu_based.used_ms == [r.cpu_ms for r in cpu_based.runs] and cpu_based.min_ms < 2
    # On CUDA CPU time says nothing: no run is flagged.
    unchecked = measure(lambda: time.sleep(0.002), TimingPolicy(budget_s=0, min_runs=2, check_cpu=False))
    assert unchecked.disturbed == 0 and not unchecked.unstable


def test_statistics_and_checks():
    assert percentile([4, 1, 3, 2, 5], 0) == 1 and percentile([4, 1, 3, 2, 5], 50) == 3
    assert percentile([1, 2], 80) == pytest.approx(1.8)
    assert is_disturbed(wall_s=1.0, cpu_s=0.5, margin=0.1) and not is_disturbed(1.0, 0.95, 0.1)
    timing_ = Timing((Run(10, 10, False), Run(30, 10, True), Run(12, 12, False)), unstable=False)
    assert timing_.used_ms == [10, 12] and timing_.min_ms == 10 and timing_.disturbed == 1
    assert timing_.to_dict()["all_runs"][1] == [30, 10, True, -1]  # page faults not counted here
    for bad in (dict(budget_s=-1), dict(min_runs=0), dict(min_runs=5, max_runs=4), dict(margin=1.5), dict(max_redos=-1)):
        with pytest.raises(ValueError):
            TimingPolicy(**bad)
    with pytest.raises(ValueError, match="nothing to time"):
        measure_interleaved({}, TimingPolicy())


def test_calibration_reports_the_spread_of_a_fixed_workload():
    calibration = timing.calibrate()
    assert calibration["runs"] == 9 and calibration["min_ms"] > 0
    assert calibration["min_ms"] <= calibration["p80_ms"] <= calibration["max_ms"]
    assert calibration["spread"] >= 0 and 0 <= calibration["disturbed"] <= 9
    assert "machine noise" in timing.describe_calibration(calibration)


# A child that allocates, fills and frees a 64 MiB buffer per call, as a forward does with its
# activations, and prints the minor page faults of its 2nd-5th calls (the 1st warms up).
FAULTS_CHILD = """
import resource, torch
def call():
    torch.ones(16 * 2**20).sum()
call()
counts = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call()
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(counts))
"""


def faults_in_child(extra: dict[str, str]) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF") and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FAULTS_CHILD], env=env | extra, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(timing.steady_allocator_env() == {}, reason="jemalloc is not installed (Debian: libjemalloc2)")
def test_timing_children_reuse_freed_buffers_where_glibc_faults_them_in_again():
    """Why timing children preload jemalloc: with glibc each call faults in (nearly) all of its
    big buffer again (64 MiB: 16,384 pages of 4 KiB per call); with jemalloc kept from giving
    memory back, (almost) never once warm."""
    glibc, steady = faults_in_child({}), faults_in_child(timing.steady_allocator_env({}))
    assert glibc > 16_000, glibc  # 4 calls: at least one whole buffer faulted in again
    assert steady < 200, steady


def test_the_preload_goes_ahead_of_an_existing_one_and_reports_name_the_allocator():
    env = timing.steady_allocator_env({"LD_PRELOAD": "libother.so"})
    if env:
        assert env["LD_PRELOAD"].endswith(":libother.so") and "jemalloc" in env["LD_PRELOAD"]
        assert env["MALLOC_CONF"] == timing.JEMALLOC_CONF and "jemalloc" in timing.describe_allocator()
    else:
        assert timing.describe_allocator().startswith("glibc")


def test_each_run_counts_its_page_faults():
    run = timing.time_once(lambda: bytearray(8 * 2**20), TimingPolicy())
    assert run.faults >= 0 if sys.platform.startswith("linux") else run.faults == -1
