"""Adding a hardware family is adding a target package and a profile: the example
target (tests/example_target/, loaded through EDGE_LLM_TARGETS) goes through the real
commands - validate, plan, recipe (for two architectures), the schema and its docs, its
vendor input as a build option, its flash method in a lab inventory, its VM machine, a
signed release and a full build with its own role, flashed its own way - with nothing in
the builder naming it."""

from __future__ import annotations

import hashlib
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
    for f in [*pkg.rglob("*.py"), *data_dir("roles").rglob("*.y*ml"),
              *data_dir("playbooks").rglob("*.y*ml")]:
        text = f.read_text(errors="replace")
        for word in ("example-board", "example_board", "board-firmware"):
            assert word not in text, (f, word)


def test_its_profile_validates_plans_and_renders_a_recipe(board) -> None:
    r = board("profiles", "validate", "profiles/example.yaml")
    assert r.returncode == 0 and "example-board" in r.stdout, r.stderr
    r = board("profiles", "list", "--json")
    assert {"name": "example", "target": "example-board"}.items() <= next(
        row for row in json.loads(r.stdout) if row["name"] == "example").items()
    assert board("plan", "--profile", "example").returncode == 0
    r = board("engine", "recipe", "--profile", "example")
    assert r.returncode == 0 and "-DGGML_BACKEND_DL=ON" in r.stdout


def test_its_second_architecture_plans_and_cross_compiles(board) -> None:
    (board.dir / "profiles" / "example-arm.yaml").write_text(
        PROFILE.replace("arch: amd64", "arch: arm64"))
    r = board("plan", "--profile", "example-arm", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["input"]["repack_types"] == ["Q4_0", "Q4_K", "Q5_K", "Q6_K",
                                                             "IQ4_NL"]  # dotprod kernels
    r = board("engine", "recipe", "--profile", "example-arm")
    assert r.returncode == 0, r.stderr
    assert "aarch64-linux-gnu-g++" in r.stdout
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod" in r.stdout
    (board.dir / "bad.yaml").write_text(PROFILE.replace("arch: amd64", "arch: riscv64"))
    r = board("profiles", "validate", "bad.yaml")
    assert "device.arch: riscv64 is not a example-board architecture; use amd64 or arm64" \
        in r.stderr, r.stderr


def test_its_vendor_input_is_a_build_option_only_it_takes(board) -> None:
    r = board("build", "--help")
    assert "--board-firmware" in r.stdout and "example-board: the board vendor's" in r.stdout
    (board.dir / "fw.bin").write_bytes(b"firmware")
    r = board("build", "--profile", "x86-gateway", "--board-firmware", "fw.bin")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: --board-firmware: a x86-gateway build does not take "
                               "it"), r.stderr


def test_its_flash_method_is_one_a_lab_takes(board) -> None:
    (board.dir / "lab.yml").write_text(
        "devices:\n  board-1:\n    profile: example\n    flash: share\n"
        "    ansible_host: 192.0.2.5\n")
    r = board("lab", "run", "--inventory", "lab.yml", "--output", "run")
    assert r.returncode == 2 and r.stderr.startswith(
        "error: lab.yml:2:3: devices.board-1: flash: share needs writer: (share is the "
        "rootfs archive copied to the board vendor's flashing share (writer: its "
        "directory))"), r.stderr
    with (board.dir / "lab.yml").open("a") as f:
        f.write("    writer: /srv/flash-share\n    confirm: true\n")
    r = board("lab", "run", "--inventory", "lab.yml", "--output", "run")
    assert "no build of example" in r.stderr, r.stderr  # the inventory itself passed


def test_its_vm_machine_is_the_one_a_vm_of_its_build_gets(tmp_path: Path) -> None:
    """`builder vm` boots a build on the machine its target names (the QEMU command line
    from that machine); no VM is started here."""
    sys.path.insert(0, str(TESTS))
    try:
        from example_target import TARGET
    finally:
        sys.path.remove(str(TESTS))
    from builder import vm

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"delivery": {"kind": "rootfs-archive", "files": {"vm-image": "board.img"}}}))
    spec = vm.for_build(tmp_path, TARGET.vm_machine, ssh_port=2222, state_dir=tmp_path / "s")
    cmd = vm.qemu_command(spec, "tcg")
    assert cmd[0] == "qemu-system-x86_64" and cmd[cmd.index("-machine") + 1] == "q35"
    assert "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd" in cmd
    assert spec.image == tmp_path / "board.img"


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
    firmware = board.dir / "vendor-fw.bin"
    firmware.write_bytes(os.urandom(4096))
    r = board("build", "--profile", "example", "--model-file", str(tiny_q4),
              "--board-firmware", str(firmware), timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    built = json.loads((board.dir / "out/example/manifest.json").read_text())
    assert built["delivery"]["kind"] == "rootfs-archive"
    archive = board.dir / "out/example/board.tar.zst"
    names = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert "./opt/edge-llm/current" in names
    assert f"./opt/edge-llm/releases/{built['release_id']}/release.json" in names
    # the vendor's firmware, and what the board's own role wrote
    def member(name: str) -> bytes:
        return subprocess.run(["tar", "--zstd", "-xOf", str(archive), name],
                              capture_output=True, check=True).stdout
    assert member("./boot/firmware/board.bin") == firmware.read_bytes()
    assert built["delivery"]["firmware_sha256"] == hashlib.sha256(
        firmware.read_bytes()).hexdigest()
    assert member("./etc/example-board.conf") == b"archive=board.tar.zst\n"
    # flashed its own way: into the vendor's flashing share
    share = board.dir / "share"
    share.mkdir()
    r = board("flash", "--profile", "example", "--device", str(share), "--dry-run")
    assert r.returncode == 0 and "would copy" in r.stdout and not list(share.iterdir())
    r = board("flash", "--profile", "example", "--device", str(share))
    assert r.returncode == 0, r.stderr
    assert (share / "board.tar.zst").read_bytes() == archive.read_bytes()
    r = board("flash", "--profile", "example", "--to-file", str(share / "board.tar.zst"))
    assert r.returncode != 0 and "already there; add --force" in r.stderr
