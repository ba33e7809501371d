"""The survey's modality table, measured: for text, vision, audio and audio-visual input, the
transformer (the traditional approach) against the linear-time mixers (the efficient approach)
on the one shared backbone, randomly initialised, as the input grows.

Each modality is one scaling sweep (``effviz.bench.sweep``) along its own axis: text length in
tokens (causal language models, ``effviz.models.language``), image resolution, audio seconds,
fused audio-visual tokens. So every number is measured as the Scaling lab measures it: the models
of a size timed in turn in one child process by the shared protocol (``effviz.bench.timing``),
peak memory in a child per model (``effviz.bench.memory``), exponents and crossovers fitted by
``effviz.bench.fit``. Vision also runs the hybrids, the mixtures of experts and windowed
attention on the same curves, each a row of its own against the same transformer.

A row of the table compares one model with its modality's transformer: the speed-up and memory
saving at the longest input both ran (the transformer's cost over the model's: above 1 the
model wins), where it becomes faster and smaller beyond the spread of the runs, and both models'
fitted latency and memory exponents with their 95% intervals.
"""
from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from .fit import MIN_FIT_SIZES, MIN_FIT_SPAN, Crossover, Exponent
from .sweep import AXES, PointResult, SweepSpec, pair_crossovers, plan_input, run_sweep, summarize


@dataclass(frozen=True)
class ModalityRow:
    """What one modality measures: its transformer ``baseline``, the ``efficient`` models set
    against it, ``variants`` drawn on the same curves (hybrids, experts, windowed attention),
    and the sizes along ``axis`` of the default and of the quick run."""

    modality: str
    axis: str
    baseline: str
    efficient: tuple[str, ...]
    variants: tuple[str, ...]
    values: tuple[float, ...]
    quick_values: tuple[float, ...]

    @property
    def models(self) -> tuple[str, ...]:
        return (*self.efficient, *self.variants, self.baseline)


# Default sizes: 4 per modality spanning 8x in tokens (the fits use the upper 3, spanning 4x), the
# longest where the transformer's quadratic term shows and one forward of the costliest model
# still takes a few seconds of one core. From the CPU times of single forwards on one thread
# (gpt-tiny 0.47 s at 1024 tokens, deit-tiny 0.06 s at 224 px), six forwards per model and size
# (warm-up, three timed, two in the memory child) and about 2.5 s to start each child process,
# the whole default run is estimated at 10-12 minutes of one thread of a 2-core machine.
MODALITIES: dict[str, ModalityRow] = {
    "text": ModalityRow("text", "length", "gpt-tiny", ("mamba-lm-tiny", "rwkv-lm-tiny", "retnet-lm-tiny"), (),
                        values=(512, 1024, 2048, 4096), quick_values=(32, 64, 128)),
    "vision": ModalityRow("vision", "resolution", "deit-tiny", ("vim-tiny", "vrwkv-tiny", "vir-tiny"),
                          ("vim-tiny-hybrid", "vrwkv-tiny-hybrid", "deit-tiny-moe", "vir-tiny-moe", "deit-tiny-window"),
                          values=(224, 448, 672, 896), quick_values=(32, 48, 64)),
    "audio": ModalityRow("audio", "seconds", "ast-tiny", ("aum-tiny", "audio-rwkv-tiny"), (),
                         values=(5, 10, 20, 40), quick_values=(0.32, 0.64, 1.28)),
    "audio-visual": ModalityRow("audio-visual", "tokens", "av-transformer-tiny", ("av-mamba-tiny",), (),
                                values=(512, 1024, 2048, 4096), quick_values=(24, 48, 96)),
}
# Largest size asked for on each axis: far beyond what the table needs, short of what would only
# fill the machine's memory or run for hours.
MAX_VALUES = {"length": 32768, "resolution": 2048, "seconds": 300, "tokens": 32768}
TABLE_COLUMNS = ["modality", "traditional approach", "efficient approach", "long input", "speed-up",
                 "memory saving", "faster from", "smaller from", "latency exponent (efficient / traditional)",
                 "memory exponent (efficient / traditional)"]


