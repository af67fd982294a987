"""Logs: one format for every process (plain or JSON lines), a line per delivery, retry and
dead letter, and `jobrunner logs` merging the shared service's files.

The formatters are checked on records built here; the delivery lines come from a real
worker (in this process) delivering to a real receiver; `jobrunner logs` reads what a
real `jobrunner run` left in its service's log folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from app import logs
from app.jobs.model import FailureKind, FailurePolicy
from app.logs import JsonFormatter, PlainFormatter, fields_of, setup
from app.processes.procs import PROJECT_ROOT, process_alive
from app.processes.service_logs import last_lines, line_time
from app.settings import Settings, SettingsError, redact_url
from app.store.store import Store
from tests.support.jobs import APP, dead_letters, make_job, register
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import RedisProcess, free_port
from tests.support.waiting import wait_for
from tests.support.workers import ThreadWorker, WorkerProcess
from tests.test_cli import APP_SCRIPT, CLI, SEED_BODY, cli, cli_env

pytestmark = pytest.mark.usefixtures("reap_workers")

CREATED = 1795932074.0405  # 2026-11-29T06:01:14.040Z
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _record(msg: str = "delivered", levelno: int = logging.INFO,
            **extra: Any) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "jobrunner.worker", "msg": msg, "levelno": levelno,
         "levelname": logging.getLevelName(levelno), "created": CREATED, **extra}
    )  # fmt: skip


def _expected_ts(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --- the formats ----------------------------------------------------------------------------


def test_plain_line_is_time_level_logger_message_then_fields() -> None:
    record = _record(app="job-service", job="R2-D2", attempt=1, status=200, lateness_ms=3)
    line = PlainFormatter().format(record)
    assert line == (f"{_expected_ts(CREATED)} INFO jobrunner.worker delivered "
                    "app=job-service job=R2-D2 attempt=1 status=200 lateness_ms=3")
    assert line.startswith("2026-11-29T06:01:14.040Z ")


def test_plain_quotes_values_that_are_not_one_word_and_puts_tracebacks_below() -> None:
    record = _record("retry scheduled", logging.WARNING, job='two "words"',
                     status="no answer within 2s", empty="")
    line = PlainFormatter().format(record)
    assert line.endswith(
        r' retry scheduled job="two \"words\"" status="no answer within 2s" empty=""')
    assert " WARNING jobrunner.worker " in line
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = _record("cannot process", logging.ERROR, exc_info=sys.exc_info())
    first, *rest = PlainFormatter().format(failed).split("\n")
    assert first.endswith(" ERROR jobrunner.worker cannot process")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: boom"


def test_a_plain_message_is_one_line_whatever_it_holds() -> None:
    """A message may carry a caller's text (granian's access log: the decoded path): its
    line breaks would forge a line that reads as another record."""
    forged = "GET /v1.0/jobs/x\n2026-11-30T00:00:00.000Z ERROR jobrunner.worker dead-lettered\r"
    line = PlainFormatter().format(_record(forged))
    assert "\n" not in line and "\r" not in line
    assert line.endswith(r"GET /v1.0/jobs/x\n2026-11-30T00:00:00.000Z ERROR jobrunner.worker "
                         r"dead-lettered\r")


def test_a_plain_line_carries_no_terminal_escape() -> None:
    """`GET /x%1b%5b2J...` (no token needed: a 404 is logged too) put raw ESC bytes in the
    access log, which `jobrunner run` shows on the user's terminal and `logs` writes as is:
    every control character is escaped, in the message and in the fields."""
    line = PlainFormatter().format(_record("GET /x\x1b[2J\x1b[31mFORGED\x9b0m\x00",
                                           app="a\x1bb\x85"))
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line), repr(line)
    assert r"GET /x\x1b[2J\x1b[31mFORGED\x9b0m\x00" in line
    assert r'app="a\u001bb\u0085"' in line  # a JSON string, as any field that is no word


def test_a_redis_password_in_the_query_is_redacted_too() -> None:
    """redis-py takes `?password=` as the password: the worker's first line and the
    "cannot reach Redis" error showed it whole."""
    assert redact_url("redis://127.0.0.1:1/0?db=2&Password=S3cret&x=1") == \
        "redis://127.0.0.1:1/0?db=2&Password=***&x=1"
    assert redact_url("redis://u:pw@h:1/0?password=S3cret") == "redis://u:***@h:1/0?password=***"
    assert redact_url("redis://h:1/0?passwords=1") == "redis://h:1/0?passwords=1"
    assert redact_url("redis://h:1/0?pass%77ord=S3cret") == "redis://h:1/0?password=***"


def test_a_json_line_carries_no_terminal_escape_either() -> None:
    line = JsonFormatter().format(_record("GET /x\x1b[2J\x9b31m", app="\x85"))
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", line), repr(line)
    assert json.loads(line)["msg"] == "GET /x\x1b[2J\x9b31m"


def test_a_worker_logs_its_redis_without_the_password(tmp_path: Path) -> None:
    """REDIS_URL holds the password (the README's trust boundary asks for one); the
    worker's first line named it in full."""
    server = RedisProcess(tmp_path / "redis")
    server.start()
    worker: WorkerProcess | None = None
    try:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret-pw")
        settings = Settings(redis_url=f"redis://:s3cret-pw@127.0.0.1:{server.port}/0",
                            app_url="http://127.0.0.1:9")
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        assert worker.terminate() == 0
        assert f"redis://:***@127.0.0.1:{server.port}/0" in worker.log()
        assert "s3cret-pw" not in worker.log()
    finally:
        if worker is not None:
            worker.cleanup()
        server.stop()


def test_a_json_worker_log_holds_no_line_of_grpcs_own(settings: Settings,
                                                     tmp_path: Path) -> None:
    """grpc's core wrote its own INFO line (an app's GOAWAY) into the worker's JSON log."""
    import socket

    from app.store.store import AppRegistration

    goaway = bytes.fromhex("000000040000000000" "0000080700000000000000000000000002")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:  # SETTINGS then GOAWAY(INTERNAL_ERROR) to every connection
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.sendall(goaway)
                threading.Thread(target=lambda c=conn: (c.recv(65536), c.close()),
                                 daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    store = Store(settings)
    store.register_app(AppRegistration(APP, f"http://127.0.0.1:{port}", protocol="grpc"))
    worker = WorkerProcess(settings, tmp_path / "worker.log", JOBRUNNER_LOG_FORMAT="json")
    try:
        worker.start()
        store.schedule(make_job("gone", failure_policy=FailurePolicy(FailureKind.DROP)))
        wait_for(lambda: store.get(APP, "gone") is None, timeout=30, what="the attempt")
        assert worker.terminate() == 0
        lines = worker.log().splitlines()
        assert lines and all(line.startswith("{") for line in lines), worker.log()
        assert [json.loads(line) for line in lines]
    finally:
        worker.cleanup()
        listener.close()
        store.close()


def test_the_app_run_starts_gets_grpc_verbosity_as_the_user_left_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """jobrunner's own GRPC_VERBOSITY (NONE) was passed on: a gRPC app started by `run`
    had grpc's logging turned off."""
    from app.cli import run

    monkeypatch.setenv("GRPC_VERBOSITY", "NONE")
    monkeypatch.setattr(run, "GRPC_VERBOSITY_OURS", True)
    assert "GRPC_VERBOSITY" not in run._app_command_env(Settings())
    monkeypatch.setattr(run, "GRPC_VERBOSITY_OURS", False)  # the user's: kept
    assert run._app_command_env(Settings())["GRPC_VERBOSITY"] == "NONE"


def test_a_log_file_that_cannot_be_written_does_not_stop_the_child_s_output_being_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` copies its API's output to the API's log file and the console; a full disk
    (here /dev/full) raised in that thread, which then stopped reading the pipe, and the
    API blocked at its next log line."""
    from app.processes.supervisor import _tee

    console = io.BytesIO()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(console))
    lines = [f"line {i}\n".encode() for i in range(10_000)]
    src = io.BytesIO(b"".join(lines))
    with open("/dev/full", "ab") as full:
        _tee(src, full)
    assert src.closed  # read to its end
    shown = console.getvalue()
    assert shown.count(b"cannot write '/dev/full' any more") == 1
    assert shown.endswith(lines[-1]) and shown.count(b"line ") == len(lines)


def test_logs_of_a_part_or_a_kind(tmp_path: Path) -> None:
    """`jobrunner logs api-job` is that app's log, not also `api-job-service`'s."""
    from app.processes.service_logs import log_files

    for stem in ("api-job", "api-job-service", "worker-1", "worker-2", "redis"):
        (tmp_path / f"{stem}.log").write_text("x\n")

    def stems(*names: str) -> list[str]:
        return sorted(p.stem for p in log_files(tmp_path, names))

    assert stems("api-job") == ["api-job"]
    assert stems("api") == ["api-job", "api-job-service"]
    assert stems("worker") == ["worker-1", "worker-2"]
    assert stems("worker-2", "redis") == ["redis", "worker-2"]


def test_json_is_one_object_a_line_with_ts_level_logger_msg_then_fields() -> None:
    record = _record("delivered %s", args=("now",), app="job-service", attempt=2, status=503,
                     level="a field never hides the level")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert list(entry) == ["ts", "level", "logger", "msg", "app", "attempt", "status"]
    assert entry == {"ts": _expected_ts(CREATED), "level": "INFO", "logger": "jobrunner.worker",
                     "msg": "delivered now", "app": "job-service", "attempt": 2, "status": 503}
    try:
        raise ValueError("bad")
    except ValueError:
        failed = json.loads(JsonFormatter().format(_record("x", exc_info=sys.exc_info())))
    assert failed["exc"].startswith("Traceback") and failed["exc"].endswith("ValueError: bad")
    odd = json.loads(JsonFormatter().format(_record(path=Path("/x"), n=None)))
    assert odd["path"] == "/x" and odd["n"] is None


def test_timestamps_are_utc_milliseconds_never_rounded_up() -> None:
    formatter = JsonFormatter()
    for created in (CREATED, 1795932074.9999, 1795932075.0, 0.0005):
        ts = json.loads(formatter.format(_record(created=created)))["ts"]
        assert TS.match(ts) and ts == _expected_ts(created), (created, ts)
    assert json.loads(formatter.format(_record(created=1795932074.9999)))["ts"].endswith(":14.999Z")


def test_fields_are_what_extra_gave_in_order() -> None:
    logger = logging.getLogger("jobrunner.test-fields")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        logger.warning("hello %s", "you", extra={"b": 1, "a": "x"})
    finally:
        logger.removeHandler(handler)
    assert fields_of(seen[0]) == {"b": 1, "a": "x"} and list(fields_of(seen[0])) == ["b", "a"]


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_setup_replaces_its_own_handler_only_and_sets_the_level() -> None:
    root = logging.getLogger()
    # pytest's own, which must stay (not one an earlier test's setup() left: it goes)
    others = [h for h in root.handlers if not getattr(h, logs._HANDLER_MARK, False)]
    first, second = io.StringIO(), io.StringIO()
    setup("json", "warning", first)
    logging.getLogger("jobrunner.t").info("hidden")
    setup("plain", "debug", second)
    logging.getLogger("jobrunner.t").debug("shown", extra={"k": "v"})
    assert first.getvalue() == ""
    assert second.getvalue().endswith(" DEBUG jobrunner.t shown k=v\n")
    assert [h for h in root.handlers if h not in others] != []
    assert len(root.handlers) == len(others) + 1 and root.level == logging.DEBUG
    with pytest.raises(ValueError, match="log format must be one of plain, json"):
        setup("xml", "info")
    with pytest.raises(ValueError, match="log level must be one of"):
        setup("plain", "loud")


def test_settings_read_and_check_the_log_format_and_level() -> None:
    settings = Settings.from_env({"JOBRUNNER_LOG_FORMAT": "JSON", "JOBRUNNER_LOG_LEVEL": "Info"})
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert Settings.from_env(settings.to_env()) == settings
    assert (Settings.from_env({}).log_format, Settings.from_env({}).log_level) == ("plain", "")
    with pytest.raises(SettingsError, match="JOBRUNNER_LOG_FORMAT must be one of plain, json"):
        Settings.from_env({"JOBRUNNER_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="JOBRUNNER_LOG_LEVEL must be one of"):
        Settings.from_env({"JOBRUNNER_LOG_LEVEL": "loud"})


def test_a_bad_log_option_is_a_usage_error(tmp_path: Path) -> None:
    done = cli(cli_env(tmp_path, JOBRUNNER_LOG_LEVEL="loud"), "worker")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "JOBRUNNER_LOG_LEVEL" in done.stderr and "'loud' is not one of" in done.stderr
    assert "Traceback" not in done.stderr
    done = cli(cli_env(tmp_path), "api", "--log-format", "xml")
    assert done.returncode == 2 and "'xml' is not one of 'plain', 'json'" in done.stderr


# --- the worker's lines ---------------------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture, job: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "jobrunner.worker" and getattr(r, "job", None) == job]


def test_a_delivery_logs_one_info_line_with_app_job_attempt_status_lateness(
        store: Store, receiver: Receiver, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobrunner.worker")
    store.schedule(make_job("logged-once", data=1))
    with ThreadWorker(settings):
        wait_for(lambda: receiver.received("/job/logged-once"), what="the delivery")
        [record] = wait_for(lambda: _records(caplog, "logged-once"), what="its log line")
    assert (record.levelno, record.getMessage()) == (logging.INFO, "delivered")
    fields = fields_of(record)
    assert list(fields) == ["app", "job", "attempt", "status", "lateness_ms"]
    assert fields["app"] == APP and fields["attempt"] == 1 and fields["status"] == 200
    assert isinstance(fields["lateness_ms"], int) and 0 <= fields["lateness_ms"] < 10_000
    line = PlainFormatter().format(record)
    assert re.fullmatch(r"\S+Z INFO jobrunner\.worker delivered app=job-service "
                        r"job=logged-once attempt=1 status=200 lateness_ms=\d+", line), line


def test_at_warning_retries_dead_letters_and_drops_are_logged_but_not_each_delivery(
        store: Store, receiver: Receiver, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobrunner.worker")
    receiver.status = 500
    twice = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=1)
    store.schedule(make_job("fails-twice", data=1, failure_policy=twice))
    # An app whose address refuses connections, with the drop policy.
    gone = register(settings, f"http://127.0.0.1:{free_port()}", app_id="gone-app")
    try:
        gone.schedule(make_job("dropped", app_id="gone-app", data=1,
                               failure_policy=FailurePolicy(FailureKind.DROP)))
        with ThreadWorker(settings):
            wait_for(lambda: len(_records(caplog, "fails-twice")) >= 2, what="the dead letter")
            [drop] = wait_for(lambda: _records(caplog, "dropped"), what="the drop")
    finally:
        gone.close()
    retry, dead = _records(caplog, "fails-twice")
    assert (retry.levelno, retry.getMessage()) == (logging.WARNING, "retry scheduled")
    assert fields_of(retry) == {"app": APP, "job": "fails-twice", "attempt": 1, "status": 500,
                                "retry_in_ms": 0}
    assert (dead.levelno, dead.getMessage()) == (logging.WARNING, "dead-lettered")
    assert fields_of(dead) == {"app": APP, "job": "fails-twice", "attempt": 2, "status": 500,
                               "trigger": dead.__dict__["trigger"]}
    assert dead.__dict__["trigger"].startswith(f"{APP}/fails-twice@")
    assert drop.levelno == logging.WARNING and drop.getMessage().startswith("dropped")
    assert fields_of(drop)["app"] == "gone-app" and fields_of(drop)["attempt"] == 1
    assert str(fields_of(drop)["status"]).startswith("cannot connect to the app")
    assert len(receiver.received("/job/fails-twice")) == 2


def test_a_dead_letter_is_logged_once_stored_not_when_its_job_was_deleted_in_flight(
        store: Store, receiver: Receiver, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobrunner.worker")
    answered = {"/job/deleted-in-flight": threading.Event()}
    release = threading.Event()

    def answer(delivery: Delivery) -> int:
        if delivery.path == "/job/deleted-in-flight":
            answered[delivery.path].set()
            release.wait(30)
        return 500

    receiver.responder = answer
    never = FailurePolicy(FailureKind.CONSTANT, interval_ms=0, max_retries=0)
    store.schedule(make_job("deleted-in-flight", data=1, failure_policy=never))
    store.schedule(make_job("stored", data=1, failure_policy=never))
    with ThreadWorker(settings):
        wait_for(answered["/job/deleted-in-flight"].is_set, what="the held delivery")
        assert store.delete(APP, "deleted-in-flight")
        release.set()
        [gone] = wait_for(lambda: [r for r in _records(caplog, "deleted-in-flight")
                                   if "dead-lettered" in r.getMessage()], what="its line")
        [dead] = wait_for(
            lambda: [r for r in _records(caplog, "stored") if r.levelno == logging.WARNING],
            what="the stored dead letter's line")
    assert (gone.levelno, gone.getMessage().split(":")[0]) == (logging.INFO,
                                                                 "not dead-lettered")
    assert not [r for r in _records(caplog, "deleted-in-flight")
                if r.getMessage() == "dead-lettered"]
    assert dead.getMessage() == "dead-lettered" and fields_of(dead)["status"] == 500
    assert [d.name for d in dead_letters(store)] == ["stored"]


# --- jobrunner logs -------------------------------------------------------------------------


def _parts(output: str) -> list[tuple[str, str]]:
    """`part | line` of `jobrunner logs`, split."""
    lines = []
    for line in output.splitlines():
        part, sep, rest = line.partition(" | ")
        assert sep, f"no part name on: {line!r}"
        lines.append((part.strip(), rest))
    return lines


def test_logs_of_a_service_started_by_run_show_its_api_and_delivery_lines(
        tmp_path: Path) -> None:
    env = cli_env(tmp_path, JOBRUNNER_LOG_LEVEL="info")
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)
    home = tmp_path / "home"
    try:
        done = cli(env, "run", "--log-format", "json", "--app-id", "job-service",
                   "--app-port", str(free_port()), "--http-port", str(free_port()),
                   "--", sys.executable, str(script), json.dumps(SEED_BODY))
        assert done.returncode == 7, done.stdout + done.stderr
        # What `run` itself said, and its API's lines shown on its stderr: JSON lines too.
        said = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
        assert any("started the shared service" in e["msg"] for e in said), done.stderr
        assert any(e["logger"] == "jobrunner.api" for e in said), done.stderr

        shown = cli(env, "logs", "-n", "500")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        entries = []
        for part, rest in _parts(shown.stdout):
            if part == "redis":
                continue  # redis-server's own format
            entry = json.loads(rest)  # every line of every jobrunner part is a JSON object
            assert TS.match(entry["ts"]) and {"level", "logger", "msg"} <= set(entry), rest
            entries.append((part, entry))
        times = [e["ts"] for _, e in entries]
        assert times == sorted(times), "not merged in time order"

        api = [e for p, e in entries if p == "api-job-service" and e["logger"] == "jobrunner.api"]
        assert any("listening on" in e["msg"] for e in api), shown.stdout
        assert any(e["logger"] == "granian" for p, e in entries if p == "api-job-service")
        [delivery] = [(p, e) for p, e in entries if e["msg"] == "delivered"]
        part, entry = delivery
        assert re.fullmatch(r"worker-[12]", part), part
        assert {k: entry[k] for k in ("level", "logger", "app", "job", "attempt", "status")} == {
            "level": "INFO", "logger": "jobrunner.worker", "app": "job-service", "job": "R2-D2",
            "attempt": 1, "status": 200}
        assert isinstance(entry["lateness_ms"], int) and entry["lateness_ms"] >= 0
        assert any(p == "service" and "service ready" in e["msg"] for p, e in entries)

        # The files behind it, under the service's state folder.
        state = json.loads((home / "service.json").read_text())
        assert state["kind"] == "background"
        assert {p.name for p in (home / "logs").iterdir()} >= {
            "api-job-service.log", "worker-1.log", "worker-2.log", "service.log", "redis.log"}

        only = cli(env, "logs", "worker", "-n", "3")
        assert only.returncode == 0 and only.stdout.strip(), only.stdout + only.stderr
        assert {p for p, _ in _parts(only.stdout)} <= {"worker-1", "worker-2"}
        assert len(only.stdout.splitlines()) == 3
        missing = cli(env, "logs", "nothing-such")
        assert missing.returncode == 1 and "no logs of nothing-such in" in missing.stderr
    finally:
        pids = set()
        state_file = home / "service.json"
        if state_file.exists():
            state = json.loads(state_file.read_text())
            pids = {state["pid"]} | {c["pid"] for c in state["children"]}
        stopped = cli(env, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert wait_for(lambda: not any(process_alive(p) for p in pids), 30, what="all gone")


# A command run from a terminal gets Ctrl-C: SIGINT at its default, whatever the test's own
# process was started with (a background job of a shell without job control starts with
# SIGINT ignored, its children too, and Python then never raises KeyboardInterrupt).
AS_A_TERMINAL_RUNS_IT = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def test_logs_follow_shows_new_lines_merged_until_ctrl_c(tmp_path: Path) -> None:
    logs = tmp_path / "home" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-1.log").write_bytes(b"2026-11-29T05:00:00.000Z INFO jobrunner.worker a\n")
    (logs / "api-x.log").write_bytes(b"2026-11-29T05:00:01.000Z INFO gunicorn.error b\n"
                                     b"2026-11-29T05:00:02.000Z INFO gunicorn.error half")
    out = tmp_path / "out.txt"
    env = cli_env(tmp_path)
    with out.open("wb") as sink:
        proc = subprocess.Popen([*AS_A_TERMINAL_RUNS_IT, *CLI[1:], "logs", "-f", "-n", "2"],
                                env=env, stdout=sink,
                                stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    try:
        wait_for(lambda: out.read_text().count("\n") >= 2, 30, what="the last lines")
        # Written in time order, so that the order shown is the same however the
        # follower's polls fall between the writes.
        with (logs / "worker-1.log").open("ab") as f:
            f.write(b'{"ts":"2026-11-29T05:00:01.500Z","level":"INFO","msg":"c"}\n')
        with (logs / "api-x.log").open("ab") as f:
            f.write(b" line\n  a traceback line, no time of its own\n")
        (logs / "service.log").write_bytes(b"2026-11-29T05:00:03.000Z INFO jobrunner d\n")
        wait_for(lambda: out.read_text().count("\n") >= 6, 30, what="the new lines")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert out.read_text().splitlines() == [
        "worker-1 | 2026-11-29T05:00:00.000Z INFO jobrunner.worker a",
        "api-x    | 2026-11-29T05:00:01.000Z INFO gunicorn.error b",
        'worker-1 | {"ts":"2026-11-29T05:00:01.500Z","level":"INFO","msg":"c"}',
        "api-x    | 2026-11-29T05:00:02.000Z INFO gunicorn.error half line",
        "api-x    |   a traceback line, no time of its own",
        "service  | 2026-11-29T05:00:03.000Z INFO jobrunner d",
    ]
    empty = cli(cli_env(tmp_path / "elsewhere"), "logs")
    assert empty.returncode == 1 and "no logs in" in empty.stderr


def test_last_lines_reads_the_end_and_leaves_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    lines = [f"line {i} ".encode() + b"x" * (i % 300) for i in range(5000)]
    path.write_bytes(b"\n".join(lines) + b"\npartial")
    tail, offset = last_lines(path, 1234)
    assert tail == lines[-1234:]
    assert offset == path.stat().st_size - len(b"partial")
    assert last_lines(path, 10**6)[0] == lines
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert last_lines(empty, 5) == ([], 0)


def test_line_time_reads_our_formats_and_redis_servers_local_time() -> None:
    assert line_time(b"2026-11-29T05:57:09.123Z INFO x y") == "2026-11-29T05:57:09.123Z"
    assert line_time(b'{"ts":"2026-11-29T05:57:09.123Z","level":"INFO"}') == (
        "2026-11-29T05:57:09.123Z")
    local = datetime(2026, 11, 29, 5, 57, 9, 123000).astimezone(UTC)
    expected = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}Z"
    assert line_time(b"4242:M 29 Nov 2026 05:57:09.123 * Ready to accept connections") == expected
    assert line_time(b"Traceback (most recent call last):") is None
    assert line_time(b"") is None
