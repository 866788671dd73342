"""Fleet commands' refusals and reports that need no device: inventories with
passwords, bad batch sizes, a missing release, a host nobody answers on."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import releases
from device_tree import keygen
from harness.llama_server import free_port

from builder.fleet import release
from builder.fleet.deploy import parse_serial

REPO = Path(__file__).resolve().parent.parent


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


def test_a_dynamic_inventory_script_is_read_like_a_file(workdir: Path, run_builder) -> None:
    """An executable inventory (what cloud and CMDB inventories are) goes through
    ansible-inventory like a file: its hosts are reached, and reported, by name."""
    port = free_port()
    script = workdir / "inventory.py"
    script.write_text(f"""#!{sys.executable}
import json, sys
hosts = {{"kiosk-{{}}".format(i): {{"ansible_host": "127.0.0.1", "ansible_port": {port},
                                   "ansible_user": "edge"}} for i in (1, 2)}}
print(json.dumps({{"kiosks": {{"hosts": sorted(hosts)}}, "_meta": {{"hostvars": hosts}}}}
                 if "--list" in sys.argv else {{}}))
""")
    script.chmod(0o755)
    r = run_builder("fleet", "status", "--inventory", "inventory.py", "--json", cwd=workdir)
    assert r.returncode == 1, r.stderr
    assert sorted((h["host"], h["result"]) for h in json.loads(r.stdout)) == [
        ("kiosk-1", "unreachable"), ("kiosk-2", "unreachable")]


def _release(tmp: Path) -> release.Bundle:
    """A release as `builder release` leaves it in tmp/out, which trusts its key."""
    key = keygen(tmp / "signing")
    b = releases.make(tmp / "build", key, out=tmp / "out")
    releases.trust_key(tmp / "out", key)
    return b


def test_the_playbooks_run_from_a_checkout_under_ansible_runner(tmp_path: Path,
                                                               monkeypatch) -> None:
    """As an AWX project runs them: ansible-runner, the checkout as the project, no
    ANSIBLE_ROLES_PATH (the checkout's ansible.cfg finds roles/), the variables a
    release's `builder fleet vars` prints. Ansible resolves every role and task file
    (--syntax-check); a role it could not find fails the run."""
    import ansible_runner

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.delenv("ANSIBLE_ROLES_PATH", raising=False)
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[fleet]\nkiosk1 ansible_host=192.0.2.1\n")
    for d in ("runner", "runner2"):
        (tmp_path / d).mkdir()
    for playbook, extravars in (("deploy.yml", {}), ("fleet.yml", {"fleet_action": "status"})):
        run = ansible_runner.run(private_data_dir=str(tmp_path / "runner"),
                                 project_dir=str(REPO), playbook=f"playbooks/{playbook}",
                                 inventory=str(inventory), cmdline="--syntax-check",
                                 extravars=extravars, quiet=True, timeout=300)
        assert (run.status, run.rc) == ("successful", 0), (playbook, run.stdout.read())
    # and without the checkout's ansible.cfg the role is not found: the test can fail
    bare = tmp_path / "bare"
    shutil.copytree(REPO / "playbooks", bare / "playbooks")
    run = ansible_runner.run(private_data_dir=str(tmp_path / "runner2"), project_dir=str(bare),
                             playbook="playbooks/deploy.yml", inventory=str(inventory),
                             cmdline="--syntax-check", quiet=True, timeout=300)
    assert run.rc != 0 and "the role 'release' was not found" in run.stdout.read()


def test_fleet_vars_are_what_builder_deploy_passes_its_playbook(tmp_path: Path,
                                                                run_builder) -> None:
    b = _release(tmp_path)
    m = b.manifest
    r = run_builder("fleet", "vars", "--release", b.release_id, "--serial", "1,5%,100%",
                    "--max-fail", "2", "--gate-timeout", "60", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"release {b.release_id}: signature verified with the site's" in r.stderr
    v = json.loads(r.stdout)
    assert v["release_id"] == b.release_id and v["deploy_serial"] == [1, "5%", "100%"]
    assert v["deploy_max_fail_percentage"] == 2 and v["release_gate_timeout"] == 60
    assert v["release_model_sha256"] == m["model"]["sha256"] and v["release_report_dir"] == ""
    assert v["release_model_bytes"] == m["model"]["bytes"]
    assert Path(v["release_tree"]).is_absolute()
    assert v["release_engine_watchdog_seconds"] == m["engine"]["watchdog_seconds"]
    # for ansible-playbook -e @FILE / ansible-runner: the same values, strings !unsafe
    r = run_builder("fleet", "vars", "--release", b.release_id, "--serial", "1,5%,100%",
                    "--max-fail", "2", "--gate-timeout", "60", "--format", "yaml",
                    cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from ansible.parsing.yaml.loader import AnsibleLoader

    assert AnsibleLoader(r.stdout).get_single_data() == v
    assert f"release_id: !unsafe '{b.release_id}'" in r.stdout
    r = run_builder("fleet", "vars", "--release", b.release_id, "--serial", "ten",
                    cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --serial ten:")


# --- the release role's free-space check, run on its own against a directory ---------------

def _space_check(tmp_path: Path, need: int) -> tuple[int, str]:
    """roles/release/tasks/space.yml on localhost, for a release whose tree is staged in
    tmp/releases/.incoming-r1 and whose model goes to tmp/models/m.gguf."""
    import subprocess

    play = tmp_path / "space.yml"
    play.write_text(json.dumps([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"release_root": str(tmp_path), "release_model_dir": str(tmp_path / "models"),
                 "release_incoming_dir": str(tmp_path / "releases/.incoming-r1"),
                 "release_model_name": "m.gguf",
                 "release_model_path": str(tmp_path / "models/m.gguf"),
                 "release_min_free_bytes": need,
                 "ansible_python_interpreter": sys.executable},
        "tasks": [{"ansible.builtin.import_tasks": str(REPO / "roles/release/tasks/space.yml")}],
    }]))
    r = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i",
                        "localhost,", str(play)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ANSIBLE_NOCOLOR": "1",
                            "ANSIBLE_LOCALHOST_WARNING": "False"})
    return r.returncode, r.stdout + r.stderr


def test_a_device_without_room_is_refused_with_the_figures(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    free = shutil.disk_usage(tmp_path).free
    rc, out = _space_check(tmp_path, 1 << 20)
    assert rc == 0, out
    rc, out = _space_check(tmp_path, free + (1 << 40))
    assert rc == 2, out
    assert "not enough free space on the device:" in out and "needed" in out, out


def test_bytes_a_cut_transfer_left_count_toward_the_room_it_needs(tmp_path: Path) -> None:
    partial = tmp_path / "models/.rsync-partial/m.gguf"
    partial.parent.mkdir(parents=True)
    (tmp_path / "releases/.incoming-r1").mkdir(parents=True)
    (tmp_path / "releases/.incoming-r1/engine.bin").write_bytes(b"e" * (16 << 20))
    partial.write_bytes(b"m" * (64 << 20))
    free = shutil.disk_usage(tmp_path).free  # 80 MiB held; 40 MiB either way for churn
    # more than is free, by less than this release already holds here: it goes on
    rc, out = _space_check(tmp_path, free + (40 << 20))
    assert rc == 0, out
    rc, out = _space_check(tmp_path, free + (120 << 20))  # by more: refused
    assert rc == 2 and "not enough free space" in out, out
