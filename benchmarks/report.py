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
    baseline: float | None = None  # the same run's figure the target is set against
    issue: int | None = None  # the issue that set it: such targets go in the run's summary


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
        base = "" if t.baseline is None else f" (baseline {_num(t.baseline)})"
        lines.append(f"   target {t.label}: {t.wanted}  -> {_num(t.value)}{base}  "
                     f"[{verdict(t.met)}]")
    for note in result.get("notes", []):
        lines.append(f"   note: {note}")
    return "\n".join(lines)


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.2g}"


def report_targets(name: str, result: dict[str, Any]) -> None:
    """Targets a scenario's own code does not set, from its figures (grpc-schedule is
    another helper's: issue 12's 5,000 calls/s is added here)."""
    targets: list[Target] = result.setdefault("targets", [])
    jr = result.get("systems", {}).get(JOBRUNNER)
    if name == "grpc-schedule" and jr is not None and not any(t.issue for t in targets):
        rate = jr.get("rate")
        targets.append(Target("gRPC ScheduleJob calls/s", ">= 5,000/s", rate,
                              None if rate is None else rate >= GRPC_SCHEDULE_RATE, issue=12))


GRPC_SCHEDULE_RATE = 5000.0


def summary(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every issue's target of every scenario run, in run order: the run's verdicts."""
    rows = []
    for name, result in run.get("scenarios", {}).items():
        for t in result.get("targets", []):
            if t.issue is not None:
                rows.append({"scenario": name, **asdict(t)})
    return rows


def render_summary(rows: list[dict[str, Any]]) -> str:
    table = [["target", "wanted", "baseline", "value", "verdict"]]
    for r in rows:
        table.append([f"{r['scenario']}: {r['label']} (#{r['issue']})", r["wanted"],
                      _num(r["baseline"]), _num(r["value"]), verdict(r["met"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["== targets: every issue target of this run, with its same-run baseline"]
    for i, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 *(c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True))]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    met = sum(1 for r in rows if r["met"] is True)
    missed = sum(1 for r in rows if r["met"] is False)
    lines.append(f"   {met} met, {missed} missed, {len(rows) - met - missed} n/a")
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
