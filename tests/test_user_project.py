"""jobrunner started from a user's project folder that has its own `app/` and `workers/`.

That is the usual Flask and Heroku layout. Child processes must never import from the
folder they are started in (`python -P`), with an editable install and with a regular
(wheel) install: `up` and `run` each deliver a job, and the user's packages are never
imported.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.processes.procs import PROJECT_ROOT
from tests.support.receiver import Receiver
from tests.support.redis_proc import free_port
from tests.support.waiting import wait_for
from tests.test_cli import APP_SCRIPT, SEED_BODY, SEED_DELIVERY, cli_env, http

USER_PACKAGE = """\
import pathlib
pathlib.Path(__file__).parents[1].joinpath("IMPORTED").write_text(__name__)
raise RuntimeError("the user's own {name} package was imported by jobrunner")
"""


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project folder whose `app` and `workers` would shadow ours if imported from cwd."""
    project = tmp_path / "myproj"
    for name in ("app", "workers"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(USER_PACKAGE.format(name=name))
        (project / name / "__main__.py").write_text(USER_PACKAGE.format(name=name))
    (project / "app" / "cli.py").write_text(USER_PACKAGE.format(name="app.cli"))
    return project


@pytest.fixture(scope="module")
def wheel_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with jobrunner installed from a wheel (not editable); its dependencies come
    from the test's own environment through a .pth line."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    for name in ("app", "workers"):
        shutil.copytree(
            PROJECT_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(dist), "."],
        cwd=source, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = dist.glob("jobrunner-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(venv)],  # type: ignore[attr-defined]
        check=True, timeout=60,
    )  # fmt: skip
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    Path(site, "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    assert not Path(site, "app", "store", "lua", "claim.lua").is_symlink()
    assert Path(site, "app", "store", "lua", "claim.lua").is_file(), "Lua scripts not in the wheel"
    assert Path(site, "app", "api", "openapi.json").is_file(), "OpenAPI document not in the wheel"
    return venv / "bin"


@pytest.fixture(params=["editable", "wheel"])
def jobrunner_bin(request: pytest.FixtureRequest) -> Path:
    if request.param == "wheel":
        wheel: Path = request.getfixturevalue("wheel_bin")
        return wheel / "jobrunner"
    exe = Path(sys.executable).parent / "jobrunner"
    if not exe.exists():
        pytest.skip("jobrunner is not installed in this environment (pip install -e .)")
    return exe


def project_env(tmp_path: Path) -> dict[str, str]:
    env = cli_env(tmp_path)
    env.pop("PYTHONPATH", None)  # only what the install provides
    return env


@pytest.fixture
def stop_service(tmp_path: Path) -> Iterator[list[Path]]:
    """`jobrunner stop` at the end, with whichever binary started the shared service."""
    used: list[Path] = []
    yield used
    for exe in used:
        subprocess.run([str(exe), "stop"], env=project_env(tmp_path), timeout=60,
                       capture_output=True)  # fmt: skip


def test_up_from_a_project_with_its_own_app_package(
    tmp_path: Path, user_project: Path, jobrunner_bin: Path, receiver: Receiver
) -> None:
    http_port = free_port()
    log = tmp_path / "up.log"
    argv = [str(jobrunner_bin), "up", "--app-port", str(receiver.port), "--grpc-port",
            str(free_port()), "--http-port",
            str(http_port), "--workers", "1"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=project_env(tmp_path), cwd=user_project, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        home = tmp_path / "home"
        wait_for(lambda: (home / "service.json").exists() or proc.poll() is not None,
                 timeout=60, what="jobrunner up to be ready")  # fmt: skip
        assert proc.poll() is None, log.read_text()
        url = f"http://127.0.0.1:{http_port}/v1.0-alpha1/jobs/R2-D2"
        assert http("POST", url, {**SEED_BODY, "dueTime": "0s"})[0] == 204
        [delivery] = wait_for(lambda: receiver.received("/job/R2-D2"), timeout=20,
                              what="the job to be delivered")  # fmt: skip
        assert json.loads(delivery.body) == SEED_DELIVERY
        assert http("GET", f"http://127.0.0.1:{http_port}/openapi.json")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(45)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output
    assert not (user_project / "IMPORTED").exists(), output
    assert (user_project / ".jobrunner").is_dir()  # `up` keeps its data in the folder it runs in


def test_run_from_a_project_with_its_own_app_package(
    tmp_path: Path, user_project: Path, jobrunner_bin: Path, stop_service: list[Path]
) -> None:
    script = user_project / "service.py"
    script.write_text(APP_SCRIPT)
    stop_service.append(jobrunner_bin)
    app_port, http_port = free_port(), free_port()
    done = subprocess.run(
        [str(jobrunner_bin), "run", "--app-id", "job-service", "--app-port", str(app_port),
         "--dapr-http-port", str(http_port), "--", sys.executable, str(script),
         json.dumps(SEED_BODY)],
        env=project_env(tmp_path), cwd=user_project, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 7, output  # 7: the app received its job
    assert "== APP == Received job /job/R2-D2" in done.stdout, output
    assert "Traceback" not in output, output
    assert not (user_project / "IMPORTED").exists(), output
