"""Scaling fits for sweeps: the exponent of cost against token count, and crossover points.

Pure arithmetic on plain numbers (no torch), so the app can recompute a summary from the JSON
records of a sweep. Both work in log-log space, where a cost ``c * N^k`` is a straight line of
slope ``k``: 1 for linear-time mixers, up to 2 for attention once the ``L²`` term dominates.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence, Tuple, Union

from .timing import percentile
from ..wording import counted

# An exponent needs this many distinct sizes spanning at least this factor in tokens (DESIGN.md §10).
MIN_FIT_SIZES, MIN_FIT_SPAN = 3, 2.0
BOOTSTRAP_SAMPLES = 1000


def loglog_slope(ns: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope of ``log(cost)`` against ``log(n)``: the scaling exponent.

    Needs at least two points with distinct ``n``; every value must be positive.
    """
    if len(ns) != len(costs):
        raise ValueError(f"{len(ns)} sizes but {len(costs)} costs")
    if any(v <= 0 for v in (*ns, *costs)):
        raise ValueError("sizes and costs must be positive to take their logarithm")
    xs = [math.log(n) for n in ns]
    ys = [math.log(c) for c in costs]
    if len(set(xs)) < 2:
        raise ValueError("need at least two distinct sizes to fit a slope")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return sxy / sxx


def upper_half(ns: Sequence[float], costs: Sequence[Any]) -> tuple[list[float], list[Any]]:
    """The points with the larger half of the sizes, at least ``MIN_FIT_SIZES`` of them: where
    fixed overheads no longer hide the asymptotic term (DESIGN.md §5). ``costs`` ride along."""
    pairs = sorted(zip(ns, costs), key=lambda pair: pair[0])
    keep = max(MIN_FIT_SIZES, math.ceil(len(pairs) / 2))
    upper = pairs[-keep:]
    return [n for n, _ in upper], [c for _, c in upper]


@dataclass(frozen=True)
class Exponent:
    """A fitted scaling exponent with its 95% bootstrap interval, or why there is none."""

    value: float | None
    low: float | None = None
    high: float | None = None
    refused: str = ""

    def describe(self) -> str:
        if self.value is None:
            return f"— ({self.refused})"
        if self.low is None or self.low == self.high:
            return f"N^{self.value:.2f}"
        return f"N^{self.value:.2f} ({self.low:.2f}-{self.high:.2f})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_exponent(ns: Sequence[float], runs: Sequence[Sequence[float]], samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> Exponent:
    """The exponent of cost against size from each size's runs, headline = the minimum run.

    Refused (``value`` None, ``refused`` says why) with fewer than ``MIN_FIT_SIZES`` distinct
    sizes or a span under ``MIN_FIT_SPAN``x: two points always lie on a line, and over a narrow
    range noise dominates the slope. The interval is the 2.5-97.5 percentile range of the slopes
    fitted to ``samples`` resamplings of each size's runs (with replacement, seeded: the same
    runs give the same interval); a single run per size gives no interval.
    """
    if len(ns) != len(runs):
        raise ValueError(f"{len(ns)} sizes but {len(runs)} sets of runs")
    if any(not r for r in runs):
        raise ValueError("every size needs at least one run")
    sizes = sorted(set(ns))
    if len(sizes) < MIN_FIT_SIZES:
        return Exponent(None, refused=f"{counted(len(sizes), 'size')}; a fit needs {MIN_FIT_SIZES}")
    if sizes[-1] < MIN_FIT_SPAN * sizes[0]:
        return Exponent(None, refused=f"sizes span {sizes[-1] / sizes[0]:.2g}x; a fit needs {MIN_FIT_SPAN:g}x")
    value = loglog_slope(ns, [min(r) for r in runs])
    if all(len(r) == 1 for r in runs):
        return Exponent(value)
    rng = random.Random(seed)
    slopes = [loglog_slope(ns, [min(rng.choices(r, k=len(r))) for r in runs]) for _ in range(samples)]
    return Exponent(value, percentile(slopes, 2.5), percentile(slopes, 97.5))


