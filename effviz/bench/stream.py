"""Streaming benchmark (issue #19): per-chunk latency and held state of the digit transcribers as
the seconds streamed grow, up to an hour.

Every transcriber of ``TRANSCRIBER_RECIPES`` (its saved weights when ``weights/transcribers/``
has them, random ones otherwise: what a chunk costs depends neither on the weights nor on what
is said) is fed the same synthetic audio (a tone mix with noise at the model's rate, an 8 s loop)
in chunks of ``streaming.CHUNK_SECONDS`` through ``DigitStream``, as a live source delivers it.
The models are fed in turn, one chunk each per round (A B C A B C ...), so that a slow spell of
the machine hits all of them alike, in one process with one torch thread.

Each chunk is timed as the shared protocol times a run (``effviz.bench.timing.time_once``: wall
and CPU time; a chunk whose wall time exceeds its CPU time by over the margin waited for the
CPU). A chunk cannot be run again (the stream has moved on), so instead of redoing runs a point
takes the window of the last ``window_chunks`` chunks: the minimum of its undisturbed chunks with
p20-p80 beside it or, when fewer than 3 are undisturbed, the CPU times of all of them (one thread:
each chunk without its waiting), marked unstable. Points fall every ``every_s`` seconds streamed
and at each checkpoint reached (10 s, 1 min, 5 min, 10 min, 30 min, 60 min, and the end).
A model's latency ratio compares the last of its checkpoints (or the point where it stopped) to
the first.

A model stops when the latency of a point exceeds the chunk's own duration (it can no longer keep
up with a live source), or as soon as its state exceeds ``state_budget_mib``; its last point
records the limit it hit. The real-time factor is compute time over audio time, from the CPU
time of every chunk (the compute alone) and from their wall time (waits included).

``python -m effviz.bench.stream`` runs a spec read as JSON from stdin's first line and writes one
JSON event a line to stdout; a second line on stdin stops it. The Scaling lab runs it so, in a
child process whose single thread and growing caches never touch the app's own.
"""
from __future__ import annotations

import json
import math
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

import effviz
from effviz import streaming
from effviz.bench.kernels import _processor_name
from effviz.bench.timing import Run, Timing, TimingPolicy, calibrate, time_once
from effviz.models.registry import TRANSCRIBER_RECIPES
from effviz.models.transcriber import Transcriber
from effviz.wording import counted

