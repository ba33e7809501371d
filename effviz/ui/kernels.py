"""Kernels tab: each op of the shared runtime timed by backend against sequence length, with the
achieved bandwidth drawn against this machine's own measured copy bandwidth (the scans are
memory-bound, so that is the limit they are judged by). The table and plot grow as each op and
length is timed, with an estimate of the time left."""
from __future__ import annotations

import platform
from typing import Any, Iterator

import gradio as gr
import plotly.colors
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import effviz
from effviz import kernels
from effviz.bench import kernels as kernel_bench
from effviz.bench import roofline
from effviz.wording import counted

from . import BENCH_CONCURRENCY, devices, gpu, reports_bad_input

DEFAULT_OPS = ["selective_scan", "bi_wkv"]
DEFAULT_LENGTHS = "256, 1024, 4096"
MAX_LENGTH = 65_536
MAX_LENGTHS = 8
MAX_BUDGET_S = 10.0
DEFAULT_BUDGET_S = 1.0
ROOFLINE_SIZES = (32, 1024)  # image sides in px the roofline accepts, inclusive
DEFAULT_ROOFLINE_SIZE = 224


def parse_lengths(text: str) -> list[int]:
    """"256, 1024 4096" -> [256, 1024, 4096]; ValueError naming the bad entry otherwise."""
    lengths = []
    for item in text.replace(",", " ").split():
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"sequence length {item!r} is not a whole number") from None
        if not 1 <= value <= MAX_LENGTH:
            raise ValueError(f"sequence length {value} is outside 1..{MAX_LENGTH}")
        lengths.append(value)
    if not lengths:
        raise ValueError("give at least one sequence length, e.g. 256, 1024, 4096")
    if len(set(lengths)) > MAX_LENGTHS:
        raise ValueError(f"at most {MAX_LENGTHS} different lengths per run")
    return sorted(set(lengths))


@gpu
@reports_bad_input
def run_kernels(
    ops: list[str], lengths: str, budget_s: float, device: str, dtype: str
) -> Iterator[tuple[go.Figure, str]]:
    """Run the kernel benchmark, yielding the plot and the Markdown report (a status line on top)
    after the machine's limits, after each op and length, and at the end with peak memory."""
    unknown = [op for op in ops or [] if op not in kernel_bench.OPS]
    if not ops or unknown:
        raise ValueError(f"choose ops among {', '.join(kernel_bench.OPS)}" + (f" (not {unknown})" if unknown else ""))
    if device not in devices():
        raise ValueError(f"device {device!r} is not available here; choose {' or '.join(devices())}")
    if dtype not in kernel_bench.DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(kernel_bench.DTYPES)}")
    if budget_s is None or not 0 < float(budget_s) <= MAX_BUDGET_S:
        raise ValueError(f"time budget must be more than 0 and at most {MAX_BUDGET_S:g} s, got {budget_s}")
    policy = kernel_bench.bench_policy(float(budget_s), torch.device(device))
    for result in kernel_bench.iter_bench(
        ops, parse_lengths(lengths), policy, torch.device(device), kernel_bench.DTYPES[dtype]
    ):
        yield kernels_figure(result), f"**{progress_line(result['progress'])}**\n\n" + kernel_bench.format_report(result)


def progress_line(progress: dict[str, Any]) -> str:
    """Where the bench is, and a time left that says what it rests on."""
    if progress["done"]:
        return f"Done: {progress['groups']} op and length pairs timed, peak memory measured."
    head = f"{progress['timed']} of {progress['groups']} op and length pairs timed"
    if progress["eta_s"] is None:
        return f"{head}; the time left is estimated once the first is timed."
    return (f"{head}; about {progress['eta_s']:.0f} s of timing left or more (scaled linearly in L from "
            "what is timed; O(L²) references take longer), then peak memory in a child process.")


