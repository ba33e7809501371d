"""The Scaling lab's figures: log-log latency or peak memory against token count, per model; and
per-chunk latency or held state against seconds streamed (the streaming benchmark).

The app draws them live as points stream in; ``python -m effviz.bench figure SWEEP.json --html
OUT.html`` draws a saved sweep and ``python -m effviz.bench stream --html OUT.html`` a streaming
run (the README's figures).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import plotly.colors
import plotly.graph_objects as go

from .fit import Crossover, Exponent
from .stream import LIMIT_NAMES, MIB, StreamPoint
from .sweep import PointResult, summarize
from .timing import describe_calibration

METRICS = {"latency": ("latency_ms", "latency (ms), min of the runs, bar to p80"), "memory": ("peak_mem_mib", "peak memory (MiB)")}
FAILED_SYMBOLS = {"oom": "x", "timeout": "hourglass", "skipped": "circle-open", "error": "diamond-x"}
# Crossover labels sit in rows above the plot area, LABEL_ROW_PX apart on the page whatever the
# plot's size; each row makes the top margin, and the figure, that much taller. A label goes in
# the lowest row where it clears the labels already there by LABEL_GAP_PX, judged on a plot area
# assumed no wider than PLOT_WIDTH_PX (half the app's width or a phone's, less the axis title)
# and text of at most CHAR_WIDTH_PX per character (plotly's 12 px font).
FIGURE_HEIGHT_PX, TOP_MARGIN_PX, PLOT_WIDTH_PX = 480, 50, 360
LABEL_ROW_PX, LABEL_GAP_PX, CHAR_WIDTH_PX = 18, 8, 7


def scaling_figure(points: Sequence[PointResult], metric: str, summary: dict[str, Any], unit: str) -> go.Figure:
    """Log-log cost against token count per model, with error bars (latency: from the minimum
    of the runs up to their p80; noise only adds time), O(N) and O(N²) guides through the
    largest size and clipped to the data's range, markers at the top edge for points with no
    value (out of memory, timed out, skipped, failed), and dotted lines at the crossovers,
    labelled above the plot in rows that never overprint."""
    field, title = METRICS[metric]
    fig = go.Figure()
    measured = [p for p in points if (getattr(p, field) or 0) > 0]
    crossings = [(c, Crossover(**c[metric])) for c in summary["crossovers"]]
    crossings = [(c, found) for c, found in crossings if found.kind == "crossover" and found.tokens]
    labels = [f"{c['efficient']} < {c['baseline']}" + ("" if found.exact else " (by here)") for c, found in crossings]
    high = max((_upper(p, field) for p in measured), default=1.0)
    low = min((getattr(p, field) for p in measured), default=0.5)
    top = high * 2  # failed points' markers
    y_range = (low / 1.5, top * 1.2)
    exponents = {f["model"]: Exponent(**f[metric]) for f in summary["fits"]}
    palette = plotly.colors.qualitative.Plotly
    models = list(dict.fromkeys(p.model for p in points))
    for i, model in enumerate(models):
        colour = palette[i % len(palette)]
        ok = sorted((p for p in measured if p.model == model), key=lambda p: p.tokens)
        exponent = exponents.get(model)
        fig.add_trace(go.Scatter(
            x=[p.tokens for p in ok], y=[getattr(p, field) for p in ok], mode="lines+markers",
            name=model + ("" if exponent is None or exponent.value is None else f" {exponent.describe()}"),
            legendgroup=model,
            line=dict(color=colour), customdata=[f"{p.x:g} {unit}: {p.inputs}" for p in ok],
            error_y=dict(type="data", symmetric=False, array=[_upper(p, field) - getattr(p, field) for p in ok],
                         arrayminus=[0] * len(ok), thickness=1.5, width=4),
            hovertemplate="%{customdata}<br>%{x} tokens: %{y:.3g}<extra>" + model + "</extra>",
        ))
        failed = [p for p in points if p.model == model and getattr(p, field) is None and p.status != "ok"]
        if failed:
            fig.add_trace(go.Scatter(
                x=[p.tokens for p in failed], y=[top] * len(failed), mode="markers+text",
                marker=dict(color=colour, size=12, symbol=[FAILED_SYMBOLS.get(p.status, "x") for p in failed]),
                text=[p.status for p in failed], textposition="bottom center", legendgroup=model,
                name=f"{model}: no value", showlegend=False, customdata=[p.reason for p in failed],
                hovertemplate="%{x} tokens: %{text}<br>%{customdata}<extra>" + model + "</extra>",
            ))
    _add_guides(fig, measured, field, y_range)
    all_tokens = [p.tokens for p in points] + [found.tokens for _, found in crossings]
    rows = label_rows([found.tokens for _, found in crossings], labels, all_tokens)
    for (c, found), label, row in zip(crossings, labels, rows):
        # A trace rather than add_vline: plotly places a shape's annotation wrongly on log axes.
        fig.add_trace(go.Scatter(
            x=[found.tokens, found.tokens], y=list(y_range), mode="lines", line=dict(color="black", dash="dot", width=1),
            name=f"crossover: {label}", showlegend=False,  # named by its label above the plot
            hovertemplate=f"crossover at ~%{{x:.0f}} tokens<extra>{label}</extra>",
        ))
        # On a log axis an annotation's x is the exponent; y is the top of the plot area, and the
        # row is a shift in pixels, so rows stay apart however the plot is sized.
        fig.add_annotation(x=math.log10(found.tokens), xref="x", y=1, yref="paper", yanchor="bottom",
                           yshift=row * LABEL_ROW_PX, text=label, showarrow=False)
    label_space = (max(rows, default=-1) + 1) * LABEL_ROW_PX
    fig.update_xaxes(type="log", title_text="tokens N")
    fig.update_yaxes(type="log", title_text=title, range=[math.log10(y_range[0]), math.log10(y_range[1])])
    # The legend at the bottom of the figure, where plotly makes room for it below the axis title
    # (a distance in the plot's own units would shrink with a short plot and cover the title).
    fig.update_layout(title=dict(text=f"{title.split(',')[0]} vs tokens", y=1, yref="container", yanchor="top",
                                 pad=dict(t=12)),
                      height=FIGURE_HEIGHT_PX + label_space, margin=dict(t=TOP_MARGIN_PX + label_space),
                      legend=dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom"))
    return fig


def label_rows(positions: Sequence[float], labels: Sequence[str], axis_tokens: Sequence[float]) -> list[int]:
    """The row (0 = lowest) of each label centred at ``positions`` (tokens) on a log x axis
    spanning ``axis_tokens``: the lowest row where it clears every label already there, so that
    close crossovers stack while distant ones share a row and the figure grows no more than it must."""
    span = math.log10(max(axis_tokens) / min(axis_tokens)) if axis_tokens else 0.0
    px_per_decade = PLOT_WIDTH_PX / span if span > 0 else 0.0
    right_edges: list[float] = []  # of the last label placed in each row, in px
    rows = [0] * len(labels)
    for i in sorted(range(len(labels)), key=lambda i: positions[i]):
        centre = math.log10(positions[i]) * px_per_decade
        half_width = len(labels[i]) * CHAR_WIDTH_PX / 2
        row = next((r for r, edge in enumerate(right_edges) if edge + LABEL_GAP_PX <= centre - half_width),
                   len(right_edges))
        if row == len(right_edges):
            right_edges.append(0.0)
        right_edges[row] = centre + half_width
        rows[i] = row
    return rows


def _upper(point: PointResult, field: str) -> float:
    """The top of a point's error bar: p80 of its latency runs; its value when there is no spread."""
    value = getattr(point, field)
    if field == "latency_ms" and point.latency_p80_ms is not None:
        return max(value, point.latency_p80_ms)
    return value


