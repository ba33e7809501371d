"""Scaling lab: latency and peak memory of whole models as their input grows, streamed point by
point as log-log curves against O(N) and O(N²) guides, with fitted exponents, the crossover
where an efficient model overtakes a transformer, and markers where a point ran out of memory
or time. The measuring is ``effviz.bench.sweep``'s (each point in its own child processes)."""
from __future__ import annotations

import json
import math
import tempfile
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import gradio as gr
import pandas as pd

from ..bench import sweep
from ..bench.figure import scaling_figure
from ..bench.fit import Crossover
from ..models.registry import ARCHITECTURES, BUNDLED_RECIPES
from . import BENCH_CONCURRENCY, devices, gpu, reports_bad_input

# Limits of one sweep from the app: each point costs two child processes.
MAX_MODELS, MAX_VALUES, MAX_BATCH, MAX_REPEATS, MAX_TIMEOUT_S = 8, 12, 64, 20, 600
# Suggested values when the axis changes: from where the overheads dominate to where the
# quadratic term of attention does, within a few minutes on a 2-core CPU.
SUGGESTED_VALUES = {"resolution": "64, 128, 192, 256, 384", "seconds": "1, 2, 4, 8", "tokens": "64, 128, 256, 512"}
TABLE_COLUMNS = ["model", "x", "tokens", "input", "latency ms", "peak MiB", "status", "reason"]

# Stop events of the sweeps running now, by Gradio session: Stop ends its own session's sweep only.
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
    models: Sequence[str], axis: str, values: str, device: str, dtype: str, batch: float, repeats: float, timeout_s: float
) -> sweep.SweepSpec:
    """A validated ``SweepSpec`` from the form's fields (ValueError with the reason otherwise)."""
    models = list(models or [])
    if len(models) > MAX_MODELS:
        raise ValueError(f"at most {MAX_MODELS} models per sweep (got {len(models)})")
    if device not in devices():
        raise ValueError(f"device {device!r} is not available here; choose {' or '.join(devices())}")
    for name, value, limit in (("batch", batch, MAX_BATCH), ("repeats", repeats, MAX_REPEATS),
                               ("time limit", timeout_s, MAX_TIMEOUT_S)):
        if value is None or not 0 < float(value) <= limit:
            raise ValueError(f"{name} must be more than 0 and at most {limit}, got {value}")
    return sweep.SweepSpec(
        models=tuple(models), axis=axis, values=tuple(parse_values(values)), device=device, dtype=dtype,
        batch=int(batch), repeats=int(repeats), timeout_s=float(timeout_s),
    )


@gpu
@reports_bad_input
def stream_sweep(
    models: Sequence[str], axis: str, values: str, device: str, dtype: str, batch: float, repeats: float,
    timeout_s: float, session: str | None = None,
) -> Iterator[tuple]:
    """Run a sweep, yielding the whole view (status, latency plot, memory plot, summary, table,
    files) at the start, after every point, and once more at the end with the downloads."""
    spec = make_spec(models, axis, values, device, dtype, batch, repeats, timeout_s)
    total = len(spec.models) * len(spec.values)
    stop = _stops[session] = threading.Event()
    points: list[sweep.PointResult] = []
    try:
        environment = sweep.sweep_environment(spec)
        yield _view(spec, environment, points, f"Running {total} points, smallest first ...")
        measured = sweep.run_sweep(spec, stop)
        try:
            for point in measured:
                points.append(point)
                yield _view(spec, environment, points, f"{len(points)} of {total} points measured ...")
        finally:
            measured.close()  # hands the sweep slot on even if this generator is abandoned
    finally:
        _stops.pop(session, None)
    ending = f"Stopped after {len(points)} of {total} points." if stop.is_set() else f"Done: {total} points."
    yield _view(spec, environment, points, ending, with_files=True)


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
        f"**{status}**",
        scaling_figure(points, "latency", summary, spec.unit),
        scaling_figure(points, "memory", summary, spec.unit),
        sweep.format_environment(environment) + "\n" + summary_markdown(summary, spec.unit),
        points_table(points, spec.unit),
        files,
    )


