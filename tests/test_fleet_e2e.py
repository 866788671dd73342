"""Fleet updates against a simulated fleet of real machines: two QEMU VMs booted from
the x86-gateway image (copy-on-write overlays of one image), each with real systemd,
sshd and the appliance's services, reached over SSH on loopback ports. A third
inventory entry whose SSH port nothing answers on stands for a powered-off device.

The tests run in order and share the fleet: each starts from where the previous left it
(which release each host serves is asserted, not assumed). The rollout's basics run in
every tier; the long ones (a transfer cut and resumed, a power cut mid-switch, a
bundle, a lab run) are @pytest.mark.long: minutes each under TCG."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytestmark = pytest.mark.slow

HOSTS = ("vm1", "vm2")


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


def _fleet_cmd(fleet, appliance: Path, *args: str, accept_new: bool = False,
               inventory: Path | None = None):
    extra = ["--accept-new-host-keys"] if accept_new else []
    r = _builder(appliance, *args, "--inventory", str(inventory or fleet["inventory"]),
                 "--known-hosts", str(fleet["known_hosts"]), "--json", *extra)
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


def _padded(model: Path, dest: Path, mib: int) -> Path:
    """`model` with `mib` MiB of random text as its general.description (gguf-py's
    gguf_new_metadata, llama.cpp's own tool): a new model (its own sha256) as big as a
    test needs that llama.cpp loads as fast as the tiny one (a real model of that size
    takes minutes to load and answer under TCG)."""
    import random

    import gguf
    from gguf.scripts.gguf_new_metadata import (
        MetadataDetails,
        copy_with_new_metadata,
        get_field_data,
    )

    reader = gguf.GGUFReader(model, "r")
    writer = gguf.GGUFWriter(dest, arch=get_field_data(reader, gguf.Keys.General.ARCHITECTURE),
                             endianess=reader.endianess)
    alignment = get_field_data(reader, gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment
    text = random.Random(dest.name).randbytes(mib << 19).hex()  # incompressible
    copy_with_new_metadata(reader, writer, {gguf.Keys.General.DESCRIPTION: MetadataDetails(
        gguf.GGUFValueType.STRING, text)}, [])
    return dest


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


def test_each_boot_of_the_one_image_has_its_own_host_key_and_machine_id(fleet) -> None:
    """Made at first boot (the image ships neither), so no two devices share them."""
    keys = {_ssh(fleet, h, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] for h in HOSTS}
    ids = {_ssh(fleet, h, "cat /etc/machine-id").strip() for h in HOSTS}
    assert len(keys) == len(ids) == len(HOSTS)
    assert all(len(i) == 32 for i in ids)


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
        fleet, appliance: Path, tiny_q4: Path, tmp_path: Path) -> None:
    # A GGUF whose header reads (the release accepts it) but that llama.cpp cannot load:
    # one tensor renamed, so the engine never comes up on the canary.
    broken = tmp_path / "broken.gguf"
    data = tiny_q4.read_bytes()
    assert data.count(b"output_norm.weight") == 1
    broken.write_bytes(data.replace(b"output_norm.weight", b"output_norx.weight"))
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
    """Twice: the controller refuses a tree that differs from its signed manifest before
    anything is sent; and a store altered after the controller's check (as a job
    runner reading a shared store could meet) is refused by the device itself."""
    import shutil

    from builder.cache import Cache
    from builder.fleet import deploy as fleet_mod
    from builder.fleet import trust
    from builder.sshkey import builder_key

    rid = _release(appliance, tmp_path, "ctx3072", SETTINGS.format(ctx=3072), tiny_q4)
    fleet["next"] = rid
    serving = _status(fleet, "vm2")["current"]
    bad = tmp_path / "tampered" / rid
    shutil.copytree(appliance / "releases" / rid, bad, symlinks=True)
    env = bad / "tree" / "engine.env"
    checked = trust.open_release(bad, trust.signers(None, appliance))  # still whole
    env.write_text(env.read_text().replace("6144", "999999"))  # not re-signed
    r, _ = _fleet_cmd(fleet, appliance, "deploy", "--release", str(bad), "--limit", "vm2")
    assert r.returncode == 2 and "its tree differs from its signed release.json" in r.stderr
    assert _status(fleet, "vm2")["current"] == serving  # nothing was sent

    ssh = fleet_mod.Ssh(known_hosts=fleet["known_hosts"], accept_new=True,
                        key=builder_key(Cache(None))[0])
    [o] = fleet_mod.deploy(fleet["inventory"], checked, ssh, tmp_path / "work", serial=[1],
                           max_fail=0, gate_timeout=300, keep=3, bwlimit_kbps=0,
                           limit="vm2")
    assert o.result == "refused", o
    assert "engine.env: sha256 differs" in o.reason
    st = _status(fleet, "vm2")
    assert st["current"] == serving and st["healthy"]


def test_an_unreachable_host_is_reported_and_counted(fleet, appliance: Path,
                                                    tmp_path: Path) -> None:
    from harness.llama_server import free_port

    inv = tmp_path / "fleet.ini"  # vm3: off (its SSH port refuses, as a stopped VM's does)
    inv.write_text(fleet["inventory"].read_text() +
                   f"vm3 ansible_host=127.0.0.1 ansible_port={free_port()} ansible_user=edge\n")
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", fleet["next"], "--serial",
                          "100%", "--max-fail", "50", inventory=inv)
    assert r.returncode == 1
    assert hosts["vm3"]["result"] == "unreachable" and not hosts["vm3"]["reachable"]
    assert all(hosts[h]["result"] == "activated" for h in HOSTS)


@pytest.mark.long
def test_a_controller_killed_mid_transfer_resumes_on_rerun(fleet, appliance: Path,
                                                           tiny_q4: Path,
                                                           tmp_path: Path) -> None:
    model = _padded(tiny_q4, tmp_path / "padded-24m.gguf", 24)  # 24 s at 1000 KB/s
    rid = _release(appliance, tmp_path, "padded", SETTINGS.format(ctx=1024), model)
    size = model.stat().st_size
    before = _status(fleet, "vm1")["current"]
    cmd = [sys.executable, "-m", "builder", "deploy", "--release", rid, "--limit", "vm1",
           "--bwlimit", "1000", "--inventory", str(fleet["inventory"]), "--known-hosts",
           str(fleet["known_hosts"]), "--accept-new-host-keys", "--out", str(appliance)]
    ctl = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    # rsync receives into a temporary .<name>.XXXXXX beside the model's final name
    partial = "sudo find /var/lib/edge-llm/models -name '.*.gguf.*' -size +5M"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not _ssh(fleet, "vm1", partial + " || true").strip():
        time.sleep(1)
    _kill_tree(ctl.pid)  # the controller dies mid-transfer, ansible and rsync with it
    ctl.wait()
    st = _status(fleet, "vm1")
    assert st["current"] == before and st["healthy"]  # untouched, still serving
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--limit", "vm1",
                          accept_new=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hosts["vm1"]["result"] == "activated" and hosts["vm1"]["serving"] == rid
    assert hosts["vm1"]["bytes_sent"] < size - 5_000_000  # the first 5 MB were not re-sent


@pytest.mark.long
def test_a_device_reset_during_its_switch_boots_serving_a_good_release(
        fleet, appliance: Path, tiny_q4: Path, tmp_path: Path) -> None:
    from builder import vm

    before = _status(fleet, "vm2")["current"]
    rid = _release(appliance, tmp_path, "ctx2048", SETTINGS.format(ctx=2048), tiny_q4)
    cmd = [sys.executable, "-m", "builder", "deploy", "--release", rid, "--limit", "vm2",
           "--inventory", str(fleet["inventory"]), "--known-hosts", str(fleet["known_hosts"]),
           "--accept-new-host-keys", "--out", str(appliance)]
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
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--limit", "vm2",
                          accept_new=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hosts["vm2"]["serving"] == rid


@pytest.mark.long
def test_a_release_carried_in_a_bundle_deploys_from_a_closed_site(
        fleet, appliance: Path, manifest, tiny_q4: Path, tmp_path: Path) -> None:
    """The connected side exports a release (with a model no device has yet) to one file;
    the closed site has its own OUT, without that release or its model, and deploys from
    the file alone: imported (signature and hashes checked), then rolled out."""
    model = _padded(tiny_q4, tmp_path / "padded-8m.gguf", 8)
    rid = _release(appliance, tmp_path, "bundled", SETTINGS.format(ctx=1536), model)
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
    assert host["bytes_sent"] > model.stat().st_size // 2  # and was sent from there
    assert _status(fleet, "vm1")["model_sha256"] == json.loads(
        (site / "releases" / rid / "tree/release.json").read_text())["model"]["sha256"]


def test_an_engine_from_outside_the_builder_deploys_and_verifies(
        fleet, appliance: Path, smollm2_gguf: Path, tmp_path: Path) -> None:
    """tests/example_engine (loaded only where its release is made) deployed onto an
    appliance built with llama.cpp: its unit runs the release's engine, the gateway
    takes the release's settings - here API auth off, which reaches the device by the
    release's drop-in alone - and `builder verify --release` checks the device as the
    release planned it. vm1 is left serving it."""
    from test_example_engine import PROFILE, engine_env

    prof = tmp_path / "pyecho.yaml"
    prof.write_text(PROFILE + "service:\n  api_auth: false\n")
    r = subprocess.run([sys.executable, "-m", "builder", "release", "--profile", str(prof),
                        "--model-file", str(smollm2_gguf), "--json", "--out", str(appliance)],
                       capture_output=True, text=True, timeout=600, env=engine_env(),
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-2000:]
    rid = json.loads(r.stdout)["release_id"]
    r, hosts = _fleet_cmd(fleet, appliance, "deploy", "--release", rid, "--limit", "vm1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert hosts["vm1"]["result"] == "activated" and hosts["vm1"]["healthy"], hosts
    spec, _ = fleet["specs"]["vm1"]
    api = f"http://127.0.0.1:{next(iter(spec.forwards))}"
    with urllib.request.urlopen(urllib.request.Request(  # no key: the release said so
            api + "/v1/chat/completions", data=json.dumps({
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json"}), timeout=60) as resp:
        reply = json.load(resp)
    assert reply["model"] == smollm2_gguf.stem and reply["usage"]["completion_tokens"] == 3
    junit = tmp_path / "verify.xml"
    r = _builder(appliance, "verify", "--profile", "x86-gateway", "--release", rid,
                 "--host", f"ssh://edge@127.0.0.1:{spec.ssh_port}", "--api-url", api,
                 "--junit", str(junit))
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report
    assert 'skipped="1"' in report  # the build's Ansible run, which would undo the deploy


@pytest.mark.long
def test_a_lab_run_verifies_and_benchmarks_devices_and_resumes_where_one_failed(
        fleet, appliance: Path, manifest, tmp_path: Path) -> None:
    """`builder lab run` over two of the fleet's VMs as deploy-only devices: each gets the
    build's release (Ansible), is waited for, verified with the suite and benchmarked
    against the profile's bars. vm2's inventory entry names the wrong public port, so it
    fails its ready step; the re-run with the entry fixed keeps every step that passed
    and starts vm2 at its ready step. With EDGE_LLM_LAB_SAMPLE=DIR the run's records are
    copied there and rendered (docs/lab-sample/ is made so)."""
    from builder.lab import report as lab_report
    from builder.lab import run as lab

    specs = fleet["specs"]

    def inventory(vm2_api_port: int) -> str:
        ports = {"vm1": next(iter(specs["vm1"][0].forwards)), "vm2": vm2_api_port}
        return ("defaults:\n  profile: x86-gateway\n  flash: deploy-only\n"
                "  ansible_host: 127.0.0.1\n  ansible_user: edge\n  ready_timeout: 30\n"
                "devices:\n" + "".join(
                    f"  {h}:\n    ansible_port: {specs[h][0].ssh_port}\n"
                    f"    api_url: http://127.0.0.1:{ports[h]}\n" for h in ("vm1", "vm2")))

    inv = tmp_path / "lab.yml"
    inv.write_text(inventory(vm2_api_port=9))  # discard: nothing answers there
    run_dir = tmp_path / "lab" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    # the verify suite's release and speed checks (the whole suite runs against this
    # image in test_appliance_e2e; here it is minutes per device under TCG), and a short
    # benchmark
    args = ("--known-hosts", str(fleet["known_hosts"]), "--accept-new-host-keys",
            "--select", "release or performance", "--requests", "3", "--max-tokens", "16")
    r = _builder(appliance, "lab", "run", "--inventory", str(inv), "--output", str(run_dir),
                 *args)
    said = [r.stderr + r.stdout]
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vm1: verify passed" in r.stderr and "vm2: ready failed" in r.stderr, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith(
        "error: lab run: 1 of 2 device(s) did not pass: vm2: ready failed; fix and re-run "
        "with --resume ")

    def junit() -> dict:
        root = ElementTree.parse(run_dir / "junit.xml").getroot()
        return {(tc.get("classname"), tc.get("name")): (
            "failed" if tc.find("failure") is not None else
            "skipped" if tc.find("skipped") is not None else "passed")
            for tc in root.iter("testcase")}

    assert junit() == {
        **{("lab.vm1", s): "passed" for s in ("deploy", "ready", "verify", "benchmark")},
        ("lab.vm2", "deploy"): "passed", ("lab.vm2", "ready"): "failed",
        ("lab.vm2", "verify"): "skipped", ("lab.vm2", "benchmark"): "skipped"}
    vm1 = json.loads((run_dir / "devices/vm1.json").read_text())
    assert vm1["passed"] and vm1["release_id"] == manifest["release_id"]
    assert vm1["verify"]["tests"] >= 4 and vm1["verify"]["failed"] == []
    b = vm1["benchmark"]
    assert b["decode_tps"] > 0 and 0 < b["ttft_ms_p50"] <= b["ttft_ms_p95"]
    assert 0 < b["peak_rss_bytes"] <= vm1["thresholds"]["max_rss_bytes"]
    assert all(c["ok"] for c in vm1["checks"]) and len(vm1["checks"]) == 3
    vm2 = json.loads((run_dir / "devices/vm2.json").read_text())
    assert not vm2["passed"] and "127.0.0.1:9/health" in vm2["steps"][1]["detail"]
    md = (run_dir / "report.md").read_text()
    assert "**Result: 1 of 2 device(s) passed; not passed: vm2.**" in md
    assert "<svg" in (run_dir / "report.html").read_text()
    for h in ("vm1", "vm2"):
        st = _status(fleet, h)
        assert st["current"] == manifest["release_id"] and st["healthy"], (h, st)

    inv.write_text(inventory(next(iter(specs["vm2"][0].forwards))))
    r = _builder(appliance, "lab", "run", "--resume", str(run_dir), "--inventory", str(inv),
                 *args)
    said.append(r.stderr + r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for kept in ("vm1: deploy", "vm1: ready", "vm1: verify", "vm1: benchmark", "vm2: deploy"):
        assert f"{kept}: passed in attempt 1, kept" in r.stderr, r.stderr
    assert "vm2: ready passed" in r.stderr and "vm2: benchmark passed" in r.stderr
    assert set(junit().values()) == {"passed"}
    vm2 = json.loads((run_dir / "devices/vm2.json").read_text())
    assert [(s["name"], s["attempt"]) for s in vm2["steps"]] == [
        ("deploy", 1), ("ready", 2), ("verify", 2), ("benchmark", 2)]
    assert vm2["passed"] and vm2["attempts"] == [1, 2]
    assert json.loads((run_dir / "devices/vm1.json").read_text())["steps"] == vm1["steps"]
    assert "all 2 device(s) passed every step" in (run_dir / "report.md").read_text()

    sample = os.environ.get("EDGE_LLM_LAB_SAMPLE")
    if sample:  # the docs' sample: this run's records, rendered
        import shutil

        dest = Path(sample)
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "devices").mkdir(parents=True)
        for name in ("run.json", "lab.yml", "devices/vm1.json", "devices/vm2.json"):
            shutil.copyfile(run_dir / name, dest / name)
        (dest / "output.txt").write_text("\n".join(said))  # what the two runs printed
        meta, records = lab.read_json(dest / "run.json"), lab.load_records(dest)
        lab_report.write(dest, meta, records)
        page = dest.parent / "lab.md"  # and the section of docs/lab.md that shows it
        if page.is_file() and lab_report.BEGIN in page.read_text():
            page.write_text(lab_report.embed(page.read_text(), meta, records))
