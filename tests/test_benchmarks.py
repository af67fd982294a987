"""The benchmark harness runs each scenario once at a tiny size and produces a
well-formed result: counts add up, nothing lost. No timing thresholds here: the
figures are for `jobrunner bench`, on a quiet machine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.cli import main

pytestmark = pytest.mark.timeout(180)

SYSTEMS = ["jobrunner", "rq", "rq-scheduler"]


def bench(tmp_path: Path, *argv: str) -> dict[str, Any]:
    out = tmp_path / "result.json"
    assert main([*argv, "--quick", "--out", str(out)]) == 0
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["redis_server"]
    assert result["receiver_ceiling"]["requests"] > 0
    assert result["receiver_ceiling"]["errors"] == 0
    return result


def check_deliveries(figures: dict[str, Any], expected: int) -> None:
    assert figures["expected"] == expected
    assert figures["distinct"] == expected
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    assert figures["foreign"] == 0
    assert figures["delivered"] == figures["distinct"] + figures["duplicates"]
    assert figures["lateness_ms"]["n"] == figures["delivered"]
    assert figures["scheduled_header_mismatch"] == 0
    assert not figures["timed_out"]


def test_burst(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = bench(tmp_path, "burst", "--jobs", "150")
    scenario = result["scenarios"]["burst"]
    # jobrunner twice: delivering over HTTP, and over gRPC (OnJobEvent) to a gRPC receiver
    assert list(scenario["systems"]) == ["jobrunner", "jobrunner-grpc", "rq", "rq-scheduler"]
    for figures in scenario["systems"].values():
        check_deliveries(figures, 150)
        assert figures["drain_rate"] > 0
        assert figures["workers"] == 2
    assert set(scenario["ratios"]) == {"rq", "rq-scheduler"}
    assert scenario["ratios"]["rq"]["drain rate (deliveries/s after due)"] > 0
    table = capsys.readouterr().out
    assert "== burst:" in table and "vs rq-scheduler" in table and "receiver ceiling" in table
    assert "vs jobrunner-grpc" not in table  # a row of jobrunner's, not a baseline
    # Issue 12's figures: what each delivery cost the workers and Redis, for every row.
    for figures in scenario["systems"].values():
        cost = figures["cost"]
        assert cost["cpu_us_per_delivery"] >= cost["redis_cpu_us_per_delivery"] > 0
        assert cost["redis"]["ops"] == 150 and cost["redis_calls_per_delivery"] > 0
        assert cost["redis_net_in_per_delivery"] > 0
    # ... and its targets, in the run's summary too, with rq's figure as the baseline.
    summary = [t for t in result["targets"] if t["scenario"] == "burst"]
    assert len(summary) == 8  # 4 targets for each of jobrunner's two rows
    ratio = next(t for t in summary if t["label"].startswith("jobrunner / rq"))
    assert ratio["baseline"] == scenario["systems"]["rq"]["drain_rate"]
    assert ratio["met"] is (ratio["value"] >= 60)
    assert "== targets" in table


@pytest.mark.slow  # a variant of test_burst: the default suite's time goes to what it adds
def test_burst_rounds_show_each_rows_median_round(tmp_path: Path) -> None:
    result = bench(tmp_path, "burst", "--jobs", "100", "--rounds", "3", "--no-baselines",
                   "--protocol", "http")
    scenario = result["scenarios"]["burst"]
    figures = scenario["systems"]["jobrunner"]
    check_deliveries(figures, 100)  # each round's jobs its own: none from another round
    assert len(figures["rates"]) == 3 and scenario["params"]["rounds"] == 3
    assert figures["drain_rate"] == sorted(figures["rates"])[1]
    assert any(n.startswith("jobrunner: deliveries/s in each round") for n in scenario["notes"])


def test_steady(tmp_path: Path) -> None:
    result = bench(tmp_path, "steady", "--rate", "100", "--duration", "1")
    systems = result["scenarios"]["steady"]["systems"]
    assert list(systems) == SYSTEMS
    for figures in systems.values():
        check_deliveries(figures, 100)
        assert figures["early"] >= 0
    # Correctness, not timing: jobrunner never delivers before the due time.
    assert systems["jobrunner"]["early"] == 0


def test_scale(tmp_path: Path) -> None:
    result = bench(tmp_path, "scale", "--jobs", "500")
    scenario = result["scenarios"]["scale"]
    assert scenario["params"]["levels"] == [1, 50, 500]
    for figures in scenario["systems"].values():
        assert figures["pending"] == 500
        assert figures["bytes_per_job"] > 0
        assert set(figures["claim_ms"]) == {"1", "50", "500"}
        for lat in figures["claim_ms"].values():
            assert lat["n"] == scenario["params"]["rounds"]
            assert lat["min"] > 0


def test_schedule(tmp_path: Path) -> None:
    result = bench(tmp_path, "schedule", "--duration", "0.5", "--concurrency", "8")
    systems = result["scenarios"]["schedule"]["systems"]
    for figures in systems.values():
        assert figures["requests"] > 0
        assert figures["failed"] == 0 and figures["errors"] == 0
        assert figures["stored"] == figures["ok"] == figures["requests"]
        assert figures["redis"]["ops"] == figures["stored"]
    # The API as it was (commit 6dcf706, from a git worktree), when this is a checkout.
    ratio = next(t for t in result["targets"] if t["issue"] == 12 and "requests/s" in t["label"])
    if "jobrunner-before" in systems:
        assert ratio["baseline"] == systems["jobrunner-before"]["rate"]
        assert ratio["value"] == systems["jobrunner"]["rate"] / ratio["baseline"]
    else:
        assert ratio["met"] is None
        assert any("jobrunner-before" in n for n in result["scenarios"]["schedule"]["notes"])


def test_targets_summary() -> None:
    from benchmarks.report import Target, render_summary, summary

    run = {"scenarios": {"a": {"targets": [Target("x", ">= 2x", 3.0, True, 1.5, issue=12),
                                           Target("old", ">= 1", 0.5, False)]},
                         "b": {"targets": [Target("y", "<= 1 s", None, None, issue=12)]}}}
    rows = summary(run)
    # Only the issues' targets, in run order, each with its scenario and baseline.
    assert [(r["scenario"], r["label"], r["baseline"], r["met"]) for r in rows] == [
        ("a", "x", 1.5, True), ("b", "y", None, None)]
    text = render_summary(rows)
    assert "a: x (#12)" in text and "1 met, 0 missed, 1 n/a" in text


@pytest.mark.slow  # three bursts: as test_burst_rounds_show_each_rows_median_round
def test_workers(tmp_path: Path) -> None:
    # The baselines take the same path as in test_burst: jobrunner alone here, for time.
    result = bench(tmp_path, "workers", "--jobs", "100", "--no-baselines")
    systems = result["scenarios"]["workers"]["systems"]
    assert list(systems) == ["jobrunner"]
    for per_count in systems.values():
        assert set(per_count) == {"w1", "w2", "w4"}
        for key, figures in per_count.items():
            check_deliveries(figures, 100)
            assert figures["workers"] == int(key[1:])



def test_a_cluster_node_whose_port_was_taken_starts_on_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process takes a node's port between its check and the node's start (CI:
    "timed out after 30s waiting for cluster node"): the node exits, and starts again on
    another port."""
    import socket

    from benchmarks import cluster as cluster_module
    from benchmarks.procs import Procs

    taken = socket.socket()  # bound, as an outgoing connection's port is
    taken.bind(("127.0.0.1", 0))
    ports = iter([taken.getsockname()[1]])
    free = cluster_module._cluster_port
    monkeypatch.setattr(cluster_module, "_cluster_port", lambda: next(ports, None) or free())
    try:
        with Procs() as procs:
            cluster = cluster_module.BenchCluster(procs, tmp_path, 2).start(timeout=10)
            assert taken.getsockname()[1] not in cluster.ports and len(cluster.ports) == 2
            cluster.stop()
            assert procs.named() == []
    finally:
        taken.close()