def points_table(points: Sequence[sweep.PointResult], unit: str) -> pd.DataFrame:
    rows = [[p.model, f"{p.x:g} {unit}", p.tokens, p.inputs, _round(p.latency_ms), _round(p.peak_mem_mib),
             p.status, p.reason] for p in points]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary_markdown(summary: dict[str, Any], unit: str) -> str:
    """Fitted exponents per model and crossovers per (efficient, baseline) pair, as bullet lists."""
    lines = ["**Scaling exponents** (slope of log cost vs log tokens over the upper half of the points; "
             "1 is linear, 2 quadratic):"]
    for fit in summary["fits"]:
        lines.append(f"- {fit['model']} ({fit['mixer']}): latency {_exponent(fit['latency_exponent'])}, "
                     f"memory {_exponent(fit['memory_exponent'])}")
    if summary["crossovers"]:
        lines.append("\n**Crossovers** (where the efficient model becomes cheaper than the transformer):")
        for c in summary["crossovers"]:
            faster = Crossover(**c["latency"]).describe(f" {unit}")
            smaller = Crossover(**c["memory"]).describe(f" {unit}")
            lines.append(f"- {c['efficient']} vs {c['baseline']}: faster {faster}; smaller {smaller}")
    return "\n".join(lines)


def _exponent(value: float | None) -> str:
    return "—" if value is None else f"N^{value:.2f}"


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


def build() -> None:
    """The Scaling lab's components and events (inside the caller's ``gr.Blocks``)."""
    spec = sweep.default_spec()
    gr.Markdown(
        "Pick models and an axis; each point runs alone in fresh processes (latency: median "
        "after a warm-up; peak memory: the kernel's high-water mark, in a second process) and the "
        "curves grow as points finish. Weights are random: timing does not depend on them. "
        "Sweeps run one at a time for everyone (overlapping timings would measure each other); "
        "a waiting sweep shows its place in the queue. Predictions in the other tabs keep running."
    )
    with gr.Row():
        models = gr.CheckboxGroup(list(ARCHITECTURES) + list(BUNDLED_RECIPES), value=list(spec.models), elem_id="sweep-models",
                                  label="models", info="official tiny architectures, then our bundled recipes")
    with gr.Row():
        axis = gr.Radio(list(sweep.AXES), value=spec.axis, label="axis",
                        info="resolution: image side in px; seconds: audio length; tokens: fused audio + image")
        values = gr.Textbox(", ".join(f"{v:g}" for v in spec.values), label="values", info="comma separated",
                            elem_id="sweep-values")
        device = gr.Dropdown(devices(), value=spec.device, label="device")
        dtype = gr.Dropdown(list(sweep.DTYPES), value=spec.dtype, label="dtype")
    with gr.Row():
        batch = gr.Number(spec.batch, precision=0, label="batch", minimum=1, maximum=MAX_BATCH)
        repeats = gr.Number(spec.repeats, precision=0, label="timed repeats", minimum=1, maximum=MAX_REPEATS)
        timeout = gr.Number(spec.timeout_s, label="time limit per run (s)", minimum=1, maximum=MAX_TIMEOUT_S)
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

    def on_run(models, axis, values, device, dtype, batch, repeats, timeout, request: gr.Request):
        yield from stream_sweep(models, axis, values, device, dtype, batch, repeats, timeout, request.session_hash)

    def on_stop(request: gr.Request) -> str:
        return stop_sweep(request.session_hash)

    run.click(
        on_run, [models, axis, values, device, dtype, batch, repeats, timeout],
        [status, latency_plot, memory_plot, summary, table, files], api_name="sweep",
        concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY,
    )
    # Not queued behind the sweep it stops.
    stop.click(on_stop, None, status, api_name="stop_sweep", concurrency_limit=None)
