"""Scaling lab: latency and peak memory of whole models as their input grows, streamed point by
point as log-log curves against O(N) and O(N²) guides, with fitted exponents, the crossover
where an efficient model overtakes a transformer, and markers where a point ran out of memory
or time. The measuring is ``effviz.bench.sweep``'s: the models of a point timed in turn in one
child process by the shared protocol of ``effviz.bench.timing`` (time budget, runs that waited
for the CPU detected and run again, minimum with p20/p80), peak memory in a child per model.

Predictions in the other tabs keep running during a sweep (a sweep takes minutes; holding them
would stall every visitor). The sweep's child times with one pinned torch thread, so a run that a
prediction slowed is seen exactly (its wall time exceeds its CPU time) and run again; the status
line counts those runs.

Its second axis, seconds streamed, runs ``effviz.bench.stream`` instead: the streaming digit
transcribers fed synthetic audio chunk by chunk, in turn, for up to an hour each, in a child
process with one torch thread; per-chunk latency and held state drawn against seconds streamed
as it goes, and the point where a model hit the real-time or memory limit marked.

The modality table (an accordion under the input-size form) runs ``effviz.bench.modality``: one
sweep per modality (text length, image resolution, audio seconds, audio-visual tokens), the
transformer against the efficient models, filling in the survey's summary table as points come."""
from __future__ import annotations

import json
import math
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import gradio as gr
import pandas as pd

from ..bench import modality, stream, sweep
from ..bench.figure import scaling_figure, stream_figure
from ..bench.fit import Crossover, Exponent
from ..models.registry import ARCHITECTURES, BUNDLED_RECIPES, LANGUAGE_MODELS, TRANSCRIBER_RECIPES
from ..wording import counted
from . import BENCH_CONCURRENCY, devices, gpu, reports_bad_input

# Limits of one sweep from the app: each point costs a timing child and a memory child per model.
MAX_MODELS, MAX_VALUES, MAX_BATCH, MAX_BUDGET_S, MAX_TIMEOUT_S = 8, 12, 64, 30, 600
# Suggested values when the axis changes: 4 sizes over 4x in tokens or more (an exponent needs 3
# sizes over 2x in its upper half), within a few minutes on a 2-core CPU.
SUGGESTED_VALUES = {"resolution": "160, 320, 480, 640", "seconds": "2, 4, 8, 16", "tokens": "128, 256, 512, 1024",
                    "length": "256, 512, 1024, 2048"}
TABLE_COLUMNS = ["model", "x", "tokens", "input", "latency ms (min)", "p20 ms", "p80 ms", "runs (redone)",
                 "peak MiB", "status", "reason"]

# Seconds streamed: 10 minutes of audio is 3,750 chunks per model; at a few ms a chunk for the
# recurrent models and the transformer's growing cost until its stop, the four take a few minutes
# of one core (see docs/stream-bench-readme.md). The budget is one the transformer's KV cache
# (4 KiB a token, 25 tokens a second) passes after about 5.5 minutes, well within the default,
# where the recurrent models hold a fixed state far under 1 MiB.
STREAM_DEFAULT_MINUTES, STREAM_DEFAULT_BUDGET_MIB = 10.0, 32.0
STREAM_MIN_MINUTES, STREAM_MAX_BUDGET_MIB = 0.2, 4096.0
STREAM_REDRAW_S = 1.0  # the curves are redrawn at most this often while a stream runs
STREAM_TABLE_COLUMNS = ["model", "seconds streamed", "latency ms (min)", "p20 ms", "p80 ms", "disturbed of window",
                        "state bytes", "real-time factor (CPU)", "limit"]
AXIS_CHOICES = {"input size": "resolution, audio length or tokens: whole models, one forward per size",
                "seconds streamed": "the streaming transcribers, chunk after chunk, up to an hour"}

# Stop events of the benchmarks running now, by Gradio session: Stop ends its own session's only.
_stops: dict[str | None, threading.Event] = {}


def parse_values(text: str) -> list[float]:
    """"64, 128 256" -> [64.0, 128.0, 256.0]; ValueError naming the bad entry otherwise."""
    values = []
    for item in str(text).replace(",", " ").split():
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"sweep value {item!r} is not a number") from None
    if not values:
        raise ValueError("give at least one sweep value, e.g. 64, 128, 256")
    if len(set(values)) > MAX_VALUES:
        raise ValueError(f"at most {MAX_VALUES} different values per sweep")
    return values


