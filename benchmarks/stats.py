"""Percentiles and the summaries the reports are built from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """min, p50, p90, p99, p99.9, max and mean of `values` (NaN for an empty sequence)."""
    ordered = sorted(values)
    if not ordered:
        nan = math.nan
        return {"n": 0, "min": nan, "p50": nan, "p90": nan, "p99": nan, "p999": nan,
                "max": nan, "mean": nan}
    return {
        "n": len(ordered),
        "min": float(ordered[0]),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "p999": percentile(ordered, 99.9),
        "max": float(ordered[-1]),
        "mean": sum(ordered) / len(ordered),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def figure(run: dict[str, Any], key: str) -> float:
    """A run's figure `key` as a number to rank runs by: 0 when missing or NaN."""
    value = run.get(key)
    return float(value) if value is not None and not math.isnan(value) else 0.0


def median_round(rounds: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Of a row's rounds (`--rounds`), the one whose figure `key` is the median (the upper
    of the middle two for an even count), with every round's figure under "rates", in run
    order."""
    median = dict(sorted(rounds, key=lambda run: figure(run, key))[len(rounds) // 2])
    median["rates"] = [run.get(key) for run in rounds]
    return median
