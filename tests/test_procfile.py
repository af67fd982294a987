"""The Procfile and .env.example, as a user runs them: `cp .env.example .env && honcho start`.

What must hold: nothing the Procfile starts writes into a Redis it did not mean to; the API
listens on 127.0.0.1 at .env's PORT; it runs from a project folder holding its own `app/`
and `workers/` packages without importing them.

How "no key lands in the foreign Redis" is shown. The Redis a careless setup would write
into is the one on REDIS_URL's built-in default port, 6379: that is the shared machine
Redis here, which tests must never touch, and no test-only switch may move that default.
So the proof is split where each part can be shown without 6379:
- the unit tests below: with only REDIS_PORT given, the URL is REDIS_PORT's, never the
  default; a REDIS_URL on this machine at another port is refused;
- `test_honcho_start_...`: a foreign redis-server already listens (standing for the
  machine's Redis) and .env is .env.example with free ports. The job goes through the API
  and is delivered; the app registration is found in the Procfile's own Redis (so the API
  wrote there, and the worker, which delivered that job, read it there), and the foreign
  Redis has no key and accepted no connection but the test's own;
- `test_a_redis_url_that_contradicts_redis_port_...`: the careless setup made literal. .env
  keeps REDIS_PORT (the Procfile's Redis) and also has a REDIS_URL that points at the
  foreign Redis, as one left over from another project would. Web and worker refuse to
  start, with the message, and nothing even connects to the foreign Redis;
- `test_without_redis_url_or_redis_port_...`: with neither, every line stops before
  jobrunner starts, instead of falling back to 6379.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from app.processes.procs import PROJECT_ROOT
from app.processes.redis_server import find_redis_server
from app.processes.serve import DEFAULT_PROCESSES, DEFAULT_THREADS, GRACEFUL_TIMEOUT_S
from app.settings import Settings, SettingsError
from app.store.keys import Keys
from tests.support.receiver import Delivery, Receiver
from tests.support.redis_proc import free_port
from tests.support.waiting import wait_for

PROCFILE = PROJECT_ROOT / "Procfile"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
# `-P`: honcho itself must not import from the project folder either.
HONCHO = [sys.executable, "-P", "-m", "honcho"]
JOBRUNNER = Path(sys.executable).parent / "jobrunner"
BOOT_TIMEOUT_S = 90.0  # Redis, then gunicorn and its worker, on a busy 2-core machine
DELIVERY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0  # honcho itself sends SIGKILL 5 s after SIGTERM

USER_PACKAGE = """\
import pathlib
pathlib.Path(__file__).parents[1].joinpath("IMPORTED").write_text(__name__)
raise RuntimeError("the project's own {name} package was imported by jobrunner")
"""


# --- Settings: REDIS_URL and REDIS_PORT ------------------------------------------------------


def test_settings_redis_url_follows_redis_port_when_only_the_port_is_given() -> None:
    assert Settings.from_env({"REDIS_PORT": "6381"}).redis_url == "redis://127.0.0.1:6381/0"
    assert Settings.from_env({"REDIS_PORT": " 6381 "}).redis_url == "redis://127.0.0.1:6381/0"


def test_settings_without_redis_port_keep_redis_url_or_the_default() -> None:
    assert Settings.from_env({}).redis_url == "redis://127.0.0.1:6379/0"
    assert Settings.from_env({"REDIS_PORT": ""}).redis_url == "redis://127.0.0.1:6379/0"
    url = "redis://:secret@127.0.0.1:7000/2"
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6381/0",
    "redis://localhost:6381",
    "redis://:pw@127.0.0.1:6381/3",
    "rediss://[::1]:6381/0",
    # another machine: REDIS_PORT is the local development Redis, not this one
    "redis://redis.example.com:6379/0",
    "rediss://user:pw@10.1.2.3:25061/0",
    # a socket has no port to disagree with
    "unix:///tmp/redis.sock?db=0",
])  # fmt: skip
def test_settings_keep_a_redis_url_that_agrees_with_redis_port(url: str) -> None:
    assert Settings.from_env({"REDIS_URL": url, "REDIS_PORT": "6381"}).redis_url == url


@pytest.mark.parametrize("url,url_port", [
    ("redis://127.0.0.1:6379/0", 6379),
    ("redis://localhost/0", 6379),  # no port: Redis' default
    ("redis://:secret@127.0.0.1:7000/0", 7000),
    ("redis://[::1]:7000", 7000),
    ("redis://127.0.0.2:6379", 6379),
    ("redis://0.0.0.0:6379", 6379),
])  # fmt: skip
def test_settings_refuse_a_local_redis_url_on_another_port_than_redis_port(
    url: str, url_port: int
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"REDIS_URL": url, "REDIS_PORT": "6381"})
    message = str(raised.value)
    assert f"REDIS_URL points at port {url_port}" in message
    assert "REDIS_PORT, the port of the Procfile's Redis, is 6381" in message
    assert "Unset REDIS_URL" in message and "unset REDIS_PORT" in message
    assert "secret" not in message


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "65536", "6381.5"])
def test_settings_refuse_a_redis_port_that_is_no_port(raw: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_PORT"):
        Settings.from_env({"REDIS_PORT": raw})


def test_settings_refuse_a_redis_url_with_a_bad_port_next_to_redis_port() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL has a port"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:99999/0", "REDIS_PORT": "6381"})


def test_settings_to_env_overrides_an_inherited_redis_port() -> None:
    """A child of `jobrunner up` (embedded Redis on its own port) started from a shell with
    REDIS_PORT exported gets the parent's URL, not a contradiction."""
    settings = Settings(redis_url="redis://127.0.0.1:7000/0")
    child = Settings.from_env({"REDIS_PORT": "6381", **settings.to_env()})
    assert child == settings