def test_a_grpc_receiver_whose_port_was_taken_starts_on_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its control port taken before it bound it (another benchmark's free port): it
    exited, and the harness polled that port until its deadline, or read another server's
    HTTP/2 answer (CI: BadStatusLine)."""
    import socket

    from benchmarks import grpc_receiver
    from benchmarks.procs import Procs

    taken = socket.socket()  # bound, as an outgoing connection's port is
    taken.bind(("127.0.0.1", 0))
    ports = iter([grpc_receiver.free_port(), taken.getsockname()[1]])
    free = grpc_receiver.free_port
    monkeypatch.setattr(grpc_receiver, "free_port", lambda: next(ports, None) or free())
    try:
        with Procs() as procs:
            client = grpc_receiver.start_grpc_receiver(procs, core=None)
            assert client.alive() and client.port != taken.getsockname()[1]
    finally:
        taken.close()


def test_cluster_counters(tmp_path: Path) -> None:
    """The capacity scenario's private cluster: K masters that own every slot between
    them, and Redis's counters per master (the scenario's per-master shares)."""
    from benchmarks.cluster import BenchCluster
    from benchmarks.procs import Procs, counters_delta

    with Procs() as procs:
        cluster = BenchCluster(procs, tmp_path, 2).start()
        before = cluster.counters()
        for port in cluster.ports:
            client = cluster.client(port)
            try:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                assert "cluster_slots_assigned:16384" in text
                client.ping()  # a command on each master
            finally:
                client.close()
        delta = counters_delta(before, cluster.counters(), ops=2)
        assert set(delta["nodes"]) == {"master-0", "master-1"}
        assert all(node["calls"] >= 2 for node in delta["nodes"].values())
        assert delta["calls_per_op"] == delta["calls"] / 2
        cluster.stop()
        assert not any(n.startswith("redis-cluster-") for n, _ in procs.named())


def test_free_port_never_gives_one_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may hand out the same free port twice running: a gRPC receiver's port
    and its control port were one port, its control answers came in HTTP/2, and CI
    failed."""
    import socket

    from benchmarks import procs

    kernel = iter([47990, 47990, 47991])

    class OnePortTwice(socket.socket):
        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", next(kernel))

    monkeypatch.setattr(procs.socket, "socket", OnePortTwice)
    monkeypatch.setattr(procs, "_GIVEN", set())
    assert [procs.free_port(), procs.free_port()] == [47990, 47991]


def test_layout_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """The measure behind the README's memory paragraph runs, and the candidate's keys are
    the compact ones it says (else its figure would not be the layout's)."""
    from benchmarks import layout_memory

    layout_memory.main(["--jobs", "3000"])
    out = capsys.readouterr().out
    today = float(out.split("leaves):")[1].split("B")[0])
    candidate = float(out.split("record):")[1].split("B")[0])
    record = re.search(r"candidate \(listpack, a (\d+)-byte record\)", out)
    assert record is not None and int(record.group(1)) <= 64, out  # hash-max-listpack-value
    assert 0 < candidate < today, out