CHECKPOINTS_S = (10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
MAX_MINUTES = 60.0
LOOP_SECONDS = 8.0  # the synthetic audio repeats every 50 chunks of 0.16 s
POINTS_PER_STREAM = 180  # points are spread this thin at most, and no closer than a window apart
MIB = 2**20
# The limits a model can hit (a stream also ends on "error" or when "stopped"), as reports name them.
LIMIT_NAMES = {"latency": "real-time limit", "memory": "memory limit"}
AUDIO = ("synthetic: tones at 300, 1100 and 2300 Hz with white noise at 5%, looped every "
         f"{LOOP_SECONDS:g} s (a chunk's cost does not depend on what it holds)")


@dataclass(frozen=True)
class StreamSpec:
    """What a streaming benchmark runs: ``models`` (ids of ``TRANSCRIBER_RECIPES``) for
    ``minutes`` of audio each. ``every_s`` defaults to the stream's length over
    POINTS_PER_STREAM, at least one window. Invalid specs raise ValueError on construction."""

    models: tuple[str, ...]
    minutes: float = 30.0
    state_budget_mib: float | None = None
    window_chunks: int = 25
    every_s: float | None = None
    checkpoints_s: tuple[float, ...] = CHECKPOINTS_S
    threads: int = 1
    chunk_seconds: float = streaming.CHUNK_SECONDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(dict.fromkeys(self.models)))
        object.__setattr__(self, "checkpoints_s", tuple(sorted({float(c) for c in self.checkpoints_s})))
        if not self.models:
            raise ValueError("a streaming benchmark needs at least one transcriber")
        for model_id in self.models:
            if model_id not in TRANSCRIBER_RECIPES:
                raise ValueError(f"unknown transcriber {model_id!r}; choose from {', '.join(TRANSCRIBER_RECIPES)}")
        if not (math.isfinite(self.minutes) and 0 < self.minutes <= MAX_MINUTES):
            raise ValueError(f"minutes must be more than 0 and at most {MAX_MINUTES:g}, got {self.minutes}")
        budget = self.state_budget_mib
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"the state budget must be a positive number of MiB, got {self.state_budget_mib}")
        if self.window_chunks < 1:
            raise ValueError(f"a window holds at least 1 chunk, got {self.window_chunks}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if any(not (math.isfinite(c) and c > 0) for c in self.checkpoints_s):
            raise ValueError(f"checkpoints must be positive seconds, got {list(self.checkpoints_s)}")
        if not 0.01 <= self.chunk_seconds <= 10:
            raise ValueError(f"chunk_seconds must lie between 0.01 and 10, got {self.chunk_seconds}")
        window_s = self.window_chunks * self.chunk_seconds
        if self.every_s is None:
            object.__setattr__(self, "every_s", max(window_s, self.total_s / POINTS_PER_STREAM))
        elif not (math.isfinite(self.every_s) and self.every_s > 0):
            raise ValueError(f"every_s must be a positive number of seconds, got {self.every_s}")

    @property
    def total_s(self) -> float:
        return self.minutes * 60

    def checkpoint_times(self) -> list[float]:
        """The checkpoints this stream reaches, its end included."""
        return sorted({c for c in self.checkpoints_s if c < self.total_s} | {self.total_s})

    def point_times(self) -> list[float]:
        """Seconds streamed at which a point is due: every ``every_s`` and at each checkpoint."""
        steps = int(self.total_s / self.every_s + 1e-9)
        regular = {round(i * self.every_s, 6) for i in range(1, steps + 1)}
        return sorted(regular | {round(c, 6) for c in self.checkpoint_times()})

    def budget_bytes(self) -> float:
        return math.inf if self.state_budget_mib is None else self.state_budget_mib * MIB


@dataclass(frozen=True)
class StreamPoint:
    """One model after ``seconds`` of audio: the latency of its last window of chunks (minimum of
    the undisturbed ones, p20-p80; from CPU times when ``unstable``), the bytes its state holds,
    the real-time factor so far, and ``limit`` when this point stopped it."""

    model: str
    seconds: float
    chunks: int
    latency_ms: float
    latency_p20_ms: float
    latency_p80_ms: float
    window: int
    disturbed: int
    unstable: bool
    basis: str
    state_bytes: int
    real_time_factor_cpu: float
    real_time_factor_wall: float
    checkpoint: bool
    limit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StreamEnd:
    """How a model's stream ended: ``limit`` is None when it reached the end, else a key of LIMIT_NAMES,
    "error" or "stopped"; ``reason`` says it in words."""

    model: str
    mixer: str
    weights: str  # "saved" or "random"
    seconds: float
    chunks: int
    compute_cpu_s: float
    compute_wall_s: float
    limit: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_chunks(rate: int, chunk_seconds: float) -> list[torch.Tensor]:
    """LOOP_SECONDS of the benchmark's audio (see AUDIO) at ``rate``, cut into chunks."""
    step = max(1, round(chunk_seconds * rate))
    count = max(1, round(LOOP_SECONDS / chunk_seconds))
    t = torch.arange(step * count, dtype=torch.float64) / rate
    tones = sum(a * torch.sin(2 * math.pi * f * t) for f, a in ((300, 0.2), (1100, 0.1), (2300, 0.05)))
    noise = 0.05 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return list((tones + noise).float().split(step))


def build_transcriber(model_id: str) -> tuple[Transcriber, str]:
    """The saved transcriber when ``weights/transcribers/`` has it, else the recipe with random
    (seeded) weights; and which it is."""
    if model_id in streaming.list_transcribers():
        return streaming.load_transcriber(model_id), "saved"
    torch.manual_seed(0)
    return Transcriber(TRANSCRIBER_RECIPES[model_id]()).eval(), "random"


class _Runner:
    """One model's stream as the benchmark drives it: its chunks, its window of timed chunks, the
    points still due."""

    def __init__(self, model_id: str, spec: StreamSpec, policy: TimingPolicy):
        self.model_id, self.spec, self.policy = model_id, spec, policy
        self.model, self.weights = build_transcriber(model_id)
        self.stream = streaming.DigitStream(self.model)
        self.chunks = synthetic_chunks(self.model.config.sample_rate, spec.chunk_seconds)
        self.window: deque[Run] = deque(maxlen=spec.window_chunks)
        self.due = spec.point_times()
        self.checkpoints = {round(c, 6) for c in spec.checkpoint_times()}
        self.fed, self.cpu_s, self.wall_s, self.seconds = 0, 0.0, 0.0, 0.0

    def end(self, limit: str | None, reason: str) -> StreamEnd:
        return StreamEnd(self.model_id, self.model.config.mixer, self.weights, self.seconds, self.fed,
                         self.cpu_s, self.wall_s, limit, reason)

    def feed(self) -> list[StreamPoint | StreamEnd]:
        """The next chunk: the point it completes, if any, and the end when it is the last."""
        reports = []
        run = time_once(lambda: reports.append(self.stream.feed(self.chunks[self.fed % len(self.chunks)])), self.policy)
        report = reports[0]
        self.fed += 1
        self.window.append(run)
        self.cpu_s += run.cpu_ms / 1e3
        self.wall_s += run.wall_ms / 1e3
        self.seconds = report.seconds_streamed
        over_budget = report.state_bytes > self.spec.budget_bytes()
        if not over_budget and self.seconds < self.due[0] - 1e-9:
            return []
        checkpoint = False
        while self.due and self.seconds >= self.due[0] - 1e-9:
            checkpoint |= self.due.pop(0) in self.checkpoints
        point = self.point(report.state_bytes, checkpoint)
        chunk_ms = self.spec.chunk_seconds * 1e3
        if over_budget:
            point = replace(point, limit="memory")
            return [point, self.end("memory", f"state of {report.state_bytes / MIB:,.1f} MiB exceeded the "
                                    f"{self.spec.state_budget_mib:g} MiB budget at {self.seconds:,.1f} s streamed")]
        if point.latency_ms > chunk_ms:
            point = replace(point, limit="latency")
            return [point, self.end("latency", f"a chunk took {point.latency_ms:.1f} ms at best over its last "
                                    f"{counted(point.window, 'chunk')}, more than the {chunk_ms:g} ms of audio it "
                                    f"holds: it no longer keeps up in real time ({self.seconds:,.1f} s streamed)")]
        if not self.due:
            return [point, self.end(None, f"streamed all {self.spec.minutes:g} min")]
        return [point]

    def point(self, state_bytes: int, checkpoint: bool) -> StreamPoint:
        runs = tuple(self.window)
        clean = sum(not r.disturbed for r in runs)
        unstable = clean < min(self.policy.min_runs, len(runs))
        timing = Timing(runs, unstable, "cpu" if unstable and self.policy.cpu_fallback else "wall")
        return StreamPoint(
            self.model_id, round(self.seconds, 6), self.fed, timing.min_ms, timing.p20_ms, timing.p80_ms,
            len(runs), timing.disturbed, unstable, timing.basis, state_bytes,
            self.cpu_s / self.seconds, self.wall_s / self.seconds, checkpoint,
        )


def run_stream(spec: StreamSpec, stop: threading.Event | None = None) -> Iterator[StreamPoint | StreamEnd]:
    """Stream every model of ``spec`` in turn, chunk by chunk, in this process (with its torch
    threads as they are: the CLI and the child set them to ``spec.threads``). Yields each point
    as it is measured and each model's ``StreamEnd``. A model that fails to build or to stream
    ends with limit "error" and the others go on; ``stop`` ends every stream at the next round."""
    on_cpu_alone = torch.get_num_threads() == 1
    policy = TimingPolicy(budget_s=0.0, min_runs=min(3, spec.window_chunks), max_runs=spec.window_chunks,
                          cpu_fallback=on_cpu_alone)
    active: list[_Runner] = []
    for model_id in spec.models:
        try:
            active.append(_Runner(model_id, spec, policy))
        except Exception as err:  # recorded with the results: the other models still stream
            yield StreamEnd(model_id, TRANSCRIBER_RECIPES[model_id]().mixer, "none", 0.0, 0, 0.0, 0.0, "error",
                            f"could not build it: {type(err).__name__}: {err}")
    while active:
        if stop is not None and stop.is_set():
            for runner in active:
                yield runner.end("stopped", f"by the user at {runner.seconds:,.1f} s streamed")
            return
        for runner in list(active):
            try:
                events = runner.feed()
            except Exception as err:  # e.g. a kernel this build lacks: this model ends here
                events = [runner.end("error", f"chunk {runner.fed + 1} failed: {type(err).__name__}: {err}")]
            yield from events
            if any(isinstance(e, StreamEnd) for e in events):
                active.remove(runner)


# ---- environment, summary, report ------------------------------------------------------------


def stream_environment(spec: StreamSpec) -> dict[str, Any]:
    """Where and how the benchmark runs; includes the machine's noise now (``calibrate``)."""
    return {
        "device": "cpu",
        "device_name": _processor_name(torch.device("cpu")),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "effviz": effviz.__version__,
        "nice": os.nice(0),
        "load_average_1min": os.getloadavg()[0],
        "chunk_seconds": spec.chunk_seconds,
        "window_chunks": spec.window_chunks,
        "audio": AUDIO,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "calibration": calibrate(),
    }


def summarize(spec: StreamSpec, points: Sequence[StreamPoint], ends: Sequence[StreamEnd]) -> list[dict[str, Any]]:
    """Per model: its checkpoints reached and the point where it stopped, if it did; the latency
    ratio of the last of those to the first, its state bytes at both and whether they are equal;
    its real-time factors and how it ended."""
    rows = []
    for end in sorted(ends, key=lambda e: spec.models.index(e.model)):
        own = [p for p in points if p.model == end.model]
        marks = [p for p in own if p.checkpoint or p.limit]
        first, last = (marks[0], marks[-1]) if len(marks) >= 2 else (None, None)
        rows.append({
            "model": end.model, "mixer": end.mixer, "weights": end.weights, "seconds_streamed": end.seconds,
            "limit": end.limit, "reason": end.reason,
            "stopped_at_s": end.seconds if end.limit else None,
            "real_time_factor_cpu": end.compute_cpu_s / end.seconds if end.seconds else None,
            "real_time_factor_wall": end.compute_wall_s / end.seconds if end.seconds else None,
            "checkpoints": [p.to_dict() for p in marks],
            "ratio_from_s": first and first.seconds, "ratio_to_s": last and last.seconds,
            "latency_ratio": last.latency_ms / first.latency_ms if first else None,
            "state_bytes_first": first and first.state_bytes, "state_bytes_last": last and last.state_bytes,
            "state_same_size": first.state_bytes == last.state_bytes if first else None,
            "last_point": own[-1].to_dict() if own else None,
        })
    return rows


def duration(seconds: float) -> str:
    """A length of audio as the report reads it: "10.08 s", "1 min", "25.5 min"."""
    return f"{round(seconds, 2):g} s" if seconds < 60 else f"{round(seconds / 60, 1):g} min"


def format_report(record: dict[str, Any]) -> str:
    """Markdown: environment, one row per model (the ratio of its last checkpoint to its first,
    state bytes at both, real-time factors, limit), then every checkpoint."""
    env, spec = record["environment"], record["spec"]
    budget = "none" if spec["state_budget_mib"] is None else f"{spec['state_budget_mib']:g} MiB"
    lines = [
        f"**{env['device_name']}** ({env['machine']}, {counted(env['threads'], 'torch thread')}, nice {env['nice']}, "
        f"1-min load average {env['load_average_1min']:.2f}); python {env['python']}, torch {env['torch']}, "
        f"effviz {env['effviz']}; {env['date']}", "",
        f"Streamed {duration(spec['minutes'] * 60)} per model in chunks of {spec['chunk_seconds'] * 1e3:g} ms, "
        f"the models in turn chunk by chunk; audio {env['audio']}. Latency per chunk: the minimum of the "
        f"undisturbed chunks of the last {spec['window_chunks']} (p20-p80 beside it). Limits: a chunk slower than "
        f"its own audio (real time), state budget {budget}. Run took {record['run_wall_s']:,.0f} s wall.", "",
    ]
    weights = {row["weights"] for row in record["models"]}
    if "random" in weights:
        lines += ["Weights: random (no saved transcriber here); timing does not depend on them.", ""]
    lines += ["| model | mixer | latency first → last checkpoint (ms) | ratio | state bytes first → last | "
              "same size | real-time factor CPU (wall) | ended |", "|---|---|---|---|---|---|---|---|"]
    for row in record["models"]:
        if row["latency_ratio"] is not None:
            first, last = row["checkpoints"][0], row["checkpoints"][-1]
            latency = (f"{first['latency_ms']:.2f} at {duration(first['seconds'])} → {last['latency_ms']:.2f} at "
                       f"{duration(last['seconds'])}" + (f" ({LIMIT_NAMES[last['limit']]})" if last["limit"] else ""))
            ratio = f"{row['latency_ratio']:.2f}x"
            state = f"{row['state_bytes_first']:,} → {row['state_bytes_last']:,}"
            same = "yes" if row["state_same_size"] else "no"
        else:
            latency = ratio = state = same = "—"
        rtf = ("—" if row["real_time_factor_cpu"] is None
               else f"{row['real_time_factor_cpu']:.4f} ({row['real_time_factor_wall']:.4f})")
        ended = f"{row['limit']}: {row['reason']}" if row["limit"] else row["reason"]
        lines.append(f"| {row['model']} | {row['mixer']} | {latency} | {ratio} | {state} | {same} | {rtf} | {ended} |")
    lines += ["", "| model | seconds streamed | latency ms (min) | p20-p80 ms | disturbed of window | state bytes "
              "| stopped |", "|---|---|---|---|---|---|---|"]
    for row in record["models"]:
        for p in row["checkpoints"]:
            note = "" if not p["unstable"] else " (unstable: CPU times)" if p["basis"] == "cpu" else " (unstable)"
            lines.append(f"| {row['model']} | {duration(p['seconds'])} | {p['latency_ms']:.2f} | "
                         f"{p['latency_p20_ms']:.2f}-{p['latency_p80_ms']:.2f} | "
                         f"{p['disturbed']} of {p['window']}{note} | {p['state_bytes']:,} | "
                         f"{LIMIT_NAMES[p['limit']] if p['limit'] else ''} |")
    return "\n".join(lines) + "\n"


def make_record(spec: StreamSpec, env: dict[str, Any], points: Sequence[StreamPoint], ends: Sequence[StreamEnd],
                run_wall_s: float) -> dict[str, Any]:
    """Everything a run measured, as the JSON the CLI writes and the app offers."""
    return {"environment": env, "spec": asdict(spec), "run_wall_s": run_wall_s,
            "models": summarize(spec, points, ends), "points": [p.to_dict() for p in points],
            "ends": [e.to_dict() for e in ends]}


# ---- in a child process (the app) ------------------------------------------------------------

_POLL_S = 0.05
STOP_GRACE_S = 10.0  # a stopped child has this long to report its streams' ends before it is killed


def run_stream_in_child(spec: StreamSpec, stop: threading.Event | None = None
                        ) -> Iterator[dict[str, Any] | StreamPoint | StreamEnd]:
    """``run_stream`` in a child process with ``spec.threads`` torch threads: yields its
    environment (a dict) first, then its points and ends as they come. Setting ``stop`` asks the
    child to end every stream (each model's end, "stopped", still comes), and kills it if it has
    not within STOP_GRACE_S; a child that fails raises RuntimeError with its last words."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "effviz.bench.stream"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def read() -> None:
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        deadline = math.inf  # set when stopping
        try:
            _tell(proc, json.dumps(asdict(spec)))
            while time.monotonic() < deadline:
                if stop is not None and stop.is_set() and deadline == math.inf:
                    _tell(proc, "stop")
                    deadline = time.monotonic() + STOP_GRACE_S
                try:
                    line = lines.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if line is None:
                    break
                yield _event(json.loads(line))
            else:
                return  # stopped, and the child did not end in time: killed below
            proc.wait()
            if proc.returncode != 0:
                stderr.seek(0)
                tail = " | ".join(stderr.read().strip().splitlines()[-3:])
                raise RuntimeError(f"the streaming benchmark's process exited with code {proc.returncode}: {tail}")
        finally:  # also when the caller abandons the generator: never leave a child running
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _tell(proc: subprocess.Popen, line: str) -> None:
    try:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    except BrokenPipeError:  # the child has ended already; its output and exit status say how
        pass


def _event(message: dict[str, Any]) -> dict[str, Any] | StreamPoint | StreamEnd:
    if "environment" in message:
        return message["environment"]
    if "point" in message:
        return StreamPoint(**message["point"])
    return StreamEnd(**message["end"])


def _child_main() -> None:
    """The spec on stdin's first line; any next line, or stdin closing (the parent gone), stops
    every stream at the next round."""
    fields = json.loads(sys.stdin.readline())
    spec = StreamSpec(**{**fields, "models": tuple(fields["models"]), "checkpoints_s": tuple(fields["checkpoints_s"])})
    stop = threading.Event()

    def listen() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=listen, daemon=True).start()
    torch.set_num_threads(spec.threads)
    print(json.dumps({"environment": stream_environment(spec)}), flush=True)
    for event in run_stream(spec, stop):
        kind = "point" if isinstance(event, StreamPoint) else "end"
        print(json.dumps({kind: event.to_dict()}), flush=True)


if __name__ == "__main__":
    _child_main()