# --- .env.example and the Procfile as files --------------------------------------------------


def _env_lines(text: str) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def test_env_example_has_the_readmes_values_and_a_redis_port_that_is_not_6379() -> None:
    values = _env_lines(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert values["PORT"] == "6280"
    assert values["JOBRUNNER_HTTP_HOST"] == "127.0.0.1"
    assert values["APP_ID"] == "job-service"
    assert values["APP_PORT"] == "6200"
    assert 1 <= int(values["REDIS_PORT"]) <= 65535 and values["REDIS_PORT"] != "6379"
    assert "REDIS_URL" not in values  # it would override REDIS_PORT's Redis
    assert Settings.from_env(values).redis_url == f"redis://127.0.0.1:{values['REDIS_PORT']}/0"


def test_honcho_gives_the_web_line_the_port_of_env_example() -> None:
    """honcho takes .env's PORT as its base port: the first line gets it, the next +100."""
    from honcho.environ import expand_processes, parse, parse_procfile

    env = parse(ENV_EXAMPLE.read_text(encoding="utf-8"))
    processes = parse_procfile(PROCFILE.read_text(encoding="utf-8")).processes
    assert list(processes) == ["web", "worker", "redis"]
    ports = {p.name: p.env["PORT"] for p in expand_processes(processes, env=env, port=5000)}
    assert ports["web.1"] == "6280"
    assert "jobrunner api" in processes["web"] and "jobrunner worker" in processes["worker"]
    assert "gunicorn" not in processes["web"]  # gunicorn's CLI puts its folder on sys.path


def test_the_benchmarks_serve_the_procfiles_web_line_and_baselines_with_its_options() -> None:
    from benchmarks.procfile import web_command, web_line

    web = PROCFILE.read_text(encoding="utf-8").split("\nweb:", 1)[1].split("\n", 1)[0].strip()
    assert web_line() == web
    shell = web_command()[2]
    assert shell.endswith(web) and "JOBRUNNER_HTTP_HOST=127.0.0.1" in shell
    baseline = web_command("benchmarks.rq_api:create_app()")[2]
    assert '"benchmarks.rq_api:create_app()"' in baseline
    assert "--bind 127.0.0.1:${PORT:-6280}" in baseline
    assert f"--workers ${{JOBRUNNER_API_PROCESSES:-${{WEB_CONCURRENCY:-{DEFAULT_PROCESSES}}}}}" \
        in baseline
    assert f"--threads ${{JOBRUNNER_API_THREADS:-{DEFAULT_THREADS}}}" in baseline
    assert f"--graceful-timeout {GRACEFUL_TIMEOUT_S}" in baseline
    assert "--worker-class gthread" in baseline


# --- honcho start, for real ------------------------------------------------------------------


def http(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def answers(url: str) -> bool:
    try:
        return http("GET", url)[0] == 200
    except OSError:
        return False


class RedisServer:
    """A redis-server of the test's own (find_redis_server's binary) on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server died"
            return self.ping()

        wait_for(up, 10.0, what=f"redis-server on {self.port}")
        return self

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def connections_so_far(self) -> int:
        """Connections it ever accepted, this one (a new one) included."""
        client = self.client()
        try:
            return int(client.info("stats")["total_connections_received"])
        finally:
            client.close()

    def assert_untouched_since(self, connections: int) -> None:
        """No key, and no connection since `connections_so_far()` gave `connections` but
        this check's own: no process of the Procfile even connected."""
        client = self.client()
        try:
            assert client.dbsize() == 0
            assert int(client.info("stats")["total_connections_received"]) == connections + 1
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def foreign_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis that is already on the machine and belongs to someone else."""
    server = RedisServer(tmp_path / "foreign").start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def user_project(tmp_path: Path, env: Mapping[str, str | None]) -> Path:
    """A project folder with the Procfile, a .env made from .env.example with `env` changes
    (None drops a line), and `app/` and `workers/` packages that must never be imported."""
    project = tmp_path / "myproj"
    for name in ("app", "workers"):
        (project / name).mkdir(parents=True)
        for module in ("__init__.py", "__main__.py"):
            (project / name / module).write_text(USER_PACKAGE.format(name=name))
    shutil.copy(PROCFILE, project / "Procfile")
    lines, todo = [], dict(env)
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        key = line.partition("=")[0].strip()
        if line.lstrip().startswith("#") or key not in todo:
            lines.append(line)
        elif (value := todo.pop(key)) is not None:
            lines.append(f"{key}={value}")
    lines += [f"{k}={v}" for k, v in todo.items() if v is not None]
    (project / ".env").write_text("\n".join(lines) + "\n")
    return project


def honcho_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: none of jobrunner's settings, no PYTHONPATH; find_redis_server()'s
    `redis-server` (alone in a folder of its own) and the venv's `jobrunner` on the PATH."""
    assert JOBRUNNER.exists(), f"no `jobrunner` script next to {sys.executable}"
    redis_bin = tmp_path / "redis-bin"
    redis_bin.mkdir()
    (redis_bin / "redis-server").symlink_to(find_redis_server())
    dropped = ("JOBRUNNER_", "REDIS_", "APP_", "DAPR_")
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(dropped) and k not in ("PORT", "WEB_CONCURRENCY", "PYTHONPATH")
    }  # fmt: skip
    path = [str(redis_bin), str(JOBRUNNER.parent), env.get("PATH", "")]
    env.update(
        PATH=os.pathsep.join(path),
        JOBRUNNER_HOME=str(tmp_path / "home"),  # `jobrunner` must not touch ~/.jobrunner
        JOBRUNNER_API_PROCESSES="1",  # boots faster on a shared machine; the test needs no more
        # A free port for any gRPC API the web line opens: never a fixed one other runs share.
        DAPR_GRPC_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    return env


def live_in_groups(pgids: set[int]) -> list[int]:
    """Processes (not zombies) in these process groups, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            pids.append(int(entry.name))
    return pids


def listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses with a TCP socket listening on `port`, from /proc/net."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for row in Path("/proc/net", name).read_text().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                # Each 32-bit word in host byte order.
                raw = b"".join(
                    int(address[i:i + 8], 16).to_bytes(4, sys.byteorder)
                    for i in range(0, len(address), 8)
                )
                found.add(ipaddress.ip_address(raw))
    return found


class Honcho:
    """`honcho start -f Procfile -e .env` in `project`, in its own process group."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project = project
        self.log_path = project.parent / "honcho.log"
        self.gone = False  # every process of it has exited: its group ids may be reused
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*HONCHO, "start", "-f", "Procfile", "-e", ".env", "--no-colour"],
                cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def groups(self) -> set[int]:
        """honcho's own group and its lines' (each line runs in a session of its own)."""
        started = re.findall(r"started \(pid=(\d+)\)", self.log())
        return {self.proc.pid, *map(int, started)}

    def running(self) -> bool:
        code = self.proc.poll()
        assert code is None, f"honcho exited with {code}:\n{self.log()}"
        return True

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"honcho still runs after {timeout}s:\n{self.log()}") from None

    def wait_all_gone(self, timeout: float) -> None:
        groups = self.groups()
        wait_for(lambda: not live_in_groups(groups), timeout,
                 what=f"every process of honcho's lines to exit (groups {sorted(groups)})")
        self.gone = True

    def kill_all(self) -> None:
        """Cleanup after a failure: nothing of this test outlives it."""
        if self.gone:
            return
        for group in self.groups():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