def make_spec(
    models: Sequence[str], axis: str, values: str, device: str, dtype: str, batch: float, budget_s: float, timeout_s: float
) -> sweep.SweepSpec:
    """A validated ``SweepSpec`` from the form's fields (ValueError with the reason otherwise);
    run counts and threads are the default sweep's."""
    models = list(models or [])
    if len(models) > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models per sweep (got {len(models)})")
    if device not in devices():
        raise ValueError(f"device {device!r} is not available here; choose {' or '.join(devices())}")
    for name, value, limit in (("batch", batch, MAX_BATCH), ("time budget", budget_s, MAX_BUDGET_S),
                               ("time limit", timeout_s, MAX_TIMEOUT_S)):
        if value is None or not 0 < float(value) <= limit:
            raise ValueError(f"{name} must be more than 0 and at most {limit}, got {value}")
    default = sweep.default_spec()
    return sweep.SweepSpec(
        models=tuple(models), axis=axis, values=tuple(parse_values(values)), device=device, dtype=dtype,
        batch=int(batch), budget_s=float(budget_s), min_runs=default.min_runs, max_runs=default.max_runs,
        timeout_s=float(timeout_s), threads=default.threads,
    )


@gpu
@reports_bad_input
def stream_sweep(
    models: Sequence[str], axis: str, values: str, device: str, dtype: str, batch: float, budget_s: float,
    timeout_s: float, session: str | None = None,
) -> Iterator[tuple]:
    """Run a sweep, yielding the whole view (status, latency plot, memory plot, summary, table,
    files) at the start, after every point, and once more at the end with the downloads. The
    status says how far the sweep is, how long it has run and about how long it has left."""
    spec = make_spec(models, axis, values, device, dtype, batch, budget_s, timeout_s)
    total = len(spec.models) * len(spec.values)
    stop = _stops[session] = threading.Event()
    points: list[sweep.PointResult] = []
    size_seconds: list[float] = []  # how long each finished size took, smallest first
    started = time.monotonic()
    try:
        environment = sweep.sweep_environment(spec)
        yield _view(spec, environment, points, "Running, smallest size first (the models of a size are timed in "
                    "turn, then measured for memory one by one): "
                    + progress_line(spec, len(points), size_seconds, time.monotonic() - started))
        measured = sweep.run_sweep(spec, stop)
        size_started = time.monotonic()
        try:
            for point in measured:
                points.append(point)
                if size_finished(spec, points, point.x):
                    size_seconds.append(time.monotonic() - size_started)
                    size_started = time.monotonic()
                yield _view(spec, environment, points,
                            progress_line(spec, len(points), size_seconds, time.monotonic() - started))
        finally:
            measured.close()  # hands the sweep slot on even if this generator is abandoned
    finally:
        _stops.pop(session, None)
    took = clock(time.monotonic() - started)
    ending = (f"Stopped after {len(points)} of {counted(total, 'point')}, {took}." if stop.is_set()
              else f"Done: {counted(total, 'point')} in {took}.")
    yield _view(spec, environment, points, ending, with_files=True)


def size_finished(spec: sweep.SweepSpec, points: Sequence[sweep.PointResult], x: float) -> bool:
    """Whether every model of the sweep has its point at ``x`` (measured, failed or skipped)."""
    return sum(p.x == x for p in points) == len(spec.models)


def progress_line(spec: sweep.SweepSpec, points_done: int, size_seconds: Sequence[float], elapsed_s: float) -> str:
    """How far a sweep is (sizes and points done, time elapsed) and about how long it has left,
    saying what that estimate rests on: a sweep takes minutes, and a visitor decides whether to
    wait by it."""
    sizes, total = len(spec.values), len(spec.models) * len(spec.values)
    head = (f"{len(size_seconds)} of {counted(sizes, 'size')} done ({points_done} of {counted(total, 'point')}), "
            f"{clock(elapsed_s)} elapsed")
    if len(size_seconds) == sizes:
        return head + "."
    left = clock(math.ceil(sweep.estimate_left_s(spec, size_seconds)))  # whole seconds, never "0 s left"
    if not size_seconds:
        return (f"{head}; at least {left} left (the {spec.budget_s:g} s time budget per size; starting the "
                "processes and building the models come on top) ...")
    return f"{head}; about {left} left (each size to come taking as long as the last one did) ..."


