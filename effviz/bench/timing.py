"""The timing protocol every benchmark here shares (DESIGN.md §10): numbers that hold on a busy,
shared machine.

- Runs fill a time budget: at least ``min_runs`` and at most ``max_runs`` undisturbed runs per
  callable, as many as fit in ``budget_s``, rather than a fixed count.
- Callables compared with each other are timed interleaved, one run of each per round
  (A B C A B C ...), so that a slow spell of the machine hits all of them alike.
- Each run records wall time and the CPU time of this process (``time.process_time``: user +
  system, all threads). A run whose wall time exceeds its CPU time by more than ``margin`` of
  the wall time waited for the CPU (another process ran, the hypervisor stole it): it is
  flagged as disturbed and run again, a bounded number of times. With one thread the check is
  exact; with more, a run where only some threads waited can pass, so the sweeps default to one.
- The headline is the minimum of the undisturbed runs (noise only ever adds time), with p20
  and p80 beside it as the spread. When the redos leave too few undisturbed runs (a machine busy
  throughout), the statistics come from all runs and say so: from their CPU times when the
  timed code runs one thread (``cpu_fallback``), where CPU time is the run without the waiting,
  from their wall times otherwise.
- ``calibrate`` times a fixed pure-Python workload a few times: its spread is the machine's
  noise, reported before a sweep.
- The child processes that time run with jemalloc preloaded and told never to hand memory back
  (``steady_allocator_env``), as a serving process runs once warm: each forward reuses the
  buffers of the one before. With glibc's malloc, a big buffer is mapped afresh by (nearly)
  every call and every page of it faulted in again: a DeiT-Ti forward with eager attention at
  896 px takes about a million minor page faults and 2-3 s of system time, more than half its
  CPU time, and what that costs moves with the host's memory from minute to minute. glibc's own
  knobs do not fix it (an aligned allocation rarely fits the hole the last one left, so the heap
  grows every other call). Without jemalloc (Debian: ``libjemalloc2``) the children keep glibc,
  and reports say so. Each run records its minor page faults (``Run.faults``), so a report
  shows whether the timed code ran in steady state.
"""
from __future__ import annotations

import ctypes.util
import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

try:
    import resource
except ImportError:  # not a Unix: page faults are not counted
    resource = None

# jemalloc's settings for timing: never return freed pages to the OS (no decay to "dirty" or
# "muzzy" pages), so the next run finds them mapped and resident.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


@functools.cache
def _jemalloc() -> str | None:
    return ctypes.util.find_library("jemalloc") if os.name == "posix" else None