@pytest.mark.timeout(300)
def test_honcho_start_from_a_users_project_delivers_and_leaves_a_foreign_redis_alone(
    tmp_path: Path, foreign_redis: RedisServer, receiver: Receiver
) -> None:
    api_port, redis_port = free_port(), free_port()
    project = user_project(tmp_path, {
        "PORT": str(api_port), "REDIS_PORT": str(redis_port), "APP_PORT": str(receiver.port),
    })  # fmt: skip
    foreign_connections = foreign_redis.connections_so_far()
    honcho = Honcho(project, honcho_env(tmp_path))
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(lambda: honcho.running() and answers(f"{api}/healthz"), BOOT_TIMEOUT_S,
                 interval=0.1, what=f"the API of `honcho start` on {api_port}")
        assert listening_addresses(api_port) == {ipaddress.ip_address("127.0.0.1")}

        data = {"from": "the Procfile"}
        status, body = http("POST", f"{api}/v1.0-alpha1/jobs/procfile-job",
                            {"data": data, "dueTime": "0s"})
        assert status == 204, body
        def delivered() -> list[Delivery]:
            honcho.running()
            return receiver.received("/job/procfile-job")

        [delivery] = wait_for(delivered, DELIVERY_TIMEOUT_S, what="the job's delivery")
        assert json.loads(delivery.body) == data

        own = redis.Redis(port=redis_port, socket_timeout=5)
        try:
            assert own.hexists(Keys().apps, "job-service")  # the API registered the app here
            assert set(own.keys("*")) == set(own.keys("jr:*"))  # and nothing but jobrunner
        finally:
            own.close()
        foreign_redis.assert_untouched_since(foreign_connections)
        assert not (project / "IMPORTED").exists(), (project / "IMPORTED").read_text()

        honcho.proc.send_signal(signal.SIGTERM)
        honcho.wait_exit(STOP_TIMEOUT_S)
        honcho.wait_all_gone(STOP_TIMEOUT_S)
        log = honcho.log()
        for line in ("web.1", "worker.1", "redis.1"):
            assert f"{line} stopped" in log, log
        assert "Traceback" not in log, log
    finally:
        honcho.kill_all()