def clock(seconds: float) -> str:
    """A duration as people read it: "8 s", "3 min 05 s", "1 h 02 min"."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@gpu
@reports_bad_input
def stream_modality_table(modalities: Sequence[str], quick: bool, budget_s: float,
                          session: str | None = None) -> Iterator[tuple]:
    """Run the modality table's sweeps, yielding the view (status, table, latency plot, memory
    plot of the modality being measured, files) at the start, after every point, and at the end
    with the JSON to download. Stopped by ``stop_sweep``, as a sweep is."""
    if budget_s is None or not 0 < float(budget_s) <= MAX_BUDGET_S:
        raise ValueError(f"time budget must be more than 0 and at most {MAX_BUDGET_S}, got {budget_s}")
    spec = modality.ModalitySpec(modalities=tuple(modalities or ()), quick=bool(quick), budget_s=float(budget_s))
    total = sum(len(modality.MODALITIES[m].models) * len(spec.sizes(m)) for m in spec.modalities)
    stop = _stops[session] = threading.Event()
    points: dict[str, list[sweep.PointResult]] = {m: [] for m in spec.modalities}
    started = time.monotonic()
    try:
        environment = sweep.sweep_environment(spec.sweep_spec(spec.modalities[0]))
        yield _modality_view(points, spec.modalities[0], "Running, one modality after another, smallest size first ...")
        measured = modality.run_modalities(spec, stop)
        try:
            for name, point in measured:
                points[name].append(point)
                done = sum(len(ps) for ps in points.values())
                yield _modality_view(points, name, f"{name}: {done} of {counted(total, 'point')} done, "
                                     f"{clock(time.monotonic() - started)} elapsed ...")
        finally:
            measured.close()  # hands the sweep slot on even if this generator is abandoned
    finally:
        _stops.pop(session, None)
    done = sum(len(ps) for ps in points.values())
    took = clock(time.monotonic() - started)
    ending = (f"Stopped after {done} of {counted(total, 'point')}, {took}." if stop.is_set()
              else f"Done: {counted(total, 'point')} in {took}.")
    last = next((m for m in reversed(spec.modalities) if points[m]), spec.modalities[0])
    record = modality.make_record(spec, environment, points, time.monotonic() - started)
    yield _modality_view(points, last, ending, record)


def _modality_view(points: dict[str, list[sweep.PointResult]], shown: str, status: str,
                   record: dict[str, Any] | None = None) -> tuple:
    files = None
    if record is not None:
        path = Path(tempfile.mkdtemp(prefix="effviz-modality-")) / "modality-table.json"
        path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        files = [str(path)]
    summary = sweep.summarize(points[shown])
    unit = sweep.AXES[modality.MODALITIES[shown].axis]
    return (
        f"**{status}**",
        modality.format_table(modality.table_rows(points)),
        scaling_figure(points[shown], "latency", summary, unit),
        scaling_figure(points[shown], "memory", summary, unit),
        files,
    )


def stop_sweep(session: str | None = None) -> str:
    stop = _stops.get(session)
    if stop is None:
        return "No sweep of yours is running."
    stop.set()
    return "Stopping: the running point is cancelled; the points measured so far stay."


def _view(spec: sweep.SweepSpec, environment: dict, points: list[sweep.PointResult], status: str,
          with_files: bool = False) -> tuple:
    summary = sweep.summarize(points)
    files = _write_files(spec, environment, points, summary) if with_files else None
    return (
        f"**{status}** {disturbance_note(points)}",
        scaling_figure(points, "latency", summary, spec.unit),
        scaling_figure(points, "memory", summary, spec.unit),
        sweep.format_environment(environment) + "\n" + summary_markdown(summary, spec.unit),
        points_table(points, spec.unit),
        files,
    )


def disturbance_note(points: Sequence[sweep.PointResult]) -> str:
    """What other work on the machine (predictions in the other tabs, other processes) did to
    the timing so far: the status line's second half."""
    redone = sweep.disturbed_runs(points)
    unstable = [p for p in points if p.reason.startswith("unstable")]
    note = ("Other work keeps running during a sweep: timed runs it slows (wall time over CPU time) are "
            f"detected and run again; {redone} so far.")
    if unstable:
        note += f" {counted(len(unstable), 'point')} stayed disturbed after the redos: see their reason."
    return note