@dataclass(frozen=True)
class Crossover:
    """Where an efficient model's cost drops below a baseline's along the sweep axis, judged by
    intervals: one model is cheaper at a point only when its whole interval lies below the
    other's.

    ``kind`` is "crossover" (``x`` is where it happens, ``tokens`` the efficient model's token
    count there), "within noise" (the intervals overlap where it would happen; with ``x``, the
    efficient model is cheaper beyond noise from ``x``), "always" (cheaper at every common
    point, two at least), "never in range" (dearer at the largest of two or more common
    points), "too few points" (one common point: no "always" or "never" from it) or "no common
    points". ``exact`` is False when the first cheaper point is one where the baseline failed
    (out of memory or time): the crossover happened by ``x``, but there is no baseline value to
    interpolate with.
    """

    kind: str
    x: float | None = None
    tokens: float | None = None
    exact: bool = True

    def describe(self, unit: str = "") -> str:
        if self.kind == "within noise" and self.x is not None:
            return f"within noise below {self.x:.4g}{unit}, cheaper from there"
        if self.kind != "crossover":
            return self.kind
        if unit.strip() == "tokens":  # the axis is the token count: a whole number, said once
            where = f"~{self.x:.0f}{unit}"
        else:
            where = f"{self.x:.4g}{unit}" + (f" (~{self.tokens:.0f} tokens)" if self.tokens else "")
        return where if self.exact else f"by {where}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Cost = Union[float, Tuple[float, float], None]


def _interval(cost: Cost) -> tuple[float, float] | None:
    """(headline, upper end) of a cost; a plain number is its own interval."""
    if cost is None:
        return None
    low, high = cost if isinstance(cost, tuple) else (cost, cost)
    if not (low > 0 and high >= low):
        return None
    return low, high


def crossover(
    xs: Sequence[float],
    efficient: Sequence[Cost],
    baseline: Sequence[Cost],
    tokens: Sequence[float] | None = None,
) -> Crossover:
    """Find where ``efficient`` becomes cheaper than ``baseline`` along ``xs`` (ascending).

    Costs are aligned with ``xs``: a number, or a (headline, upper) interval such as (min, p80)
    of the runs. ``None`` means "no value" (not run, or it failed for another reason) and the
    point is ignored; ``math.inf`` for the baseline means it ran out of memory or time there, so
    the efficient model, if measured, counts as cheaper. Between the last point where the
    efficient model is dearer beyond noise and the next one, where it is cheaper beyond noise,
    the crossover is interpolated linearly in log space from the headlines.
    """
    if not (len(xs) == len(efficient) == len(baseline)) or (tokens is not None and len(tokens) != len(xs)):
        raise ValueError("xs, costs (and tokens) must have the same length")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError("xs must be strictly ascending")
    # (x, verdict, log of efficient / baseline headlines: -inf where the baseline failed, tokens at x)
    common = []
    for i, (x, e, b) in enumerate(zip(xs, efficient, baseline)):
        e_int, b_int = _interval(e), _interval(b)
        if e_int is None or not math.isfinite(e_int[1]) or b_int is None:
            continue
        if e_int[1] < b_int[0]:
            verdict = "cheaper"
        elif e_int[0] > b_int[1]:
            verdict = "dearer"
        else:
            verdict = "tie"
        ratio = math.log(e_int[0] / b_int[0]) if math.isfinite(b_int[0]) else -math.inf
        common.append((x, verdict, ratio, tokens[i] if tokens is not None else None))
    if not common:
        return Crossover("no common points")
    last = common[-1][1]
    if last == "tie":
        return Crossover("within noise")
    if len(common) < 2:
        return Crossover("too few points")
    if last == "dearer":
        return Crossover("never in range")
    last_not_cheaper = max((i for i, c in enumerate(common) if c[1] != "cheaper"), default=None)
    if last_not_cheaper is None:
        return Crossover("always")
    x0, verdict0, r0, n0 = common[last_not_cheaper]
    x1, _, r1, n1 = common[last_not_cheaper + 1]
    if verdict0 == "tie":
        return Crossover("within noise", x1, n1)
    if r1 == -math.inf:
        return Crossover("crossover", x1, n1, exact=False)
    t = r0 / (r0 - r1)  # r0 > 0 > r1: where the log ratio of the headlines crosses zero, in (0, 1)
    x = math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    n = None if n0 is None else math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return Crossover("crossover", x, n)
