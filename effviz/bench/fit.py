"""Scaling fits for sweeps: the exponent of cost against token count, and crossover points.

Pure arithmetic on plain numbers (no torch), so the app can recompute a summary from the JSON
records of a sweep. Both work in log-log space, where a cost ``c * N^k`` is a straight line of
slope ``k``: 1 for linear-time mixers, up to 2 for attention once the ``L²`` term dominates.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence


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


def upper_half(ns: Sequence[float], costs: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points with the larger half of the sizes (at least two): where fixed overheads no
    longer hide the asymptotic term (DESIGN.md §5)."""
    pairs = sorted(zip(ns, costs))
    keep = max(2, math.ceil(len(pairs) / 2))
    upper = pairs[-keep:]
    return [n for n, _ in upper], [c for _, c in upper]


@dataclass(frozen=True)
class Crossover:
    """Where an efficient model's cost drops below a baseline's along the sweep axis.

    ``kind`` is "crossover" (``x`` is where it happens, ``tokens`` the efficient model's token
    count there), "always" (cheaper at every common point), "never in range" (not cheaper at the
    largest common point) or "no common points". ``exact`` is False when the first cheaper point
    is one where the baseline failed (out of memory or time): the crossover happened by ``x``,
    but there is no baseline value to interpolate with.
    """

    kind: str
    x: float | None = None
    tokens: float | None = None
    exact: bool = True

    def describe(self, unit: str = "") -> str:
        if self.kind != "crossover":
            return self.kind
        where = f"{self.x:.4g}{unit}" + (f" (~{self.tokens:.0f} tokens)" if self.tokens else "")
        return where if self.exact else f"by {where}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crossover(
    xs: Sequence[float],
    efficient: Sequence[float | None],
    baseline: Sequence[float | None],
    tokens: Sequence[float] | None = None,
) -> Crossover:
    """Find where ``efficient`` becomes cheaper than ``baseline`` along ``xs`` (ascending).

    Costs are aligned with ``xs``. ``None`` means "no value" (not run, or it failed for another
    reason) and the point is ignored; ``math.inf`` for the baseline means it ran out of memory
    or time there, so the efficient model, if measured, counts as cheaper. The crossover is
    interpolated linearly in log space between the last point where the efficient model was
    not cheaper and the next one, where it is.
    """
    if not (len(xs) == len(efficient) == len(baseline)) or (tokens is not None and len(tokens) != len(xs)):
        raise ValueError("xs, costs (and tokens) must have the same length")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError("xs must be strictly ascending")
    # (x, log of efficient / baseline: -inf where the baseline failed, tokens at x)
    common = [
        (x, math.log(e / b) if math.isfinite(b) else -math.inf, tokens[i] if tokens is not None else None)
        for i, (x, e, b) in enumerate(zip(xs, efficient, baseline))
        if e is not None and math.isfinite(e) and e > 0 and b is not None and b > 0
    ]
    if not common:
        return Crossover("no common points")
    if common[-1][1] >= 0:
        return Crossover("never in range")
    last_not_cheaper = max((i for i, (_, r, _) in enumerate(common) if r >= 0), default=None)
    if last_not_cheaper is None:
        return Crossover("always")
    x0, r0, n0 = common[last_not_cheaper]
    x1, r1, n1 = common[last_not_cheaper + 1]
    if r1 == -math.inf:
        return Crossover("crossover", x1, n1, exact=False)
    t = r0 / (r0 - r1)  # r0 >= 0 > r1: where the log ratio crosses zero, in [0, 1)
    x = math.exp(math.log(x0) + t * (math.log(x1) - math.log(x0)))
    n = None if n0 is None else math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    return Crossover("crossover", x, n)