def points_table(points: Sequence[sweep.PointResult], unit: str) -> pd.DataFrame:
    rows = [[p.model, f"{p.x:g} {unit}", p.tokens, p.inputs, _round(p.latency_ms), _round(p.latency_p20_ms),
             _round(p.latency_p80_ms), "" if not p.latency_runs_ms else f"{len(p.latency_runs_ms)} ({p.disturbed_runs})",
             _round(p.peak_mem_mib), p.status, p.reason] for p in points]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary_markdown(summary: dict[str, Any], unit: str) -> str:
    """Fitted exponents per model and crossovers per (efficient, baseline) pair, as bullet lists."""
    lines = ["**Scaling exponents** (slope of log cost vs log tokens over the upper half of the points, 3 sizes "
             "at least spanning 2x in tokens, with a 95% bootstrap interval over the runs; 1 is linear, 2 quadratic):"]
    for fit in summary["fits"]:
        lines.append(f"- {fit['model']} ({fit['mixer']}): latency {Exponent(**fit['latency']).describe()}, "
                     f"memory {Exponent(**fit['memory']).describe()}")
    if summary["crossovers"]:
        lines.append("\n**Crossovers** (where the efficient model becomes cheaper than the transformer beyond the "
                     "spread of the runs; \"within noise\" where their ranges overlap):")
        for c in summary["crossovers"]:
            faster = Crossover(**c["latency"]).describe(f" {unit}")
            smaller = Crossover(**c["memory"]).describe(f" {unit}")
            lines.append(f"- {c['efficient']} vs {c['baseline']}: faster {faster}; smaller {smaller}")
    return "\n".join(lines)


def _write_files(spec: sweep.SweepSpec, environment: dict, points: Sequence[sweep.PointResult],
                 summary: dict[str, Any]) -> list[str]:
    """The raw points as CSV, and everything (spec, environment, points, fits) as JSON."""
    folder = Path(tempfile.mkdtemp(prefix="effviz-sweep-"))
    csv_path, json_path = folder / f"sweep-{spec.axis}.csv", folder / f"sweep-{spec.axis}.json"
    pd.DataFrame([p.to_dict() for p in points], columns=list(sweep.PointResult.__dataclass_fields__)).to_csv(
        csv_path, index=False
    )
    record = {"spec": asdict(spec), "environment": environment, "points": [p.to_dict() for p in points],
              "summary": summary}
    json_path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    return [str(csv_path), str(json_path)]


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ---- seconds streamed ------------------------------------------------------------------------


def make_stream_spec(models: Sequence[str], minutes: float, budget_mib: float | None) -> stream.StreamSpec:
    """A validated ``StreamSpec`` from the form's fields (ValueError with the reason otherwise):
    one torch thread, the CLI's window and checkpoints; an empty budget means none."""
    if minutes is None or not STREAM_MIN_MINUTES <= float(minutes) <= stream.MAX_MINUTES:
        raise ValueError(f"minutes streamed must lie between {STREAM_MIN_MINUTES:g} and {stream.MAX_MINUTES:g}, "
                         f"got {minutes}")
    if budget_mib is not None and not 0 < float(budget_mib) <= STREAM_MAX_BUDGET_MIB:
        raise ValueError(f"the state budget must be more than 0 and at most {STREAM_MAX_BUDGET_MIB:g} MiB, "
                         f"got {budget_mib}")
    return stream.StreamSpec(models=tuple(models or ()), minutes=float(minutes),
                             state_budget_mib=None if budget_mib is None else float(budget_mib))


@reports_bad_input
def stream_bench(models: Sequence[str], minutes: float, budget_mib: float | None,
                 session: str | None = None) -> Iterator[tuple]:
    """Run the streaming benchmark in a child process, yielding the whole view (status, latency
    plot, state plot, summary, table, files) as it starts, as points come (at most every
    STREAM_REDRAW_S, and at every checkpoint and end), and at the end with the JSON to download."""
    spec = make_stream_spec(models, minutes, budget_mib)
    stop = _stops[session] = threading.Event()
    environment: dict[str, Any] = {}
    points: list[stream.StreamPoint] = []
    ends: list[stream.StreamEnd] = []
    started = last_drawn = time.monotonic()
    yield _stream_view(spec, points, ends, "Starting the benchmark's process ...")
    try:
        events = stream.run_stream_in_child(spec, stop)
        try:
            for event in events:
                if isinstance(event, dict):
                    environment = event
                elif isinstance(event, stream.StreamPoint):
                    points.append(event)
                else:
                    ends.append(event)
                now = time.monotonic()
                if (isinstance(event, stream.StreamPoint) and not event.checkpoint
                        and now - last_drawn < STREAM_REDRAW_S):
                    continue
                last_drawn = now
                yield _stream_view(spec, points, ends, stream_progress(spec, points, ends, now - started))
        finally:
            events.close()  # kills the child if this generator is abandoned
    finally:
        _stops.pop(session, None)
    took = clock(time.monotonic() - started)
    if stop.is_set():
        ending = f"Stopped after {took}; the points measured so far stay."
    else:
        ending = f"Done in {took}."
    record = stream.make_record(spec, environment, points, ends, time.monotonic() - started) if environment else None
    yield _stream_view(spec, points, ends, ending, record)


