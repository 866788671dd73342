"""Adding a hardware family is adding a target package and a profile: the example
target (tests/example_target/, loaded through EDGE_LLM_TARGETS) goes through the real
commands - validate, plan, recipe, the schema and its docs, a signed release and a
full build - with nothing in the builder naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.data import data_dir

TESTS = Path(__file__).resolve().parent
PROFILE = """\
target: example-board
description: an example board
device:
  arch: amd64
  cpu_cores: 2
  ram: 4GiB
  storage: {kind: emmc, size: 16GiB}
os:
  base: debian
  reserved_memory: 256MiB
engine:
  kind: llama.cpp
model:
  id: qwen2.5-0.5b-instruct
  quant: Q4_K_M
runtime:
  context_length: 1024
  parallel: 1
example:
  archive_name: board.tar.zst
"""


@pytest.fixture
def board(tmp_path: Path):
    """`builder` with the example target loaded, in a project holding its profile."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "example.yaml").write_text(PROFILE)
    env = {**os.environ, "EDGE_LLM_TARGETS": "example_target", "COLUMNS": "120",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("builder")

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=timeout, stdin=subprocess.DEVNULL)

    run.dir = tmp_path  # type: ignore[attr-defined]
    return run


def test_nothing_in_the_builder_names_the_example_target() -> None:
    pkg = TESTS.parent / "builder"
    for f in [*pkg.rglob("*.py"), *data_dir("roles").rglob("*.y*ml")]:
        assert "example-board" not in f.read_text(errors="replace"), f


def test_its_profile_validates_plans_and_renders_a_recipe(board) -> None:
    r = board("profiles", "validate", "profiles/example.yaml")
    assert r.returncode == 0 and "example-board" in r.stdout, r.stderr
    r = board("profiles", "list", "--json")
    assert {"name": "example", "target": "example-board"}.items() <= next(
        row for row in json.loads(r.stdout) if row["name"] == "example").items()
    assert board("plan", "--profile", "example").returncode == 0
    r = board("engine", "recipe", "--profile", "example")
    assert r.returncode == 0 and "-DGGML_BACKEND_DL=ON" in r.stdout


def test_its_section_is_in_the_schema_and_checked(board) -> None:
    r = board("profiles", "schema", "--markdown")
    assert "## `target: example-board`" in r.stdout and "`example.archive_name`" in r.stdout
    bad = PROFILE.replace("archive_name: board.tar.zst", "archive_nam: x")
    (board.dir / "bad.yaml").write_text(bad)
    r = board("profiles", "validate", "bad.yaml")
    assert r.returncode == 2
    assert r.stderr.startswith("error: bad.yaml:20:3: example.archive_nam: unknown field; did "
                               "you mean 'archive_name'?"), r.stderr
    (board.dir / "bad.yaml").write_text(PROFILE.replace("kind: emmc", "kind: sd"))
    r = board("profiles", "validate", "bad.yaml")
    assert "device.storage.kind: 'sd': example-board boots from emmc" in r.stderr


@pytest.mark.slow
def test_it_makes_a_signed_release_and_builds_what_it_delivers(board, tiny_q4: Path,
                                                              x86_engine) -> None:
    r = board("release", "--profile", "example", "--model-file", str(tiny_q4), "--json",
              timeout=600)
    assert r.returncode == 0, r.stderr
    rel = json.loads(r.stdout)
    manifest = json.loads((Path(rel["dir"]) / "tree/release.json").read_text())
    assert manifest["target"] == "example-board"
    r = board("build", "--profile", "example", "--model-file", str(tiny_q4), timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    built = json.loads((board.dir / "out/example/manifest.json").read_text())
    assert built["delivery"]["kind"] == "rootfs-archive"
    archive = board.dir / "out/example/board.tar.zst"
    names = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert "./opt/edge-llm/current" in names
    assert f"./opt/edge-llm/releases/{built['release_id']}/release.json" in names
