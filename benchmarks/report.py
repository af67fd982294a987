"""Results as a table on stdout and as JSON in a file.

A scenario's result is a dict:
    {"scenario", "title", "params", "systems": {name: figures},
     "metrics": [Metric...], "targets": [Target...], ...}
Each metric row shows every system's figure and jobrunner's ratio to each baseline
(higher-is-better: jobrunner / baseline; lower-is-better: baseline / jobrunner, so a
ratio above 1 always means jobrunner is better).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stats import ratio

JOBRUNNER = "jobrunner"


@dataclass(frozen=True)
class Metric:
    label: str
    key: str  # dotted path into a system's figures
    fmt: str = "{:,.0f}"
    better: str = ""  # "higher", "lower" or "" (no ratio)


@dataclass(frozen=True)
class Target:
    label: str
    wanted: str  # as the issue states it
    value: float | None
    met: bool | None


def lookup(figures: dict[str, Any] | None, key: str) -> Any:
    node: Any = figures
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def metric_ratio(metric: Metric, jr: Any, base: Any) -> float | None:
    if not isinstance(jr, int | float) or not isinstance(base, int | float):
        return None
    if jr <= 0 or base <= 0:  # a ratio of signed lateness means nothing
        return None
    if metric.better == "higher":
        return ratio(float(jr), float(base))
    if metric.better == "lower":
        return ratio(float(base), float(jr))
    return None


def add_ratios(result: dict[str, Any]) -> None:
    """result["ratios"][baseline][metric label] = jobrunner's advantage."""
    systems: dict[str, Any] = result["systems"]
    jr = systems.get(JOBRUNNER)
    ratios: dict[str, dict[str, float | None]] = {}
    for name, figures in systems.items():
        if name.startswith(JOBRUNNER):  # jobrunner's other rows (jobrunner-grpc) are no baseline
            continue
        ratios[name] = {
            m.label: metric_ratio(m, lookup(jr, m.key), lookup(figures, m.key))
            for m in result["metrics"] if m.better
        }
    result["ratios"] = ratios


def render(result: dict[str, Any]) -> str:
    systems: dict[str, Any] = result["systems"]
    names = list(systems)
    baselines = [n for n in names if not n.startswith(JOBRUNNER)]
    header = ["metric", *names, *[f"vs {b}" for b in baselines if JOBRUNNER in systems]]
    rows: list[list[str]] = [header]
    for m in result["metrics"]:
        row = [m.label]
        row += [_fmt(lookup(systems[n], m.key), m.fmt) for n in names]
        if JOBRUNNER in systems:
            for b in baselines:
                r = result.get("ratios", {}).get(b, {}).get(m.label)
                row.append(f"{r:,.1f}x" if r is not None else "")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"== {result['scenario']}: {result['title']}"]
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for t in result.get("targets", []):
        mark = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        value = "-" if t.value is None else f"{t.value:,.2f}"
        lines.append(f"   target {t.label}: {t.wanted}  -> {value}  [{mark}]")
    for note in result.get("notes", []):
        lines.append(f"   note: {note}")
    return "\n".join(lines)


def render_header(run: dict[str, Any]) -> str:
    from benchmarks.machine import busy_warning, one_line

    c = run.get("receiver_ceiling") or {}
    lines = [f"machine: {one_line(run['machine'])}"]
    warning = busy_warning(run["machine"])
    if warning:
        lines.append(warning)
    if c:
        lines.append(
            f"receiver ceiling: {c['rate']:,.0f} req/s measured on 1 core "
            f"(receiver {c['receiver_busy']:.0%} busy, load generator {c['generator_busy']:.0%}); "
            f"capacity at 100% of its core ~{c['capacity']:,.0f} req/s"
        )
    return "\n".join(lines)


def _default(value: Any) -> Any:
    if isinstance(value, Metric | Target):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def to_json(run: dict[str, Any]) -> bytes:
    return orjson.dumps(
        run, default=_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
    )


def write_json(run: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_json(run))
