"""The repository keeps its promises: lint clean, docs generated from the schema, README
commands that exist, and CI calling the README's test command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.schema_doc import markdown_reference

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; scripts/setup installs the test extras")
    r = subprocess.run([ruff, "check", "builder", "tests", "benchmarks"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_profile_reference_is_generated_from_the_schema() -> None:
    doc = (REPO / "docs/profile-reference.md").read_text()
    assert doc == markdown_reference(), (
        "docs/profile-reference.md is stale: run "
        "`builder profiles schema --markdown > docs/profile-reference.md`")


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick, re.S)


def test_readme_quick_start_is_exactly_two_commands() -> None:
    cmds = _readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds), cmds
    for c in cmds:
        script = c.split()[0]
        assert (REPO / script).is_file(), f"README names {script}, which does not exist"


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = _readme_commands()[1]
    ci = (REPO / ".ci/run").read_text()
    assert test_cmd in ci
