"""The code style gates run as part of the test command: ruff and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    result = _run(str(BIN / "ruff"), "check", "app", "workers", "benchmarks", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_are_kept() -> None:
    """The dependency rule of app/__init__.py (pyproject.toml's import-linter contracts)."""
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# Import name of each declared distribution, where it differs from the distribution's name.
_IMPORT_NAMES = {"protobuf": "google.protobuf", "prometheus-client": "prometheus_client",
                 "rq-scheduler": "rq_scheduler", "openapi-spec-validator": "openapi_spec_validator",
                 "dapr-ext-grpc": "dapr.ext.grpc", "grpcio": "grpc", "python-json-logger":
                 "pythonjsonlogger", "grpcio-status": "grpc_status",
                 "googleapis-common-protos": "google.rpc", "pytest-xdist": "xdist"}  # fmt: skip
# Declared for what they run, not for an import: the gates above, the typing stubs mypy
# reads, pytest plugins, and the Procfile's process manager.
_TOOLS = {"ruff", "mypy", "import-linter", "types-protobuf", "pytest-timeout", "honcho"}


def _declared() -> dict[str, list[str]]:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    name = re.compile(r"^[A-Za-z0-9_.-]+")
    return {group: [name.match(spec)[0].lower() for spec in specs]  # type: ignore[index]
            for group, specs in groups.items()}  # fmt: skip


def _imported_in(folders: list[str], module: str) -> bool:
    import re

    pattern = re.compile(
        rf"^\s*(import|from) {re.escape(module)}\b|find_spec\(\"{re.escape(module)}\"\)", re.M
    )
    return any(
        pattern.search(path.read_text(errors="replace"))
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
    )


def test_every_declared_dependency_is_used() -> None:
    """The dependency list is honest: nothing is declared that its part does not import."""
    where = {"dependencies": ["app", "workers"], "test": ["tests"], "bench": ["benchmarks"]}
    everywhere = ["app", "workers", "tests", "benchmarks"]
    unused = [
        f"{group}: {dist}"
        for group, dists in _declared().items()
        for dist in dists
        if dist not in _TOOLS
        and not _imported_in(
            where.get(group, everywhere), _IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        )
    ]
    assert not unused, f"declared but never imported: {unused}"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    """Each environment variable a setting or a CLI flag reads has a row in the README."""
    import re

    from app.settings import Settings

    names = set(Settings().to_env())
    for path in (ROOT / "app" / "cli").rglob("*.py"):
        names |= set(re.findall(r'envvar="([A-Z_]+)"', path.read_text()))
    table = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    rows = set(re.findall(r"^\| `([A-Z_]+)`", table, re.M))
    rows |= {name for row in re.findall(r"^\| (`[A-Z_]+`(?: / `[A-Z_]+`)+) \|", table, re.M)
             for name in re.findall(r"`([A-Z_]+)`", row)}  # fmt: skip
    assert not sorted(names - rows), f"settings missing from the README: {sorted(names - rows)}"
