"""What tests report for the end of the run: the chaos tallies and the cluster failover
figures. A test records them as user properties of its report (`record`); the process
that prints the run's summary gathers them from the reports (tests/conftest.py). Under
pytest-xdist the tests run in worker processes, and only their reports reach the process
that prints: a list a test module appended to would stay in its worker.

The chaos tallies are also merged into tests/chaos/results/chaos-<size>.json
(`write_chaos_results`), a test run alone replacing its entry of an earlier run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CHAOS = "chaos"  # a JSON object: the test, its size and its size's params, its tally...
FAILOVER = "cluster failover"  # a line of text
SECTIONS = (CHAOS, FAILOVER)
CHAOS_RESULTS_DIR = Path(__file__).resolve().parent.parent / "chaos" / "results"


def record(node: pytest.Item, kind: str, value: str) -> None:
    node.user_properties.append((kind, value))


def gathered(reports: list[pytest.TestReport]) -> dict[str, list[str]]:
    """The recorded values of each kind, in the order their tests ended."""
    out: dict[str, list[str]] = {kind: [] for kind in SECTIONS}
    for report in reports:
        for kind, value in report.user_properties:
            if kind in out:
                out[kind].append(str(value))
    return out


def chaos_line(value: str) -> str:
    result = json.loads(value)
    return f"{result['test']} [{result['size']}] {result['line']}"


def write_chaos_results(values: list[str]) -> None:
    if not values:
        return
    results: list[dict[str, Any]] = [json.loads(v) for v in values]
    size, params = results[0]["size"], results[0].pop("params", None)
    for result in results[1:]:
        result.pop("params", None)
    CHAOS_RESULTS_DIR.mkdir(exist_ok=True)
    path = CHAOS_RESULTS_DIR / f"chaos-{size}.json"
    try:
        earlier = json.loads(path.read_text())["tests"]
    except (OSError, ValueError, KeyError, TypeError):
        earlier = []
    ran = {r["test"] for r in results}
    tests = [r for r in earlier if r.get("test") not in ran] + results
    path.write_text(json.dumps({"size": size, "params": params, "tests": tests}, indent=2)
                    + "\n")