@dataclass(frozen=True)
class ModalitySpec:
    """Which modalities to measure and how. ``values`` replaces a modality's sizes (at least
    ``MIN_FIT_SIZES`` spanning ``MIN_FIT_SPAN``x in tokens, so that exponents can be fitted);
    ``quick`` takes the tiny sizes and one timed run per model and size (a smoke run: its
    numbers are not to be quoted). Invalid specs raise ValueError before anything runs."""

    modalities: tuple[str, ...] = tuple(MODALITIES)
    quick: bool = False
    values: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    device: str = "cpu"
    budget_s: float = 2.0
    min_runs: int = 3
    max_runs: int = 20
    timeout_s: float = 300.0
    threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(dict.fromkeys(self.modalities)))
        object.__setattr__(self, "values", {m: tuple(sorted(set(map(float, v)))) for m, v in self.values.items()})
        if not self.modalities:
            raise ValueError(f"choose at least one modality of {', '.join(MODALITIES)}")
        for modality in (*self.modalities, *self.values):
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
        for modality, values in self.values.items():
            check_sizes(modality, values)
        for modality in self.modalities:
            self.sweep_spec(modality)  # raises on a bad budget, run counts, device or size

    def sizes(self, modality: str) -> tuple[float, ...]:
        row = MODALITIES[modality]
        return self.values.get(modality) or (row.quick_values if self.quick else row.values)

    def sweep_spec(self, modality: str) -> SweepSpec:
        """The sweep of one modality: all its models at all its sizes."""
        row = MODALITIES[modality]
        if self.quick:
            return SweepSpec(models=row.models, axis=row.axis, values=self.sizes(modality), device=self.device,
                             budget_s=0.0, min_runs=1, max_runs=1, timeout_s=self.timeout_s, threads=self.threads)
        return SweepSpec(models=row.models, axis=row.axis, values=self.sizes(modality), device=self.device,
                         budget_s=self.budget_s, min_runs=self.min_runs, max_runs=self.max_runs,
                         timeout_s=self.timeout_s, threads=self.threads)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["values"] = {m: list(self.sizes(m)) for m in self.modalities}
        return record


def check_sizes(modality: str, values: Sequence[float]) -> None:
    """ValueError unless ``values`` are sizes a modality's row can be fitted from: positive, at
    most ``MAX_VALUES`` of its axis, at least ``MIN_FIT_SIZES`` of them spanning ``MIN_FIT_SPAN``x
    in the tokens of its transformer."""
    row = MODALITIES[modality]
    unit = AXES[row.axis]
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{modality} sizes must be positive numbers, got {list(values)}")
    if max(values, default=0) > MAX_VALUES[row.axis]:
        raise ValueError(f"{modality} sizes go up to {MAX_VALUES[row.axis]:g} {unit}, got {max(values):g} {unit}")
    tokens = sorted({plan_input(row.baseline, row.axis, v).tokens for v in values})
    if len(tokens) < MIN_FIT_SIZES or tokens[-1] < MIN_FIT_SPAN * tokens[0]:
        raise ValueError(f"{modality} needs at least {MIN_FIT_SIZES} sizes spanning {MIN_FIT_SPAN:g}x in tokens "
                         f"for its exponents, got {', '.join(f'{v:g}' for v in values)} {unit} ({tokens} tokens)")


def run_modalities(spec: ModalitySpec, stop: threading.Event | None = None) -> Iterator[tuple[str, PointResult]]:
    """Every modality's sweep in turn, yielding (modality, point) as each point finishes; ends
    early, without the unfinished points, when ``stop`` is set."""
    for modality in spec.modalities:
        if stop is not None and stop.is_set():
            return
        for point in run_sweep(spec.sweep_spec(modality), stop):
            yield modality, point


# ---- the table -------------------------------------------------------------------------------


def table_rows(points: Mapping[str, Sequence[PointResult]]) -> list[dict[str, Any]]:
    """One row per model set against its modality's transformer, from the points measured so far
    (modality -> points); a model or transformer with no points yet has no row."""
    rows = []
    for modality, measured in points.items():
        row = MODALITIES[modality]
        summary = summarize(measured)
        fits = {f["model"]: f for f in summary["fits"]}
        by_model: dict[str, list[PointResult]] = {}
        for p in sorted(measured, key=lambda p: p.x):
            by_model.setdefault(p.model, []).append(p)
        if row.baseline not in by_model:
            continue
        for model in (*row.efficient, *row.variants):
            if model in by_model:
                rows.append(_compare(row, by_model[model], by_model[row.baseline], fits))
    return rows


