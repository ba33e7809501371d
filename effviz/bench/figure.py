"""The Scaling lab's figure: log-log latency or peak memory against token count, per model.

The app draws it live as points stream in; ``python -m effviz.bench figure SWEEP.json --html
OUT.html`` draws it from a saved sweep (the README's figures).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import plotly.colors
import plotly.graph_objects as go

from .fit import Crossover
from .sweep import PointResult

METRICS = {"latency": ("latency_ms", "median latency (ms)"), "memory": ("peak_mem_mib", "peak memory (MiB)")}
FAILED_SYMBOLS = {"oom": "x", "timeout": "hourglass", "skipped": "circle-open", "error": "diamond-x"}


def scaling_figure(points: Sequence[PointResult], metric: str, summary: dict[str, Any], unit: str) -> go.Figure:
    """Log-log cost against token count per model, O(N) and O(N²) guides through the smallest
    measured point, markers at the top edge for points with no value (out of memory, timed out,
    skipped, failed), and dotted lines at the crossovers."""
    field, title = METRICS[metric]
    fig = go.Figure()
    measured = [p for p in points if (getattr(p, field) or 0) > 0]
    top = max((getattr(p, field) for p in measured), default=1.0) * 2
    exponents = {f["model"]: f[f"{metric}_exponent"] for f in summary["fits"]}
    palette = plotly.colors.qualitative.Plotly
    models = list(dict.fromkeys(p.model for p in points))
    for i, model in enumerate(models):
        colour = palette[i % len(palette)]
        ok = sorted((p for p in measured if p.model == model), key=lambda p: p.tokens)
        exponent = exponents.get(model)
        fig.add_trace(go.Scatter(
            x=[p.tokens for p in ok], y=[getattr(p, field) for p in ok], mode="lines+markers",
            name=model + ("" if exponent is None else f" (N^{exponent:.2f})"), legendgroup=model,
            line=dict(color=colour), customdata=[f"{p.x:g} {unit}: {p.inputs}" for p in ok],
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
    _add_guides(fig, measured, field)
    bottom = min((getattr(p, field) for p in measured), default=0.5) / 2
    for c in summary["crossovers"]:
        found = Crossover(**c[metric])
        if found.kind == "crossover" and found.tokens:
            # A trace rather than add_vline: plotly places a shape's annotation wrongly on log axes.
            label = f"{c['efficient']} < {c['baseline']}" + ("" if found.exact else " (by here)")
            fig.add_trace(go.Scatter(
                x=[found.tokens, found.tokens], y=[bottom, top], mode="lines+text", text=["", label],
                textposition="bottom right", line=dict(color="black", dash="dot", width=1),
                name=f"crossover: {label}", hovertemplate=f"crossover at ~%{{x:.0f}} tokens<extra>{label}</extra>",
            ))
    fig.update_xaxes(type="log", title_text="tokens N")
    fig.update_yaxes(type="log", title_text=title)
    fig.update_layout(title=f"{title} vs tokens", height=420, margin=dict(t=50), legend=dict(orientation="h", y=-0.2))
    return fig


def _add_guides(fig: go.Figure, measured: Sequence[PointResult], field: str) -> None:
    """Dashed O(N) and O(N²) lines from the cheapest smallest point across the measured range."""
    if len({p.tokens for p in measured}) < 2:
        return
    n0 = min(p.tokens for p in measured)
    n1 = max(p.tokens for p in measured)
    y0 = min(getattr(p, field) for p in measured if p.tokens == n0)
    steps = [n0 * (n1 / n0) ** (i / 20) for i in range(21)]
    for power, name in ((1, "O(N)"), (2, "O(N²)")):
        fig.add_trace(go.Scatter(
            x=steps, y=[y0 * (n / n0) ** power for n in steps], mode="lines", name=name,
            line=dict(color="grey", dash="dash" if power == 1 else "dot", width=1), hoverinfo="skip",
        ))


def write_html(sweep_json: Path, out: Path) -> None:
    """Both figures of a sweep saved with ``sweep --json``, side by side in one offline HTML page
    (plotly.js embedded), with the environment the sweep ran in as its caption."""
    record = json.loads(Path(sweep_json).read_text())
    points = [PointResult(**p) for p in record["points"]]
    unit, env = record["spec"]["unit"], record["environment"]
    figures = [scaling_figure(points, metric, record["summary"], unit) for metric in METRICS]
    for fig in figures:
        fig.update_layout(width=680)
    caption = ", ".join(f"{k}: {v:.0f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in env.items() if not isinstance(v, (dict, list)))
    body = "".join(
        '<div style="display:inline-block">'
        + fig.to_html(full_html=False, include_plotlyjs=i == 0, config={"displayModeBar": False}) + "</div>"
        for i, fig in enumerate(figures)
    )
    out.write_text("<!doctype html><html><head><meta charset='utf-8'></head>"
                   f"<body style='margin:0;font-family:sans-serif'>{body}"
                   f"<p style='font-size:12px;margin:4px 12px'>{caption}</p></body></html>\n")