def _add_guides(fig: go.Figure, measured: Sequence[PointResult], field: str, y_range: tuple[float, float]) -> None:
    """Dashed O(N) and O(N²) lines through the cheapest point at the largest size (where the
    asymptotic term shows), drawn only where they stay inside the data's range: a steep guide
    never stretches the axis and squashes the curves."""
    if len({p.tokens for p in measured}) < 2:
        return
    n0 = min(p.tokens for p in measured)
    n1 = max(p.tokens for p in measured)
    y1 = min(getattr(p, field) for p in measured if p.tokens == n1)
    steps = [n0 * (n1 / n0) ** (i / 40) for i in range(41)]
    for power, name in ((1, "O(N)"), (2, "O(N²)")):
        inside = [(n, y1 * (n / n1) ** power) for n in steps]
        inside = [(n, y) for n, y in inside if y_range[0] <= y <= y_range[1]]
        fig.add_trace(go.Scatter(
            x=[n for n, _ in inside], y=[y for _, y in inside], mode="lines", name=name,
            line=dict(color="grey", dash="dash" if power == 1 else "dot", width=1), hoverinfo="skip",
        ))


def write_html(sweep_json: Path, out: Path) -> None:
    """Both figures of a sweep saved with ``sweep --json``, side by side in one offline HTML page
    (plotly.js embedded), with the environment the sweep ran in as its caption. The fits are
    made again from the points, by today's rules, whatever the file's summary says."""
    record = json.loads(Path(sweep_json).read_text())
    points = [PointResult(**p) for p in record["points"]]
    summary = summarize(points)
    figures = [scaling_figure(points, metric, summary, record["spec"]["unit"]) for metric in METRICS]
    out.write_text(_page(_figures_html(figures, first=True), record["environment"]))