def _compare(row: ModalityRow, model: list[PointResult], baseline: list[PointResult],
             fits: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    crossovers = pair_crossovers(model, baseline)
    speedup = _ratio_at_longest(model, baseline, "latency_ms")
    saving = _ratio_at_longest(model, baseline, "peak_mem_mib")
    failed = [p for p in baseline if p.status in ("oom", "timeout", "skipped")]
    return {
        "modality": row.modality, "axis": row.axis, "unit": AXES[row.axis],
        "traditional": row.baseline, "efficient": model[0].model,
        "kind": "efficient" if model[0].model in row.efficient else "variant",
        "speedup": speedup, "memory_saving": saving,
        "faster_from": crossovers["latency"], "smaller_from": crossovers["memory"],
        "latency_exponent": {"efficient": fits[model[0].model]["latency"], "traditional": fits[row.baseline]["latency"]},
        "memory_exponent": {"efficient": fits[model[0].model]["memory"], "traditional": fits[row.baseline]["memory"]},
        "traditional_failed": [{"x": p.x, "status": p.status} for p in failed],
    }


def _ratio_at_longest(model: Sequence[PointResult], baseline: Sequence[PointResult], metric: str) -> dict[str, Any] | None:
    """The baseline's cost over the model's at the largest size where both have one: {x, tokens
    (the model's), ratio}; None when they share none."""
    ours = {p.x: p for p in model if getattr(p, metric)}
    theirs = {p.x: p for p in baseline if getattr(p, metric)}
    common = sorted(ours.keys() & theirs.keys())
    if not common:
        return None
    x = common[-1]
    return {"x": x, "tokens": ours[x].tokens, "ratio": getattr(theirs[x], metric) / getattr(ours[x], metric)}


def _size(row: dict[str, Any], x: float, tokens: int) -> str:
    if row["unit"] == "tokens":
        return f"{tokens} tokens"
    return f"{x:g} {row['unit']} ({tokens} tokens)"


def _ratio(row: dict[str, Any], ratio: dict[str, Any] | None, long_x: float | None) -> str:
    if ratio is None:
        return "—"
    text = f"{ratio['ratio']:.2f}x"
    return text if ratio["x"] == long_x else f"{text} at {_size(row, ratio['x'], ratio['tokens'])}"


def format_row(row: dict[str, Any]) -> list[str]:
    """A table row's cells, in ``TABLE_COLUMNS`` order."""
    longest = row["speedup"] or row["memory_saving"]
    long_input = "—" if longest is None else _size(row, longest["x"], longest["tokens"])
    if row["traditional_failed"]:
        first = row["traditional_failed"][0]
        long_input += f"; {row['traditional']} {first['status']} from {first['x']:g} {row['unit']}"
    long_x = None if longest is None else longest["x"]
    unit = f" {row['unit']}"
    efficient = row["efficient"] + (" (variant)" if row["kind"] == "variant" else "")
    return [
        row["modality"], row["traditional"], efficient, long_input,
        _ratio(row, row["speedup"], long_x), _ratio(row, row["memory_saving"], long_x),
        Crossover(**row["faster_from"]).describe(unit), Crossover(**row["smaller_from"]).describe(unit),
        " / ".join(Exponent(**row["latency_exponent"][k]).describe() for k in ("efficient", "traditional")),
        " / ".join(Exponent(**row["memory_exponent"][k]).describe() for k in ("efficient", "traditional")),
    ]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table in Markdown, with a line saying how to read it."""
    lines = [
        "Speed-up and memory saving: the transformer's latency and peak memory over the efficient model's at "
        "the longest input both ran (above 1: the efficient model wins). Faster / smaller from: where it "
        "becomes cheaper beyond the spread of the runs. Exponents: slope of log(cost) vs log(tokens), 95% "
        "bootstrap interval; 1 is linear, 2 quadratic. Variants (hybrids, experts, windowed attention) are "
        "set against the same transformer.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def make_record(spec: ModalitySpec, environment: dict[str, Any], points: Mapping[str, Sequence[PointResult]],
                seconds: float) -> dict[str, Any]:
    """Everything a run measured, for ``--out``: the spec, the environment, each modality's
    points and sweep summary, and the table's rows."""
    return {
        "spec": spec.to_dict(),
        "environment": environment,
        "seconds": seconds,
        "modalities": {
            m: {"axis": MODALITIES[m].axis, "unit": AXES[MODALITIES[m].axis], "models": list(MODALITIES[m].models),
                "points": [p.to_dict() for p in ps], "summary": summarize(ps)}
            for m, ps in points.items()
        },
        "table": table_rows(points),
    }


def points_of(record: Mapping[str, Any]) -> dict[str, list[PointResult]]:
    """The points of a record written by ``make_record``, by modality."""
    return {m: [PointResult(**p) for p in entry["points"]] for m, entry in record["modalities"].items()}