def steady_allocator_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a timing child adds to ``environ`` (default ``os.environ``): jemalloc
    preloaded (ahead of any other preload) with ``JEMALLOC_CONF``; none where it is not installed."""
    library = _jemalloc()
    if library is None:
        return {}
    preload = (environ if environ is not None else os.environ).get("LD_PRELOAD")
    return {"LD_PRELOAD": library + (f":{preload}" if preload else ""), "MALLOC_CONF": JEMALLOC_CONF}


def describe_allocator() -> str:
    """What the timing children allocate with, for reports and the JSON."""
    library = _jemalloc()
    if library is None:
        return "glibc malloc (jemalloc not installed: big buffers are faulted in again by every run)"
    return f"jemalloc ({library}, {JEMALLOC_CONF}: freed buffers stay mapped for the next run)"


@dataclass(frozen=True)
class TimingPolicy:
    """How long and how often to time each callable.

    ``margin``: fraction of a run's wall time it may spend waiting (wall - CPU) before it counts
    as disturbed. ``max_redos``: extra runs a callable may take, beyond ``min_runs``, to replace
    disturbed ones once the budget is spent. ``check_cpu`` is False on CUDA, where waiting for
    the GPU is part of the work and CPU time says nothing about disturbance. ``cpu_fallback``:
    the timed code runs on one CPU thread, so a run's CPU time is its wall time minus the
    waiting, and an unstable timing takes its statistics from CPU times.
    """

    budget_s: float = 2.0
    min_runs: int = 3
    max_runs: int = 30
    margin: float = 0.1
    max_redos: int = 5
    check_cpu: bool = True
    cpu_fallback: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_s) and self.budget_s >= 0):
            raise ValueError(f"time budget must be a number of seconds >= 0, got {self.budget_s}")
        if not 1 <= self.min_runs <= self.max_runs:
            raise ValueError(f"need 1 <= min_runs <= max_runs, got {self.min_runs} and {self.max_runs}")
        if not 0 < self.margin < 1:
            raise ValueError(f"margin must be between 0 and 1, got {self.margin}")
        if self.max_redos < 0:
            raise ValueError(f"max_redos must be >= 0, got {self.max_redos}")


@dataclass(frozen=True)
class Run:
    """One timed call: wall and CPU time in ms, whether it waited for the CPU, and the minor
    page faults this process took meanwhile (-1 where they are not counted)."""

    wall_ms: float
    cpu_ms: float
    disturbed: bool
    faults: int = -1


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, interpolated linearly between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Timing:
    """All runs of one callable, in order. Statistics come from the wall times of the undisturbed
    runs; when fewer than ``min_runs`` of them were left after the redos (``unstable``), from all
    runs: their CPU times when ``basis`` is "cpu", their wall times otherwise."""

    runs: tuple[Run, ...]
    unstable: bool
    basis: str = "wall"

    @property
    def used_ms(self) -> list[float]:
        """The times the statistics are taken from."""
        if not self.unstable:
            return [r.wall_ms for r in self.runs if not r.disturbed]
        return [r.cpu_ms if self.basis == "cpu" else r.wall_ms for r in self.runs]

    @property
    def disturbed(self) -> int:
        return sum(r.disturbed for r in self.runs)

    @property
    def min_ms(self) -> float:
        return min(self.used_ms)

    @property
    def p20_ms(self) -> float:
        return percentile(self.used_ms, 20)

    @property
    def p80_ms(self) -> float:
        return percentile(self.used_ms, 80)

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_ms": self.min_ms, "p20_ms": self.p20_ms, "p80_ms": self.p80_ms,
            "runs_ms": self.used_ms, "disturbed": self.disturbed, "unstable": self.unstable, "basis": self.basis,
            "all_runs": [[r.wall_ms, r.cpu_ms, r.disturbed, r.faults] for r in self.runs],
        }


def is_disturbed(wall_s: float, cpu_s: float, margin: float) -> bool:
    """True when a run spent more than ``margin`` of its wall time off the CPU."""
    return wall_s - cpu_s > margin * wall_s


def time_once(fn: Callable[[], Any], policy: TimingPolicy, sync: Callable[[], None] | None = None) -> Run:
    """Run ``fn`` once (``sync`` after it, e.g. a CUDA synchronize); its wall and CPU time."""
    faults0 = _minor_faults()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    if sync is not None:
        sync()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    disturbed = policy.check_cpu and is_disturbed(wall, cpu, policy.margin)
    faults = -1 if faults0 < 0 else _minor_faults() - faults0
    return Run(wall * 1e3, cpu * 1e3, disturbed, faults)


def _minor_faults() -> int:
    return -1 if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_interleaved(
    calls: Mapping[str, Callable[[], Any]],
    policy: TimingPolicy,
    sync: Callable[[], None] | None = None,
    on_run: Callable[[str, Run], None] | None = None,
) -> dict[str, Timing]:
    """Time every callable of ``calls`` in rounds (each once per round, in order) until each has
    ``min_runs`` undisturbed runs and the budget is spent, or it has ``max_runs`` undisturbed
    runs, or it has used up its redos. The callables must be warmed up already. ``on_run`` sees
    every run as it ends (progress, tests)."""
    if not calls:
        raise ValueError("nothing to time")
    runs: dict[str, list[Run]] = {name: [] for name in calls}

    def clean(name: str) -> int:
        return sum(not r.disturbed for r in runs[name])

    def done(name: str, budget_spent: bool) -> bool:
        if clean(name) >= policy.max_runs:
            return True
        if not budget_spent:
            return False
        return clean(name) >= policy.min_runs or len(runs[name]) >= policy.min_runs + policy.max_redos

    start = time.perf_counter()
    while True:
        budget_spent = time.perf_counter() - start >= policy.budget_s
        active = [name for name in calls if not done(name, budget_spent)]
        if not active:
            break
        for name in active:
            run = time_once(calls[name], policy, sync)
            runs[name].append(run)
            if on_run is not None:
                on_run(name, run)
    timings = {}
    for name, rs in runs.items():
        unstable = clean(name) < policy.min_runs
        timings[name] = Timing(tuple(rs), unstable, "cpu" if unstable and policy.cpu_fallback else "wall")
    return timings


def measure(fn: Callable[[], Any], policy: TimingPolicy, sync: Callable[[], None] | None = None) -> Timing:
    """``measure_interleaved`` for a single callable."""
    return measure_interleaved({"fn": fn}, policy, sync)["fn"]


# A fixed pure-Python workload (no torch: its thread pools are not involved), ~10 ms on a
# 2020s server core.
CALIBRATION_LOOP = 200_000
CALIBRATION_POLICY = TimingPolicy(budget_s=0.0, min_runs=9, max_runs=9, max_redos=0)


def _calibration_workload() -> int:
    total = 0
    for i in range(CALIBRATION_LOOP):
        total += i * i % 7
    return total


def calibrate(policy: TimingPolicy = CALIBRATION_POLICY) -> dict[str, Any]:
    """The machine's noise now: a fixed workload timed ``min_runs`` times (disturbed runs kept,
    they are the point). ``spread`` is (p80 - min) / min over all runs."""
    _calibration_workload()  # warm-up
    runs = measure_interleaved({"calibration": _calibration_workload}, policy)["calibration"].runs
    walls = [r.wall_ms for r in runs]
    low = min(walls)
    return {
        "workload": f"pure-Python loop of {CALIBRATION_LOOP:,} steps",
        "runs": len(runs),
        "min_ms": low,
        "p80_ms": percentile(walls, 80),
        "max_ms": max(walls),
        "spread": (percentile(walls, 80) - low) / low,
        "disturbed": sum(r.disturbed for r in runs),
    }


def describe_calibration(calibration: Mapping[str, Any]) -> str:
    """One sentence for reports and the app's status."""
    return (
        f"machine noise before the sweep: a fixed {calibration['workload']} took {calibration['min_ms']:.1f} ms "
        f"at best, +{100 * calibration['spread']:.0f}% at p80, +{100 * (calibration['max_ms'] / calibration['min_ms'] - 1):.0f}% "
        f"at worst over {calibration['runs']} runs; {calibration['disturbed']} waited for the CPU"
    )
