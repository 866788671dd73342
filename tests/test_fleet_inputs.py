"""Fleet commands' refusals and reports that need no device: inventories with
passwords, bad batch sizes, a missing release, a host nobody answers on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.fleet import parse_serial
from builder.testing.llama_server import free_port


def test_serial_is_ansible_batches() -> None:
    assert parse_serial("1,10%,100%") == [1, "10%", "100%"]
    assert parse_serial("2") == [2]


def test_an_inventory_with_a_password_is_refused(workdir: Path, run_builder) -> None:
    (workdir / "fleet.ini").write_text(
        "[fleet]\nkiosk1 ansible_host=192.0.2.1\nkiosk2 ansible_host=192.0.2.2 "
        "ansible_password=hunter2\n")
    r = run_builder("fleet", "status", "--inventory", "fleet.ini", cwd=workdir)
    assert r.returncode == 2
    assert r.stderr == ("error: fleet.ini: host kiosk2: ansible_password: passwords are not "
                        "allowed in an inventory; log in with an SSH key "
                        "(ansible_ssh_private_key_file)\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--release", "r123", "--serial", "1,ten"],
     "error: --serial 1,ten: expected batch sizes like 1,10%,100%"),
    (["--release", "r123"], "error: --release r123: no release there"),
])
def test_deploy_refuses_bad_input_in_one_line(workdir: Path, run_builder, args: list[str],
                                              message: str) -> None:
    (workdir / "fleet.ini").write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
    r = run_builder("deploy", "--inventory", "fleet.ini", *args, cwd=workdir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(message)


def test_an_unreachable_host_is_reported_not_a_traceback(workdir: Path, run_builder) -> None:
    port = free_port()  # nothing listens there
    (workdir / "fleet.ini").write_text(
        f"[fleet]\nkiosk1 ansible_host=127.0.0.1 ansible_port={port} ansible_user=edge\n")
    r = run_builder("fleet", "status", "--inventory", "fleet.ini", "--json", cwd=workdir)
    assert r.returncode == 1, r.stderr
    [host] = json.loads(r.stdout)
    assert host["host"] == "kiosk1" and not host["reachable"]
    assert host["result"] == "unreachable" and "Connection refused" in host["reason"]
    assert r.stderr.strip().splitlines()[-1] == "error: fleet status: unreachable: kiosk1"
