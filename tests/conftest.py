"""Shared test helpers. Real-hardware tests carry @pytest.mark.hil and run with --hil."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.cli import main

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hil", action="store_true",
                     help="run tests that need real hardware (Orin, Pi 5)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hil"):
        return
    skip = pytest.mark.skip(reason="needs real hardware; run with --hil in the lab")
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `builder ARGS` in-process; returns exit code and captured output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_builder():
    """Run the installed `builder` console script as a user would."""

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("builder")
        env = {**os.environ, "COLUMNS": "100"}
        return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=120)

    return run


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