def kernels_figure(result: dict[str, Any]) -> go.Figure:
    """Top row: latency (minimum, bar to p80) vs L per backend (log-log). Bottom row: GB/s vs
    L, with the machine's copy bandwidth as the ceiling."""
    rows = [r for r in result["rows"] if r["min_ms"] is not None]
    cases = list(dict.fromkeys(r["op"] for r in result["rows"]))
    fig = make_subplots(rows=2, cols=max(len(cases), 1), subplot_titles=cases, vertical_spacing=0.12)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    palette = plotly.colors.qualitative.Plotly  # one colour per backend, the same in every subplot
    copy_bw = result["machine"]["copy_gb_per_s"]
    for col, case in enumerate(cases, start=1):
        for backend in backends:
            points = sorted((r for r in rows if r["op"] == case and r["backend"] == backend), key=lambda r: r["length"])
            if not points:
                continue
            style = dict(color=palette[backends.index(backend) % len(palette)])
            x = [r["length"] for r in points]
            common = dict(name=backend, legendgroup=backend, mode="lines+markers", line=style)
            fig.add_trace(go.Scatter(
                x=x, y=[r["min_ms"] for r in points], showlegend=col == 1,
                error_y=dict(type="data", symmetric=False, array=[r["p80_ms"] - r["min_ms"] for r in points],
                             arrayminus=[0] * len(points), thickness=1.5, width=4),
                **common), 1, col)
            fig.add_trace(go.Scatter(x=x, y=[r["gb_per_s"] for r in points], showlegend=False, **common), 2, col)
        lengths = sorted({r["length"] for r in rows if r["op"] == case})
        if lengths:  # a trace rather than add_hline: plotly misplaces a shape's label on log axes
            fig.add_trace(go.Scatter(
                x=[lengths[0], lengths[-1]], y=[copy_bw, copy_bw], mode="lines", name=f"copy bandwidth {copy_bw:.1f} GB/s",
                legendgroup="copy", showlegend=col == 1, line=dict(color="grey", dash="dot"),
            ), 2, col)
        fig.update_xaxes(type="log", title_text="sequence length L", row=2, col=col)
        fig.update_xaxes(type="log", row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
        fig.update_yaxes(type="log", row=2, col=col)
    fig.update_yaxes(title_text="latency (ms), min, bar to p80", row=1, col=1)
    fig.update_yaxes(title_text="GB/s (inputs + outputs)", row=2, col=1)
    m = result["machine"]
    fig.update_layout(
        title=f"{m['processor']} ({m['device']}, {counted(m['threads'], 'thread')}, {m['dtype']})",
        height=640, margin=dict(t=90), legend=dict(orientation="h", y=-0.12),
    )
    return fig


@gpu
@reports_bad_input
def run_roofline(models: list[str], size: float, budget_s: float) -> Iterator[tuple[go.Figure, str]]:
    """The roofline of each model on the CPU, yielding the bar chart and the Markdown report after
    each model is measured."""
    from effviz.bench.sweep import plan_input

    if not models:
        raise ValueError(f"choose at least one model, e.g. {', '.join(roofline.DEFAULT_MODELS)}")
    if size is None or not ROOFLINE_SIZES[0] <= float(size) <= ROOFLINE_SIZES[1]:
        raise ValueError(f"image side must be {ROOFLINE_SIZES[0]} to {ROOFLINE_SIZES[1]} px, got {size}")
    if budget_s is None or not 0 < float(budget_s) <= MAX_BUDGET_S:
        raise ValueError(f"time budget must be more than 0 and at most {MAX_BUDGET_S:g} s, got {budget_s}")
    for model_id in models:  # an unknown model or a size it cannot take, before anything is timed
        plan_input(model_id, "resolution", int(size))
    env = roofline.environment()
    results = []
    for result in roofline.iter_roofline(list(models), int(size), float(budget_s)):
        results.append(result)
        status = f"**{len(results)} of {counted(len(models), 'model')} measured.**"
        yield roofline_figure(results), f"{status}\n\n" + roofline.format_report(results, env)


def roofline_figure(results: list[roofline.RooflineResult]) -> go.Figure:
    """One stacked bar per model: its floor by component, then everything else up to the measured time."""
    fig = go.Figure()
    names = list(dict.fromkeys(part.name for r in results for part in r.components))
    models = [r.model for r in results]
    for name in names:
        values = []
        for r in results:
            part = next((p for p in r.components if p.name == name), None)
            if part is None:
                values.append(0.0)
            elif part.floor_ms is None:  # everything else: what the measured time leaves over the floor
                values.append(max(r.measured_ms - r.floor_ms, 0.0))
            else:
                values.append(part.floor_ms)
        fig.add_trace(go.Bar(name=name, x=models, y=values))
    fig.add_trace(go.Scatter(name="measured forward", x=models, y=[r.measured_ms for r in results], mode="markers",
                             marker=dict(symbol="line-ew-open", size=40, color="black")))
    fig.update_layout(barmode="stack", yaxis_title="ms", height=420, legend=dict(orientation="h", y=-0.15),
                      title="floor (each component timed alone) and everything else, up to the measured forward")
    return fig


def _machine_markdown() -> str:
    return (
        f"Backends available here: **{', '.join(kernels.available_backends())}**. "
        "The default backend is `triton` on CUDA, the compiled `cpu` kernels on CPU when they "
        "build, `torch` otherwise (`EFFVIZ_BACKEND` overrides). "
        f"effviz {effviz.__version__}, python {platform.python_version()}, torch {torch.__version__} "
        f"({counted(torch.get_num_threads(), 'CPU thread')}), gradio {gr.__version__}."
    )


def build() -> None:
    """The Kernels tab's components and events (inside the caller's ``gr.Blocks``)."""
    gr.Markdown(
        "Each op of the shared kernel runtime, by backend, against sequence length L. After a "
        "warm-up, the backends of an op and length are timed in turn (A B A B ...) for the time "
        "budget; a run whose wall time exceeds its CPU time waited for the machine and is run "
        "again; the minimum is shown, with an error bar up to p80 (a row marked unstable kept waiting "
        "after the redos: its numbers come from all its runs). The table grows as each length "
        "is timed; then peak memory per call is measured in a child process. "
        "Scans are memory-bound, so throughput (bytes of inputs and outputs per second) is drawn "
        "against this machine's own large-copy bandwidth, measured in the same run. Points that "
        "would take over 30 s or an O(L²) reference over 4 GiB are skipped, with the reason in "
        "the table."
    )
    gr.Markdown(_machine_markdown())
    with gr.Row():
        ops = gr.CheckboxGroup(list(kernel_bench.OPS), value=DEFAULT_OPS, label="ops")
        lengths = gr.Textbox(DEFAULT_LENGTHS, label="sequence lengths L", info=f"up to {MAX_LENGTH}")
        budget = gr.Slider(0.2, MAX_BUDGET_S, value=DEFAULT_BUDGET_S, step=0.1, label="time budget per length (s)")
        device = gr.Dropdown(devices(), value=devices()[-1], label="device")
        dtype = gr.Dropdown(list(kernel_bench.DTYPES), value="float32", label="dtype")
    run = gr.Button("Run kernels benchmark", variant="primary")
    plot = gr.Plot(label="latency and throughput")
    report = gr.Markdown()
    run.click(
        run_kernels, [ops, lengths, budget, device, dtype], [plot, report], api_name="kernels",
        concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY,
    )
    _build_roofline()


def _build_roofline() -> None:
    gr.Markdown(
        "### Roofline of a forward\n"
        "How far a model's measured forward (CPU, random weights) sits above its floor. One forward is "
        "recorded; then the forward and each distinct matmul/conv and kernel call it made are timed alone, "
        "in turn. The floor prices the matmul FLOPs at the GFLOP/s this machine reaches on the model's own "
        "GEMMs and each kernel at its per-element cost alone (e.g. selective-scan ns per token x channel x "
        "state) times the elements the model pushes through it; everything else (norms, glue, copies, "
        "Python) is the rest, and the overhead is its share of the measured time."
    )
    with gr.Row():
        models = gr.CheckboxGroup(list(roofline.DEFAULT_MODELS), value=list(roofline.DEFAULT_MODELS), label="models")
        size = gr.Number(DEFAULT_ROOFLINE_SIZE, label="image side (px)", precision=0,
                         minimum=ROOFLINE_SIZES[0], maximum=ROOFLINE_SIZES[1])
        budget = gr.Slider(0.2, MAX_BUDGET_S, value=DEFAULT_BUDGET_S, step=0.1, label="time budget per model (s)")
    run = gr.Button("Run roofline")
    plot = gr.Plot(label="floor by component and measured forward")
    report = gr.Markdown()
    run.click(run_roofline, [models, size, budget], [plot, report], api_name="roofline",
              concurrency_limit=1, concurrency_id=BENCH_CONCURRENCY)