@pytest.mark.timeout(180)
def test_a_redis_url_that_contradicts_redis_port_stops_web_and_worker_before_any_write(
    tmp_path: Path, foreign_redis: RedisServer
) -> None:
    redis_port = free_port()
    project = user_project(tmp_path, {
        "PORT": str(free_port()), "REDIS_PORT": str(redis_port),
        "REDIS_URL": f"redis://127.0.0.1:{foreign_redis.port}/0",
    })  # fmt: skip
    foreign_connections = foreign_redis.connections_so_far()
    honcho = Honcho(project, honcho_env(tmp_path))
    try:
        code = honcho.wait_exit(BOOT_TIMEOUT_S)
        honcho.wait_all_gone(STOP_TIMEOUT_S)
        log = honcho.log()
        assert code != 0, log
        assert (
            f"REDIS_URL points at port {foreign_redis.port} of 127.0.0.1 but REDIS_PORT, "
            f"the port of the Procfile's Redis, is {redis_port}"
        ) in log, log
        assert "web.1 stopped" in log and "worker.1 stopped" in log, log
        foreign_redis.assert_untouched_since(foreign_connections)
        assert not (project / "IMPORTED").exists()
    finally:
        honcho.kill_all()


@pytest.mark.timeout(120)
def test_without_redis_url_or_redis_port_every_line_stops_before_jobrunner_starts(
    tmp_path: Path,
) -> None:
    project = user_project(tmp_path, {"PORT": str(free_port()), "REDIS_PORT": None})
    honcho = Honcho(project, honcho_env(tmp_path))
    try:
        code = honcho.wait_exit(BOOT_TIMEOUT_S)
        honcho.wait_all_gone(STOP_TIMEOUT_S)
        log = honcho.log()
        assert code != 0, log
        assert "set REDIS_URL, or REDIS_PORT" in log or "set REDIS_PORT" in log, log
    finally:
        honcho.kill_all()