def stream_progress(spec: stream.StreamSpec, points: Sequence[stream.StreamPoint], ends: Sequence[stream.StreamEnd],
                    elapsed_s: float) -> str:
    """How far the streams are and about how long is left, at the pace so far."""
    streamed = max((p.seconds for p in points), default=0.0)
    head = (f"{stream.duration(round(streamed))} of {stream.duration(spec.total_s)} streamed, "
            f"{len(ends)} of {counted(len(spec.models), 'model')} ended, {clock(elapsed_s)} elapsed")
    if not streamed:
        return head + " ..."
    left = clock(math.ceil(elapsed_s * (spec.total_s - streamed) / streamed))
    return f"{head}; about {left} left at the pace so far (more while a KV cache grows) ..."


def _stream_view(spec: stream.StreamSpec, points: Sequence[stream.StreamPoint], ends: Sequence[stream.StreamEnd],
                 status: str, record: dict[str, Any] | None = None) -> tuple:
    files = None
    if record is not None:
        folder = Path(tempfile.mkdtemp(prefix="effviz-stream-"))
        path = folder / "stream-bench.json"
        path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        files = [str(path)]
    return (
        f"**{status}**",
        stream_figure(points, "latency", spec.chunk_seconds, spec.state_budget_mib),
        stream_figure(points, "memory", spec.chunk_seconds, spec.state_budget_mib),
        stream.format_report(record) if record is not None else stream_summary(points, ends),
        stream_table(points),
        files,
    )


def stream_summary(points: Sequence[stream.StreamPoint], ends: Sequence[stream.StreamEnd]) -> str:
    """Each model's latest point, and how its stream ended when it has."""
    ended = {e.model: e for e in ends}
    lines = []
    for model in dict.fromkeys([p.model for p in points] + [e.model for e in ends]):
        latest = next((p for p in reversed(points) if p.model == model), None)
        line = f"- {model}"
        if latest is not None:
            line += (f": {latest.latency_ms:.2f} ms a chunk at {stream.duration(round(latest.seconds, 2))}, "
                     f"state {latest.state_bytes:,} bytes")
        if model in ended:
            line += f"; {ended[model].limit or 'done'}: {ended[model].reason}"
        lines.append(line)
    return "\n".join(lines)


def stream_table(points: Sequence[stream.StreamPoint]) -> pd.DataFrame:
    """The checkpoints and the points where a model stopped."""
    rows = [[p.model, p.seconds, _round(p.latency_ms), _round(p.latency_p20_ms), _round(p.latency_p80_ms),
             f"{p.disturbed} of {p.window}", p.state_bytes, round(p.real_time_factor_cpu, 4), p.limit or ""]
            for p in points if p.checkpoint or p.limit]
    return pd.DataFrame(rows, columns=STREAM_TABLE_COLUMNS)


def stop_stream_bench(session: str | None = None) -> str:
    stop = _stops.get(session)
    if stop is None:
        return "No benchmark of yours is running."
    stop.set()
    return "Stopping: the streams end now; the points measured so far stay."


def build() -> None:
    """The Scaling lab's components and events (inside the caller's ``gr.Blocks``): what grows
    (input size, or seconds streamed) picks which of the two forms shows."""
    grows = gr.Radio(list(AXIS_CHOICES), value="input size", label="what grows", elem_id="scaling-grows",
                     info="; ".join(f"{k}: {v}" for k, v in AXIS_CHOICES.items()))
    with gr.Column(visible=True) as sweep_form:
        _build_sweep()
    with gr.Column(visible=False) as stream_form:
        _build_stream()
    grows.change(lambda g: (gr.update(visible=g == "input size"), gr.update(visible=g == "seconds streamed")),
                 grows, [sweep_form, stream_form], api_visibility="private")


