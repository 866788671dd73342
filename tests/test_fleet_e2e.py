"""Fleet updates against a simulated fleet of real machines: four QEMU VMs booted from
the x86-gateway image (copy-on-write overlays of one image), each with real systemd,
sshd and the appliance's services, reached over SSH on loopback ports.

The tests run in order and share the fleet: each starts from where the previous left it
(which release each host serves is asserted, not assumed)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HOSTS = ("vm1", "vm2", "vm3", "vm4")


@pytest.fixture(scope="module")
def fleet(appliance: Path, start_vm, tmp_path_factory):
    from builder import vm

    specs = {}
    try:
        for h in HOSTS:  # boot all at once, then wait for each
            specs[h] = start_vm(appliance, h, wait=False, cpus=1, memory_mb=1024)
        for spec, key in specs.values():
            vm.wait_ssh(vm.VmHandle(spec=spec, pid=vm.running(spec.state_dir) or 0,
                                    accel="", started=time.monotonic()), "edge", key, 900)
        d = tmp_path_factory.mktemp("fleet")
        inv = d / "fleet.ini"
        inv.write_text("[fleet]\n" + "".join(
            f"{h} ansible_host=127.0.0.1 ansible_port={s.ssh_port} ansible_user=edge\n"
            for h, (s, _) in specs.items()))
        yield {"inventory": inv, "known_hosts": d / "known_hosts", "specs": specs,
               "dir": d}
    finally:
        for spec, _ in specs.values():
            vm.stop(spec.state_dir)


def _builder(appliance: Path, *args: str, timeout: float = 3600):
    r = subprocess.run([sys.executable, "-m", "builder", *args, "--out", str(appliance)],
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r


def _fleet_cmd(fleet, appliance: Path, *args: str, accept_new: bool = False):
    extra = ["--accept-new-host-keys"] if accept_new else []
    r = _builder(appliance, *args, "--inventory", str(fleet["inventory"]), "--known-hosts",
                 str(fleet["known_hosts"]), "--json", *extra)
    hosts = {}
    if r.stdout.strip().startswith("["):
        hosts = {o["host"]: o for o in json.loads(r.stdout)}
    return r, hosts


def _release(appliance: Path, tmp: Path, name: str, yaml: str, model: Path) -> str:
    prof = tmp / f"{name}.yaml"
    prof.write_text(yaml)
    r = _builder(appliance, "release", "--profile", str(prof), "--model-file", str(model),
                 "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)["release_id"]


def _ssh(fleet, host: str, command: str) -> str:
    from builder.vm import ssh_command

    spec, key = fleet["specs"][host]
    r = subprocess.run(ssh_command(spec.ssh_port, "edge", key, command), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant: the builder starts ansible-playbook in a
    session of its own, so a process group is not enough to take the controller down."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, found = [pid], []
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    for p in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _status(fleet, host: str) -> dict:
    return json.loads(_ssh(fleet, host, "sudo /usr/local/lib/edge-llm/edge-llm-release status"))


SETTINGS = "extends: x86-gateway\nruntime:\n  context_length: {ctx}\n"


def test_unknown_host_keys_are_refused_unless_asked(fleet, appliance: Path,
                                                    manifest) -> None:
    r, hosts = _fleet_cmd(fleet, appliance, "fleet", "status")
    assert r.returncode == 1
    assert all(not o["reachable"] and "Host key verification failed" in o["reason"]
               for o in hosts.values()), hosts
    r, hosts = _fleet_cmd(fleet, appliance, "fleet", "status", accept_new=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {h: o["serving"] for h, o in hosts.items()} == dict.fromkeys(
        HOSTS, manifest["release_id"])
    assert all(o["healthy"] for o in hosts.values())


def test_a_settings_release_reaches_every_host_in_kilobytes(fleet, appliance: Path,
                                                            tiny_q4: Path,
                                                            tmp_path: Path) -> None:
    rid = _release(appliance, tmp_path, "ctx4096", SETTINGS.format(ctx=4096), tiny_q4)
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--serial", "1,100%")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert {h: o["result"] for h, o in hosts.items()} == dict.fromkeys(HOSTS, "activated")
    assert all(o["serving"] == rid and o["healthy"] for o in hosts.values())
    assert all(o["bytes_sent"] < 64 * 1024 for o in hosts.values()), hosts
    assert "LLAMA_ARG_CTX_SIZE=\"8192\"" in _ssh(fleet, "vm1", "cat /opt/edge-llm/current/"
                                                 "engine.env")  # 4096 per slot x 2 slots
    # a second run converges without sending or switching anything
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid)
    assert r.returncode == 0
    assert all(o["result"] == "unchanged" and o["bytes_sent"] == 0 for o in hosts.values())
    fleet["good"] = rid


def test_a_canary_failing_its_gate_rolls_back_and_stops_the_rollout(
        fleet, appliance: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + os.urandom(100_000))
    rid = _release(appliance, tmp_path, "broken", "extends: x86-gateway\n", broken)
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--serial",
                          "1,100%", "--max-fail", "0", "--gate-timeout", "90")
    assert r.returncode == 1
    assert hosts["vm1"]["result"] == "rolled-back", hosts["vm1"]
    assert "serves again" in hosts["vm1"]["reason"]
    assert all(hosts[h]["result"] == "skipped" for h in HOSTS[1:])
    for h in HOSTS:  # the canary is back on the last good release, the rest never moved
        st = _status(fleet, h)
        assert st["current"] == fleet["good"] and st["healthy"], (h, st)


def test_a_tampered_release_is_refused_on_the_device(fleet, appliance: Path, tiny_q4: Path,
                                                     tmp_path: Path) -> None:
    import shutil

    rid = _release(appliance, tmp_path, "ctx3072", SETTINGS.format(ctx=3072), tiny_q4)
    fleet["next"] = rid
    bad = tmp_path / "tampered" / rid
    shutil.copytree(appliance / "releases" / rid, bad, symlinks=True)
    env = bad / "tree" / "engine.env"
    env.write_text(env.read_text().replace("6144", "999999"))  # not re-signed
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", str(bad), "--limit", "vm2")
    assert r.returncode == 1
    assert hosts["vm2"]["result"] == "refused", hosts["vm2"]
    assert "engine.env: sha256 differs" in hosts["vm2"]["reason"]
    st = _status(fleet, "vm2")
    assert st["current"] == fleet["good"] and st["healthy"]


def test_an_unreachable_host_is_reported_and_counted(fleet, appliance: Path) -> None:
    from builder import vm

    vm.stop(fleet["specs"]["vm4"][0].state_dir)
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", fleet["next"], "--serial",
                          "100%", "--max-fail", "25")
    assert r.returncode == 1
    assert hosts["vm4"]["result"] == "unreachable" and not hosts["vm4"]["reachable"]
    assert all(hosts[h]["result"] == "activated" for h in ("vm1", "vm2", "vm3"))


def test_a_controller_killed_mid_transfer_resumes_on_rerun(fleet, appliance: Path,
                                                           smollm2_gguf: Path,
                                                           tmp_path: Path) -> None:
    rid = _release(appliance, tmp_path, "smollm2", SETTINGS.format(ctx=1024), smollm2_gguf)
    size = smollm2_gguf.stat().st_size
    cmd = [sys.executable, "-m", "builder", "deploy", "--release", rid, "--limit", "vm3",
           "--bwlimit", "1000", "--inventory", str(fleet["inventory"]), "--known-hosts",
           str(fleet["known_hosts"]), "--out", str(appliance)]
    ctl = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    # rsync receives into a temporary .<name>.XXXXXX beside the model's final name
    partial = "sudo find /var/lib/edge-llm/models -name '.*.gguf.*' -size +5M"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not _ssh(fleet, "vm3", partial + " || true").strip():
        time.sleep(1)
    _kill_tree(ctl.pid)  # the controller dies mid-transfer, ansible and rsync with it
    ctl.wait()
    st = _status(fleet, "vm3")
    assert st["current"] == fleet["next"] and st["healthy"]  # untouched, still serving
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--limit", "vm3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hosts["vm3"]["result"] == "activated" and hosts["vm3"]["serving"] == rid
    assert hosts["vm3"]["bytes_sent"] < size - 5_000_000  # the first 5 MB were not re-sent


def test_a_device_reset_during_its_switch_boots_serving_a_good_release(
        fleet, appliance: Path, tiny_q4: Path, tmp_path: Path) -> None:
    from builder import vm

    before = fleet["next"]
    rid = _release(appliance, tmp_path, "ctx2048", SETTINGS.format(ctx=2048), tiny_q4)
    cmd = [sys.executable, "-m", "builder", "deploy", "--release", rid, "--limit", "vm2",
           "--inventory", str(fleet["inventory"]), "--known-hosts", str(fleet["known_hosts"]),
           "--out", str(appliance)]
    ctl = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    unit = f"edge-llm-activate-{rid}.service"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if _ssh(fleet, "vm2", f"systemctl is-active {unit} || true").strip() == "active":
            break
        time.sleep(1)
    else:
        pytest.fail("the activation never started")
    vm.reset(fleet["specs"]["vm2"][0].state_dir)  # power cut in the middle of the switch
    _kill_tree(ctl.pid)
    ctl.wait()
    spec, key = fleet["specs"]["vm2"]
    vm.wait_ssh(vm.VmHandle(spec=spec, pid=vm.running(spec.state_dir) or 0, accel="",
                            started=time.monotonic()), "edge", key, 900)
    deadline = time.monotonic() + 900
    st = {}
    while time.monotonic() < deadline:  # the boot-time guard finishes or undoes it
        st = _status(fleet, "vm2")
        if st["pending"] is None and st["healthy"] and st["current"] == st["last_good"]:
            break
        time.sleep(5)
    assert st["current"] in (before, rid) and st["healthy"], st
    assert st["pending"] is None and st["current"] == st["last_good"]
    # and a re-run converges on the new release
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--limit", "vm2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hosts["vm2"]["serving"] == rid


def test_a_release_carried_in_a_bundle_deploys_from_a_closed_site(
        fleet, appliance: Path, manifest, smollm2_gguf: Path, tmp_path: Path) -> None:
    """The connected side exports a release (with a model no device has yet) to one file;
    the closed site has its own OUT, without that release or its model, and deploys from
    the file alone: imported (signature and hashes checked), then rolled out."""
    rid = _release(appliance, tmp_path, "bundled", SETTINGS.format(ctx=1536), smollm2_gguf)
    carried = tmp_path / "stick" / f"{rid}.bundle"
    carried.parent.mkdir()
    r = _builder(appliance, "bundle", "export", "--release", rid, "-o", str(carried))
    assert r.returncode == 0, r.stderr[-2000:]
    site = tmp_path / "site"
    signers = tmp_path / "allowed_signers"  # what the devices trust, as they hold it
    signers.write_text("\n".join(manifest["provision_vars"]["release_allowed_signers"]) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "builder", "deploy", "--bundle", str(carried),
         "--allowed-signers", str(signers), "--limit", "vm1", "--inventory",
         str(fleet["inventory"]), "--known-hosts", str(fleet["known_hosts"]),
         "--accept-new-host-keys", "--json", "--out", str(site)],
        capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [host] = json.loads(r.stdout)
    assert host["result"] == "activated" and host["serving"] == rid and host["healthy"], host
    placed = json.loads((site / "releases" / rid / "bundle.json").read_text())
    assert Path(placed["model_path"]).is_relative_to(site)  # the model came from the file
    assert host["bytes_sent"] > smollm2_gguf.stat().st_size // 2  # and was sent from there
    assert _status(fleet, "vm1")["model_sha256"] == json.loads(
        (site / "releases" / rid / "tree/release.json").read_text())["model"]["sha256"]
