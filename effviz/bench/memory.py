"""Peak memory of a call, measured in a child process the honest way (DESIGN.md §5).

Why a child process: on CPU the only trustworthy number is the kernel's own count of resident
pages, and glibc keeps freed blocks cached unless told to hand big ones back to the OS. So the
child starts with ``MALLOC_MMAP_THRESHOLD_=65536`` (blocks of 64 KiB or more get mappings of
their own, returned to the OS on free), which slows allocation-heavy code: that is why latency
is never timed there. For each call it:

1. builds the call: ``factory(**kwargs)`` returns a zero-argument callable whose inputs (and
   model weights) are already allocated, so they count in the baseline, not in the peak;
2. runs it once to warm up (native libraries load, Triton compiles, thread pools start);
3. returns freed heap pages to the OS (``malloc_trim``), resets the high-water mark (``5`` into
   ``/proc/self/clear_refs``), reads ``VmHWM`` as the baseline, runs the call once more and
   reads ``VmHWM`` again.

The reading is the difference: everything the call held at its highest point, its output
included. On CUDA the same steps use ``torch.cuda.reset_peak_memory_stats`` and
``max_memory_allocated``.

Calls are described by data (a ``"module:function"`` factory plus JSON keyword arguments), so
kernel tables and model sweeps share this code, and many calls share one child: Python and
torch start once. A call that raises, runs past its time, or kills the child (the OOM killer)
is recorded as an error and the remaining calls go on in a fresh child.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
_POLL_S = 0.05


@dataclass(frozen=True)
class MemoryReading:
    """One call's peak memory above its baseline in MiB, or why there is none."""

    peak_mib: float | None
    error: str | None = None


class MemoryMeasurementError(RuntimeError):
    """The measured call failed, timed out or took its process down."""


def measure_peak_memory(
    target: str,
    calls: Sequence[Mapping[str, Any]],
    *,
    device: str = "cpu",
    timeout_s: float | None = None,
) -> list[MemoryReading]:
    """Measure the peak memory of each call in ``calls``, in order, in child processes.

    ``target`` names a factory as ``"package.module:function"``; for each entry of ``calls`` the
    child runs ``function(**entry)`` to get the zero-argument callable to measure (entries must
    be JSON-serialisable). ``device`` is ``"cpu"`` or a CUDA device such as ``"cuda:0"``: it
    picks how memory is read, the factory decides where tensors live. ``timeout_s`` bounds each
    call (the first also includes the child importing torch).
    """
    if not device.startswith("cuda") and not Path("/proc/self/clear_refs").exists():
        return [MemoryReading(None, "CPU peak memory needs Linux (/proc/self/clear_refs)")] * len(calls)
    readings: list[MemoryReading] = []
    pending = [dict(c) for c in calls]
    while pending:
        done = _run_child(target, pending, device, timeout_s)
        readings.extend(done)
        pending = pending[len(done):]
    return readings


def peak_memory_mib(
    target: str,
    kwargs: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    timeout_s: float | None = None,
) -> float:
    """Peak memory in MiB of the one call ``target(**kwargs)()``; see ``measure_peak_memory``."""
    reading = measure_peak_memory(target, [kwargs or {}], device=device, timeout_s=timeout_s)[0]
    if reading.error is not None:
        raise MemoryMeasurementError(reading.error)
    return reading.peak_mib


def _run_child(
    target: str, calls: list[dict], device: str, timeout_s: float | None
) -> list[MemoryReading]:
    """Run calls in one child until all are done or the child dies; at least one is returned."""
    spec = {"target": target, "calls": calls, "device": device, "sys_path": sys.path}
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **MALLOC_ENV}
    torch = sys.modules.get("torch")
    if torch is not None:  # same thread count as the parent: per-thread buffers are memory too
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)

    with tempfile.TemporaryDirectory(prefix="effviz-mem-") as tmp:
        results_path = Path(tmp) / "results.jsonl"
        results_path.touch()
        stderr_path = Path(tmp) / "stderr.txt"
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "effviz.bench.memory", str(results_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
            readings, timed_out = _collect(proc, results_path, len(calls), timeout_s)
        if len(readings) < len(calls):
            if timed_out:
                why = f"timed out after {timeout_s:g} s"
            else:
                why = _death_reason(proc.returncode, stderr_path.read_text(errors="replace"))
            readings.append(MemoryReading(None, why))
    return readings


def _collect(
    proc: subprocess.Popen, results_path: Path, expected: int, timeout_s: float | None
) -> tuple[list[MemoryReading], bool]:
    """Read results as the child writes them; kill it if one call runs past ``timeout_s``."""
    readings: list[MemoryReading] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        exited = proc.poll() is not None
        lines = results_path.read_text().splitlines(keepends=True)
        complete = [json.loads(ln) for ln in lines if ln.endswith("\n")]
        if len(complete) > len(readings):
            readings = [MemoryReading(r.get("peak_mib"), r.get("error")) for r in complete]
            if deadline is not None:
                deadline = time.monotonic() + timeout_s
        if exited or len(readings) == expected:
            proc.wait()
            return readings, False
        if deadline is not None and time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return readings, True
        time.sleep(_POLL_S)


def _death_reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (likely out of memory)" if -returncode == signal.SIGKILL else ""
        return f"measuring process killed by {name}{hint}"
    tail = "\n".join(stderr.strip().splitlines()[-5:])
    return f"measuring process exited with code {returncode}" + (f": {tail}" if tail else "")


# ---- the child side -------------------------------------------------------------------------


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _high_water_mark_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM line in /proc/self/status")


def _release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim).

    Blocks under the mmap threshold that were freed in the middle of the heap stay resident;
    a later call reusing them would look free of charge. After the trim it has to touch new
    pages, which the high-water mark sees.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        pass


def _measure_cpu(run) -> float:
    gc.collect()
    _release_free_heap()
    _reset_high_water_mark()
    baseline = _high_water_mark_kib()
    result = run()
    peak = _high_water_mark_kib()
    del result
    # The kernel's RSS counters lag by a few pages per CPU: never report less than nothing.
    return max(0.0, (peak - baseline) / 1024)


def _measure_cuda(run, device: str) -> float:
    import torch

    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return (peak - baseline) / 2**20


def peak_of_call_mib(run, device: str) -> float:
    """Peak memory in MiB that ``run()`` adds to this process, its result included.

    The CPU reading is only true in a process started with ``MALLOC_ENV`` (see the module
    docstring); callers run it in such a child, after a warm-up call.
    """
    return _measure_cuda(run, device) if device.startswith("cuda") else _measure_cpu(run)


def _child_main(results_path: str) -> None:
    spec = json.load(sys.stdin)
    sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
    device = spec["device"]
    module_name, _, function_name = spec["target"].partition(":")
    with open(results_path, "a") as out:
        try:
            factory = getattr(importlib.import_module(module_name), function_name)
        except Exception as err:  # every call would fail the same way: say so once per call
            record = json.dumps({"error": f"cannot load {spec['target']}: {type(err).__name__}: {err}"})
            out.write((record + "\n") * len(spec["calls"]))
            return
        for kwargs in spec["calls"]:
            try:
                run = factory(**kwargs)
                run()  # warm-up: one-time loading and compiling is not the call's memory
                record = {"peak_mib": peak_of_call_mib(run, device)}
            except Exception as err:  # recorded per call; the next call still runs
                record = {"error": f"{type(err).__name__}: {err}"}
            run = None
            gc.collect()
            out.write(json.dumps(record) + "\n")
            out.flush()


if __name__ == "__main__":
    _child_main(sys.argv[1])