def _build_sweep() -> None:
    spec = sweep.default_spec()
    gr.Markdown(
        "Pick models and an axis; the curves grow as points finish. At each size the models are "
        "timed in turn (A B A B ...) in a fresh process with 1 torch thread, for the time budget "
        f"({spec.min_runs} to {spec.max_runs} runs each): a run whose wall time exceeds its CPU time "
        "waited for the machine and is run again, and the latency shown is the minimum of the rest "
        "(noise only adds time), its error bar reaching up to their p80. Peak memory is the "
        "kernel's high-water mark, in a process per model. A fixed workload timed first gauges the "
        "machine's noise. Weights are random: timing does not depend on them. Sweeps run one at a "
        "time for everyone (overlapping timings would measure each other); a waiting sweep shows "
        "its place in the queue, a running one the sizes done and about how long it has left. Predictions in the other tabs keep running; the status line "
        "counts the runs they disturbed."
    )
    with gr.Row():
        models = gr.CheckboxGroup(list(ARCHITECTURES) + list(BUNDLED_RECIPES) + list(LANGUAGE_MODELS),
                                  value=list(spec.models), elem_id="sweep-models", label="models",
                                  info="official tiny architectures, our bundled recipes, then causal language models")
    with gr.Row():
        axis = gr.Radio(list(sweep.AXES), value=spec.axis, label="axis",
                        info="resolution: image side in px; seconds: audio length; tokens: fused audio + image; "
                        "length: text tokens (language models)")
        values = gr.Textbox(", ".join(f"{v:g}" for v in spec.values), label="values", info="comma separated",
                            elem_id="sweep-values")
        device = gr.Dropdown(devices(), value=spec.device, label="device")
        dtype = gr.Dropdown(list(sweep.DTYPES), value=spec.dtype, label="dtype")
    with gr.Row():
        batch = gr.Number(spec.batch, precision=0, label="batch", minimum=1, maximum=MAX_BATCH)
        budget = gr.Number(spec.budget_s, label="time budget per size (s)", minimum=0.1, maximum=MAX_BUDGET_S,
                           info="timed runs of all models of a size together")
        timeout = gr.Number(spec.timeout_s, label="time limit per model and size (s)", minimum=1, maximum=MAX_TIMEOUT_S)
        run = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
        stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown()
    with gr.Row():
        latency_plot = gr.Plot(label="latency", elem_id="sweep-latency")
        memory_plot = gr.Plot(label="peak memory")
    summary = gr.Markdown()
    table = gr.Dataframe(headers=TABLE_COLUMNS, label="raw points", interactive=False, elem_id="sweep-table")
    files = gr.File(label="download the raw points (CSV, JSON)", file_count="multiple", interactive=False)

    axis.change(lambda a: SUGGESTED_VALUES[a], axis, values, api_visibility="private")

    def on_run(models, axis, values, device, dtype, batch, budget, timeout, request: gr.Request):
        yield from stream_sweep(models, axis, values, device, dtype, batch, budget, timeout, request.session_hash)

    def on_stop(request: gr.Request) -> str:
        return stop_sweep(request.session_hash)

    run.click(
        on_run, [models, axis, values, device, dtype, batch, budget, timeout],
        [status, latency_plot, memory_plot, summary, table, files], api_name="sweep",
        concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY,
    )
    # Not queued behind the sweep it stops.
    stop.click(on_stop, None, status, api_name="stop_sweep", concurrency_limit=None)
    with gr.Accordion("Modality table: the survey's summary, measured", open=False):
        _build_modality_table()