def write_modality_html(record: dict[str, Any], out: Path) -> None:
    """The modality table's curves (``python -m effviz.bench modality --html``): each modality's
    latency and memory figures side by side under its name, in one offline HTML page."""
    from .modality import points_of  # the modality bench imports the sweep, as this module does

    sections = []
    for i, (modality, points) in enumerate(points_of(record).items()):
        summary = summarize(points)
        unit = record["modalities"][modality]["unit"]
        figures = [scaling_figure(points, metric, summary, unit) for metric in METRICS]
        sections.append(f"<h3 style='margin:8px 12px 0'>{modality}</h3>" + _figures_html(figures, first=i == 0))
    out.write_text(_page("".join(sections), record["environment"]))


def _figures_html(figures: Sequence[go.Figure], first: bool) -> str:
    """Figures side by side; plotly.js embedded once, with the page's first figure."""
    for fig in figures:
        fig.update_layout(width=680)
    return "".join(
        '<div style="display:inline-block">'
        + fig.to_html(full_html=False, include_plotlyjs=first and i == 0, config={"displayModeBar": False}) + "</div>"
        for i, fig in enumerate(figures)
    )


def _page(body: str, env: dict[str, Any]) -> str:
    """An offline HTML page of figures, captioned with the environment they were measured in."""
    caption = ", ".join(f"{k}: {v:.0f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in env.items() if not isinstance(v, (dict, list)))
    if "calibration" in env:
        caption += "; " + describe_calibration(env["calibration"])
    return ("<!doctype html><html><head><meta charset='utf-8'></head>"
            f"<body style='margin:0;font-family:sans-serif'>{body}"
            f"<p style='font-size:12px;margin:4px 12px'>{caption}</p></body></html>\n")


# ---- the streaming benchmark (effviz.bench.stream) -------------------------------------------

STREAM_METRICS = {"latency": "latency per chunk (ms), min of the window, bar to p80",
                  "memory": "state held (MiB)"}


def stream_figure(points: Sequence[StreamPoint], metric: str, chunk_seconds: float,
                  state_budget_mib: float | None) -> go.Figure:
    """Per-chunk latency or held state against seconds streamed, one curve per model (log y: a
    fixed state of kilobytes and a cache of hundreds of MiB on one plot), with the limit drawn
    across (the chunk's own duration; the state budget when there is one) and a marker where a
    model hit it."""
    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    models = list(dict.fromkeys(p.model for p in points))
    values = {p: (p.latency_ms if metric == "latency" else p.state_bytes / MIB) for p in points}
    for i, model in enumerate(models):
        colour = palette[i % len(palette)]
        own = [p for p in points if p.model == model]
        error = None
        if metric == "latency":
            error = dict(type="data", symmetric=False, array=[max(0.0, p.latency_p80_ms - p.latency_ms) for p in own],
                         arrayminus=[0] * len(own), thickness=1, width=2)
        fig.add_trace(go.Scatter(
            x=[p.seconds for p in own], y=[values[p] for p in own], mode="lines+markers", name=model,
            legendgroup=model, line=dict(color=colour), marker=dict(size=4), error_y=error,
            hovertemplate="%{x:,.0f} s streamed: %{y:.3g}<extra>" + model + "</extra>",
        ))
        stopped = [p for p in own if p.limit]
        if stopped:
            fig.add_trace(go.Scatter(
                x=[p.seconds for p in stopped], y=[values[p] for p in stopped], mode="markers+text",
                marker=dict(color=colour, size=14, symbol="x"), text=[LIMIT_NAMES[p.limit] for p in stopped],
                textposition="top left", legendgroup=model, showlegend=False,
                hovertemplate="%{x:,.0f} s: stopped, %{text}<extra>" + model + "</extra>",
            ))
    limit = chunk_seconds * 1e3 if metric == "latency" else state_budget_mib
    if limit is not None and points:
        label = (f"real time: {limit:g} ms of audio a chunk" if metric == "latency" else f"state budget {limit:g} MiB")
        fig.add_trace(go.Scatter(
            x=[0, max(p.seconds for p in points)], y=[limit, limit], mode="lines", name=label,
            line=dict(color="black", dash="dot", width=1), hoverinfo="skip",
        ))
    title = STREAM_METRICS[metric]
    fig.update_xaxes(title_text="seconds streamed", rangemode="tozero")
    fig.update_yaxes(type="log", title_text=title)
    fig.update_layout(title=dict(text=f"{title.split(' (')[0]} vs seconds streamed", y=1, yref="container",
                                 yanchor="top", pad=dict(t=12)),
                      height=FIGURE_HEIGHT_PX, margin=dict(t=TOP_MARGIN_PX),
                      legend=dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom"))
    return fig


def write_stream_html(record: dict[str, Any], out: Path) -> None:
    """Both streaming figures of a run (``bench stream --out``'s record) side by side in one
    offline HTML page, with where it ran as the caption."""
    points = [StreamPoint(**p) for p in record["points"]]
    spec, env = record["spec"], record["environment"]
    figures = [stream_figure(points, metric, spec["chunk_seconds"], spec["state_budget_mib"])
               for metric in STREAM_METRICS]
    for fig in figures:
        fig.update_layout(width=680)
    caption = (f"{env['device_name']}, {env['threads']} torch thread(s), nice {env['nice']}, torch {env['torch']}, "
               f"{env['date']}; {env['audio']}; weights: "
               + ", ".join(f"{row['model']} {row['weights']}" for row in record["models"]))
    body = "".join(
        '<div style="display:inline-block">'
        + fig.to_html(full_html=False, include_plotlyjs=i == 0, config={"displayModeBar": False}) + "</div>"
        for i, fig in enumerate(figures)
    )
    Path(out).write_text("<!doctype html><html><head><meta charset='utf-8'></head>"
                         f"<body style='margin:0;font-family:sans-serif'>{body}"
                         f"<p style='font-size:12px;margin:4px 12px'>{caption}</p></body></html>\n")