def _build_modality_table() -> None:
    rows = "; ".join(f"{m}: {r.baseline} vs {', '.join(r.efficient + r.variants)} over {r.axis}"
                     for m, r in modality.MODALITIES.items())
    gr.Markdown(
        "The survey's table (traditional vs efficient approach, and the gain, per modality) as a measurement: "
        "for each modality one sweep of its transformer and efficient models on the same backbone, randomly "
        f"initialised, measured as above ({rows}). The table fills in as points come: speed-up and memory "
        "saving at the longest input both ran, crossovers, fitted exponents. The full run should take 10-12 "
        "minutes on a 2-core CPU; quick sizes check the pipeline in a couple of minutes, not numbers to quote."
    )
    with gr.Row():
        modalities = gr.CheckboxGroup(list(modality.MODALITIES), value=list(modality.MODALITIES), label="modalities",
                                      elem_id="modality-modalities")
        quick = gr.Checkbox(False, label="quick (tiny sizes, one run each)")
        budget = gr.Number(sweep.default_spec().budget_s, label="time budget per size (s)", minimum=0.1,
                           maximum=MAX_BUDGET_S)
        run = gr.Button("Run modality table", variant="primary", elem_id="modality-run")
        stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown()
    table = gr.Markdown(elem_id="modality-table")
    with gr.Row():
        latency_plot = gr.Plot(label="latency (modality being measured)")
        memory_plot = gr.Plot(label="peak memory")
    files = gr.File(label="download every point, the fits and the table (JSON)", file_count="multiple",
                    interactive=False)

    def on_run(modalities, quick, budget, request: gr.Request):
        yield from stream_modality_table(modalities, quick, budget, request.session_hash)

    def on_stop(request: gr.Request) -> str:
        return stop_sweep(request.session_hash)

    run.click(on_run, [modalities, quick, budget], [status, table, latency_plot, memory_plot, files],
              api_name="modality_table", concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY)
    stop.click(on_stop, None, status, api_name="stop_modality_table", concurrency_limit=None)


def _build_stream() -> None:
    gr.Markdown(
        "Each chosen transcriber (the causal digit models of the Audio tab's streaming; saved weights when "
        "present, random ones otherwise: a chunk's cost does not depend on them) is fed the same synthetic "
        f"audio in chunks of {stream.streaming.CHUNK_SECONDS * 1e3:g} ms, the models in turn chunk by chunk, "
        "in a process of its own with 1 torch thread. Latency per chunk is the minimum of the undisturbed "
        "chunks among the last 25 (a chunk whose wall time exceeds its CPU time waited for the machine), its "
        "bar reaching up to their p80; held memory is the bytes of the model's state: fixed for Mamba, RWKV "
        "and RetNet, the growing key-value cache for the transformer. A model stops, marked ✕, when its chunks "
        "take longer than the audio they hold (it can no longer keep up live) or its state exceeds the budget. "
        f"The default ({STREAM_DEFAULT_MINUTES:g} min, all four) takes a few minutes on a 2-vCPU machine; "
        "an hour of audio takes several times longer."
    )
    with gr.Row():
        models = gr.CheckboxGroup(list(TRANSCRIBER_RECIPES), value=list(TRANSCRIBER_RECIPES), label="transcribers",
                                  elem_id="stream-models")
    with gr.Row():
        minutes = gr.Number(STREAM_DEFAULT_MINUTES, label="minutes streamed", minimum=STREAM_MIN_MINUTES,
                            maximum=stream.MAX_MINUTES, info=f"up to {stream.MAX_MINUTES:g}", elem_id="stream-minutes")
        budget = gr.Number(STREAM_DEFAULT_BUDGET_MIB, label="state budget (MiB)", minimum=0.001,
                           maximum=STREAM_MAX_BUDGET_MIB,
                           info="a model whose state grows past this stops, as on a device with that much to "
                           "spare; empty for none")
        run = gr.Button("Run stream", variant="primary", elem_id="stream-run")
        stop = gr.Button("Stop", variant="stop")
    status = gr.Markdown()
    with gr.Row():
        latency_plot = gr.Plot(label="latency per chunk", elem_id="stream-latency")
        memory_plot = gr.Plot(label="held state")
    summary = gr.Markdown()
    table = gr.Dataframe(headers=STREAM_TABLE_COLUMNS, label="checkpoints and stops", interactive=False)
    files = gr.File(label="download every point (JSON)", file_count="multiple", interactive=False)

    def on_run(models, minutes, budget, request: gr.Request):
        yield from stream_bench(models, minutes, budget, request.session_hash)

    def on_stop(request: gr.Request) -> str:
        return stop_stream_bench(request.session_hash)

    run.click(on_run, [models, minutes, budget], [status, latency_plot, memory_plot, summary, table, files],
              api_name="stream_bench", concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY)
    # Not queued behind the run it stops.
    stop.click(on_stop, None, status, api_name="stop_stream_bench", concurrency_limit=None)
