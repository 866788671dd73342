"""`builder lab run` without a lab: the inventory and its one-line errors (hostile values
for ssh and Ansible among them), the confirmation a device needs before it is written,
which devices share a writer and so run one after another, resuming a run, the
threshold comparison, the benchmark's measuring against a streaming server, the reports
(JUnit, Markdown, HTML with its SVG chart), the flash paths against the stand-ins (a
writer that is no block device, no Jetson in recovery mode in a fake sysfs), and
docs/lab-sample/ as the renderer makes it now. The lab run over real machines (the VM fleet) is in
tests/test_fleet_e2e.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from xml.etree import ElementTree

import pytest
import releases
from fakes.jetson.fake_sysfs import make_usb_sysfs
from stand_ins import device

from builder.errors import BuilderError
from builder.fleet import deploy as fleet
from builder.fleet import trust
from builder.lab import bench, measure
from builder.lab import inventory as lab_inventory
from builder.lab import report as lab_report
from builder.lab import run as lab
from builder.lab.inventory import LabDevice, lanes, parse_inventory
from builder.profiles import ProfileStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "docs" / "lab-sample"

LAB = """\
defaults:
  ansible_user: edge
devices:
  pi5-bench-1:
    profile: pi5-8gb
    flash: sd
    writer: /dev/disk/by-id/usb-SD_MUX_1
    ansible_host: 10.0.0.21
  pi5-bench-2:
    profile: pi5-8gb
    flash: sd
    writer: /dev/disk/by-id/usb-SD_MUX_1
    ansible_host: 10.0.0.22
  orin-1:
    profile: orin-nano-8gb
    flash: jetson-recovery
    ansible_host: 10.0.0.31
  orin-2:
    profile: orin-nano-8gb
    flash: jetson-recovery
    ansible_host: 10.0.0.32
  gw-1:
    profile: x86-gateway
    flash: deploy-only
    ansible_host: 10.0.0.41
    ansible_port: 2222
    api_url: http://10.0.0.41:8080
  gw-2:
    profile: x86-gateway
    flash: deploy-only
    ansible_host: 10.0.0.42
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "lab.yml"
    f.write_text(text)
    return f


# --- the inventory ---------------------------------------------------------------------------

def test_an_inventory_gives_each_device_its_fields_and_steps(tmp_path: Path) -> None:
    devices = {d.name: d for d in parse_inventory(_write(tmp_path, LAB))}
    assert list(devices) == ["pi5-bench-1", "pi5-bench-2", "orin-1", "orin-2", "gw-1", "gw-2"]
    gw = devices["gw-1"]
    assert (gw.profile, gw.flash, gw.host, gw.port, gw.user, gw.api_url) == (
        "x86-gateway", "deploy-only", "10.0.0.41", 2222, "edge", "http://10.0.0.41:8080")
    assert gw.steps == ("deploy", "ready", "verify", "benchmark")
    assert devices["pi5-bench-1"].steps == ("flash", "ready", "verify", "benchmark")
    assert devices["gw-2"].port == 22 and devices["gw-2"].writer is None
    assert devices["orin-1"].ready_timeout == 600


@pytest.mark.parametrize("text, message", [
    (LAB.replace("    ansible_port: 2222\n", "    ansible_prot: 2222\n"),
     r"^lab.yml:\d+:5: devices.gw-1.ansible_prot: unknown field; a device takes profile, "),
    (LAB + "extra: 1\n", r"^lab.yml:\d+:1: extra: unknown field; a lab inventory has "
     "defaults and devices$"),
    (LAB.replace("    flash: jetson-recovery\n    ansible_host: 10.0.0.31\n",
                 "    ansible_host: 10.0.0.31\n"),
     r"^lab.yml:\d+:3: devices.orin-1: no flash method: add flash: sd \(with writer: "),
    (LAB.replace("flash: deploy-only\n    ansible_host: 10.0.0.42",
                 "flash: usb\n    ansible_host: 10.0.0.42"),
     r"^lab.yml:\d+:5: devices.gw-2.flash: 'usb' is not a flash method; use "
     "jetson-recovery, sd, deploy-only$"),
    (LAB.replace("    writer: /dev/disk/by-id/usb-SD_MUX_1\n    ansible_host: 10.0.0.22\n",
                 "    ansible_host: 10.0.0.22\n"),
     r"^lab.yml:\d+:3: devices.pi5-bench-2: flash: sd needs writer: "),
    (LAB.replace("    ansible_host: 10.0.0.42\n", "    ansible_host: 10.0.0.42\n"
                 "    writer: /dev/sdb\n"),
     r"^lab.yml:\d+:5: devices.gw-2.writer: only a flash method through a writer \(sd\) "
     "takes one"),
    (LAB.replace("    ansible_host: 10.0.0.42\n", "    ansible_host: 10.0.0.42\n"
                 "    ansible_password: hunter2\n"),
     r"^lab.yml:\d+:5: devices.gw-2.ansible_password: passwords are not allowed"),
    (LAB.replace("ansible_port: 2222", "ansible_port: twenty"),
     r"^lab.yml:\d+:5: devices.gw-1.ansible_port: expected a whole number of at least 1 "
     "and at most 65535, got 'twenty'$"),
    (LAB.replace("    profile: x86-gateway\n    flash: deploy-only\n    ansible_host: 10.0.0.42",
                 "    flash: deploy-only\n    ansible_host: 10.0.0.42"),
     r"^lab.yml:\d+:3: devices.gw-2: no profile: add profile: NAME"),
    ("devices: []\n", r"^lab.yml:1:1: devices: expected a mapping of device names"),
    ("- a\n", r"^lab.yml:1:1: a lab inventory must be a mapping with devices: "),
    (LAB.replace("  gw-2:", "  gw/2:"), r"^lab.yml:\d+:3: devices.gw/2: a device name is "),
    (LAB.replace("  gw-2:", '  "gw-2\\n":'),
     r"^lab.yml:\d+:3: devices.'gw-2\\n': a device name is "),
    (LAB.replace("    ansible_host: 10.0.0.31\n", "    ansible_host: 10.0.0.31\n"
                 "    confirm: yes please\n"),
     r"^lab.yml:\d+:5: devices.orin-1.confirm: expected true or false, got 'yes please'$"),
    (LAB.replace("    ansible_host: 10.0.0.42\n", "    ansible_host: 10.0.0.42\n"
                 "    confirm: true\n"),
     r"^lab.yml:\d+:5: devices.gw-2.confirm: a deploy-only device is not written$"),
])
def test_a_mistake_is_one_line_naming_the_file_line_device_and_field(
        workdir: Path, text: str, message: str) -> None:
    with pytest.raises(BuilderError) as e:
        parse_inventory(_write(workdir, text))
    assert re.search(message, str(e.value)), str(e.value)
    assert "\n" not in str(e.value)


def test_defaults_apply_to_every_device_and_a_device_overrides_them(workdir: Path) -> None:
    f = _write(workdir, "defaults:\n  flash: deploy-only\n  ansible_port: 2200\n"
                         "devices:\n  a: {profile: x86-gateway}\n"
                         "  b: {profile: x86-gateway, ansible_port: 2201}\n")
    a, b = parse_inventory(f)
    assert (a.flash, a.port, a.host) == ("deploy-only", 2200, "a")
    assert (b.flash, b.port) == ("deploy-only", 2201)
    bad = _write(workdir, "defaults:\n  flsh: sd\ndevices:\n  a: {profile: x86-gateway}\n")
    with pytest.raises(BuilderError, match=r"^lab.yml:2:3: defaults.flsh: unknown field"):
        parse_inventory(bad)


HOSTILE = [
    ("ansible_host", "-oProxyCommand=touch /tmp/pwned", "is not a host name or IP address"),
    ("ansible_host", "10.0.0.5 -p 2", "is not a host name or IP address"),
    ("ansible_host", "gw\nProxyCommand sh -c id", "is not a host name or IP address"),
    ("ansible_host", "{{ lookup('pipe', 'id') }}", "is not a host name or IP address"),
    ("ansible_user", "-oProxyCommand=sh", "is not a user name"),
    ("ansible_user", "edge@10.6.6.6", "is not a user name"),
    ("ansible_user", "edge\nHost *", "is not a user name"),
    ("ansible_ssh_private_key_file", "/k\nProxyCommand sh -c id", "is not a path this field"),
    ("ansible_ssh_private_key_file", "-oProxyCommand=sh", "is not a path this field"),
    ("ansible_ssh_private_key_file", "/my keys/id", "is not a path this field"),
    ("ansible_ssh_private_key_file", "{{ lookup('pipe','id') }}", "is not a path this field"),
    ("writer", "-oif=/dev/zero", "is not an absolute path this field"),
    ("writer", "sdb", "is not an absolute path this field"),
    ("api_url", "http://10.0.0.5:8080/\nx", "is not an http(s)://HOST:PORT address"),
    ("api_url", "http://-oProxyCommand=x:8080", "is not an http(s)://HOST:PORT address"),
    ("after_flash", "usbsdmux '/dev/sg1 dut", "cannot be split into words"),
    ("ansible_port", 70000, "expected a whole number of at least 1 and at most 65535"),
]


@pytest.mark.parametrize("field, value, message", HOSTILE,
                         ids=[f"{f}={v!r}"[:40] for f, v, _ in HOSTILE])
def test_hostile_values_for_ssh_and_ansible_are_refused_in_one_line(
        workdir: Path, field: str, value: object, message: str) -> None:
    """What reaches ssh's command line and config, Ansible's inventory or bmaptool is
    parsed into what it names (a host, a port, a user, a path): an option ssh would
    obey ('-oProxyCommand=...'), a space or a newline that starts another ssh_config
    line, a template Ansible would run, is one line naming the file, line, device and
    field, before anything runs; in the device's entry or in defaults."""
    entry = {"profile": "pi5-8gb", "flash": "sd", "writer": "/dev/sdz", field: value}
    for where, text in (("devices.pi", {"devices": {"pi": entry}}),
                        ("defaults", {"defaults": {field: value},
                                      "devices": {"pi": {k: v for k, v in entry.items()
                                                         if k != field}}})):
        f = _write(workdir, json.dumps(text))  # JSON is YAML: the value exactly as given
        with pytest.raises(BuilderError) as e:
            parse_inventory(f)
        line = str(e.value)
        assert "\n" not in line
        assert re.match(rf"^lab.yml:1:\d+: devices\.pi\.{field}: {re.escape(repr(value))}"
                        if field != "ansible_port" else
                        rf"^lab.yml:1:\d+: devices\.pi\.{field}: ", line), (where, line)
        assert message in line, line


def test_ordinary_values_are_kept_as_written(workdir: Path) -> None:
    f = _write(workdir, "devices:\n  pi:\n    profile: pi5-8gb\n    flash: sd\n"
                        "    writer: /dev/disk/by-id/usb-LXA_USB-SD-Mux_00012345-0:0\n"
                        "    after_flash: usbsdmux /dev/sg1 dut\n"
                        "    ansible_host: pi5-bench-1.lab.example\n    ansible_port: 2222\n"
                        "    ansible_user: edge_admin\n"
                        "    ansible_ssh_private_key_file: keys/lab_ed25519\n"
                        "    api_url: https://[fd00::21]:8443\n    confirm: true\n"
                        "  gw:\n    profile: x86-gateway\n    flash: deploy-only\n"
                        "    ansible_host: fd00::41\n")
    pi, gw = parse_inventory(f)
    assert (pi.writer, pi.host, pi.port, pi.user, pi.key_file, pi.api_url, pi.confirm) == (
        "/dev/disk/by-id/usb-LXA_USB-SD-Mux_00012345-0:0", "pi5-bench-1.lab.example", 2222,
        "edge_admin", "keys/lab_ed25519", "https://[fd00::21]:8443", True)
    assert (gw.host, gw.confirm) == ("fd00::41", False)


def test_the_command_says_what_is_wrong_in_one_line_without_a_traceback(
        workdir: Path, run_builder) -> None:
    r = run_builder("lab", "run", "--inventory", "missing.yml")
    assert r.returncode == 2
    assert r.stderr == ("error: --inventory missing.yml: no such file; write a lab inventory "
                        "(docs/lab.md shows one) or give its path\n")
    _write(workdir, LAB.replace("profile: x86-gateway\n    flash: deploy-only\n"
                                "    ansible_host: 10.0.0.41",
                                "profile: x86-gatewya\n    flash: deploy-only\n"
                                "    ansible_host: 10.0.0.41"))
    r = run_builder("lab", "run", "--inventory", "lab.yml", "--yes")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
    assert re.match(r"error: lab.yml:\d+:5: devices.gw-1.profile: unknown profile "
                    r"'x86-gatewya'; did you mean 'x86-gateway'\?", r.stderr), r.stderr
    r = run_builder("lab", "run", "--inventory", "lab.yml", "--resume", "x", "--output", "y")
    assert r.returncode == 2 and r.stderr.startswith("error: --resume DIR continues a run")
    r = run_builder("lab", "run", "--resume", "nowhere")
    assert r.returncode == 2
    assert r.stderr == ("error: --resume nowhere: not a lab run directory (no run.json); "
                        "start one with --output DIR\n")
    assert not (workdir / "out" / "lab").exists()  # nothing started


# --- builds and releases: what each device gets ------------------------------------------

def _fake_out(out: Path, profile: str = "x86-gateway", kind: str | None = "disk-image") -> Path:
    """OUT/<profile>/manifest.json, with only what the lab reads, naming a real signed
    release in OUT/releases/ that OUT trusts, as a build leaves them."""
    p = ProfileStore().load(profile).concrete()
    out.mkdir(parents=True, exist_ok=True)
    rid = releases.signed_in(out).release_id
    (out / profile).mkdir(parents=True, exist_ok=True)
    (out / profile / "manifest.json").write_text(json.dumps({
        "release_id": rid, "delivery": {"kind": kind, "files": {}} if kind else None,
        "model": {"id": p.model.id, "quant": p.model.quant},
        "engine": {"kind": p.engine.kind, "built_on": "host"},
        "plan": {"total": 900 << 20, "gateway_overhead": 100 << 20},
        "layout": {}, "inputs": {"profile": p.model_dump(mode="json")}}))
    return out


def test_a_device_needs_a_build_of_its_profile_that_its_flash_method_can_write(
        tmp_path: Path) -> None:
    store = ProfileStore()
    f = _write(tmp_path, "devices:\n  gw:\n    profile: x86-gateway\n    flash: sd\n"
                         "    writer: /dev/sdz\n")
    [d] = parse_inventory(f)
    with pytest.raises(BuilderError, match=r"lab.yml:2:3: devices.gw: no build of x86-gateway"
                                           r" \(.*out/x86-gateway/manifest.json is "
                                           r"missing\); run `builder build --profile "
                                           r"x86-gateway` first"):
        lab.plan([d], store, tmp_path / "out")
    _fake_out(tmp_path / "out", kind="flash-package")
    with pytest.raises(BuilderError, match=r"devices.gw.flash: sd writes a disk-image, and the "
                                           r"x86-gateway build delivers flash-package; use "
                                           r"flash: deploy-only$"):
        lab.plan([d], store, tmp_path / "out")
    _fake_out(tmp_path / "out", kind="disk-image")
    [pl] = lab.plan([d], store, tmp_path / "out")
    m = json.loads((tmp_path / "out/x86-gateway/manifest.json").read_text())
    assert pl.release.release_id == m["release_id"] and pl.model == "test-model Q4_K_M"
    assert pl.thresholds == {"min_decode_tps": pl.p.verify.min_decode_tps,
                             "max_ttft_ms": pl.p.verify.max_ttft_ms,
                             "max_rss_bytes": 800 << 20}  # auto: the plan less the gateway
    assert pl.api_url == f"http://gw:{pl.p.service.port}" and pl.user == pl.p.os.admin_user


# --- which devices share a writer ----------------------------------------------------------

def test_devices_sharing_a_writer_or_the_recovery_usb_share_a_lane(tmp_path: Path) -> None:
    (tmp_path / "sd-mux").touch()
    (tmp_path / "by-id").symlink_to(tmp_path / "sd-mux")  # the same writer, another name
    text = (LAB.replace("/dev/disk/by-id/usb-SD_MUX_1\n    ansible_host: 10.0.0.21",
                        f"{tmp_path / 'sd-mux'}\n    ansible_host: 10.0.0.21")
            .replace("/dev/disk/by-id/usb-SD_MUX_1\n    ansible_host: 10.0.0.22",
                     f"{tmp_path / 'by-id'}\n    ansible_host: 10.0.0.22"))
    got = [[d.name for d in lane] for lane in lanes(parse_inventory(_write(tmp_path, text)))]
    assert got == [["pi5-bench-1", "pi5-bench-2"], ["orin-1", "orin-2"], ["gw-1"], ["gw-2"]]
    other = text.replace(f"{tmp_path / 'by-id'}\n", "/dev/disk/by-id/usb-SD_MUX_2\n")
    got = [[d.name for d in lane] for lane in lanes(parse_inventory(_write(tmp_path, other)))]
    assert got == [["pi5-bench-1"], ["pi5-bench-2"], ["orin-1", "orin-2"], ["gw-1"], ["gw-2"]]


def _plan(name: str, flash: str = "deploy-only", writer: str | None = None,
          rid: str = "rtest0001") -> lab.Plan:
    resolved = device("x86-gateway")
    p = resolved.profile
    d = LabDevice(name=name, profile="x86-gateway", flash=flash, host="127.0.0.1",
                  port=2200, writer=writer, where=f"lab.yml:1:1 ({name})")
    m = {"release_id": rid, "model": {"id": p.model.id, "quant": p.model.quant},
         "engine": {"kind": p.engine.kind, "built_on": "host"},
         "plan": {"total": 900 << 20, "gateway_overhead": 100 << 20}}
    return lab.Plan(d, resolved, Path("manifest.json"), m, release=_shared_release())


@functools.cache
def _shared_release() -> trust.Release:
    """One signed release for the plans of the run tests (they never read it)."""
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="edge-llm-lab-")) / "out"
    out.mkdir()
    b = releases.signed_in(out)
    return trust.open_release(b.dir, trust.signers(None, out))


class FakeSteps:
    """Step functions that record when they ran and fail where told."""

    def __init__(self, fail: set[tuple[str, str]] = frozenset(), seconds: float = 0.0):
        self.fail, self.seconds = set(fail), seconds
        self.calls: list[tuple[str, str, float, float]] = []
        self.lock = threading.Lock()

    def step(self, name: str):
        def run(c: lab.Ctx) -> str:
            t0 = time.monotonic()
            time.sleep(self.seconds)
            with self.lock:
                self.calls.append((c.plan.device.name, name, t0, time.monotonic()))
            if (c.plan.device.name, name) in self.fail:
                raise lab.StepFailed(f"{name} broke")
            if name == "benchmark":
                taken = {"decode_tps": 20.0, "ttft_ms_p50": 50.0, "ttft_ms_p95": 70.0,
                         "peak_rss_bytes": 300 << 20, "requests": 5, "max_tokens": 32,
                         "prefill_tps": 400.0, "prefill_prompt_tokens": 530,
                         "engine_build_seconds": None, "engine_built_on": "host"}
                c.record["benchmark"] = taken
                checks = bench.compare(taken, c.plan.thresholds)
                c.record["checks"] = [vars(x) for x in checks]
                bad = [x for x in checks if not x.ok]
                if bad:  # as the real step: under the bar fails
                    raise lab.StepFailed("under the profile's bar: "
                                         + "; ".join(bench.describe(x) for x in bad))
            return f"{name} fine"
        return run

    @property
    def steps(self) -> dict:
        return {n: self.step(n)
                for n in ("flash", "deploy", "ready", "verify", "benchmark", "tune")}

    def ran(self, device: str) -> list[str]:
        return [s for d, s, _, _ in self.calls if d == device]


def _lab(run_dir: Path, attempt: int = 1) -> lab.Lab:
    said: list[str] = []
    return lab.Lab(run_dir=run_dir, key=Path("key"), ssh=fleet.Ssh(),
                   attempt=attempt, say=said.append)


def test_devices_of_one_writer_run_one_after_another_and_the_others_side_by_side(
        tmp_path: Path) -> None:
    plans = [_plan("pi-a", "sd", "/dev/sdw"), _plan("pi-b", "sd", "/dev/sdw"),
             _plan("gw-a"), _plan("gw-b")]
    fake = FakeSteps(seconds=0.15)
    records = lab.run_lab(plans, _lab(tmp_path), fake.steps)
    assert [r["device"] for r in records] == ["pi-a", "pi-b", "gw-a", "gw-b"]
    assert all(r["passed"] for r in records)

    def span(device: str) -> tuple[float, float]:
        times = [(t0, t1) for d, _, t0, t1 in fake.calls if d == device]
        return min(t for t, _ in times), max(t for _, t in times)

    a, b, c, d = (span(n) for n in ("pi-a", "pi-b", "gw-a", "gw-b"))
    assert a[1] <= b[0]  # one writer: pi-b only after pi-a is done
    assert c[0] < d[1] and d[0] < c[1]  # no writer: side by side
    assert c[0] < a[1]  # and beside the writer's lane


# --- resuming -------------------------------------------------------------------------------

def test_resume_starts_at_the_first_step_that_did_not_pass() -> None:
    steps = ("deploy", "ready", "verify", "benchmark")
    ident = {"device": "a", "release_id": "r1"}

    def rec(*statuses: str, **over) -> dict:
        return {**ident, **over, "steps": [{"name": n, "status": s}
                                           for n, s in zip(steps, statuses, strict=False)]}

    assert lab.resume_from(None, ident, steps) == 0
    assert lab.resume_from(rec("passed", "passed", "failed", "not run"), ident, steps) == 2
    assert lab.resume_from(rec("passed", "failed", "not run", "not run"), ident, steps) == 1
    assert lab.resume_from(rec("failed", "not run", "not run", "not run"), ident, steps) == 0
    assert lab.resume_from(rec("passed", "passed", "passed", "passed"), ident, steps) == 4
    assert lab.resume_from(rec("passed", "passed"), ident, steps) == 2  # interrupted
    # another build (or device, or way there): everything again
    assert lab.resume_from(rec("passed", "passed", "failed", "not run", release_id="r2"),
                           ident, steps) == 0


def test_a_rerun_keeps_what_passed_and_redoes_what_failed(tmp_path: Path) -> None:
    plans = [_plan("good"), _plan("bad")]
    first = FakeSteps(fail={("bad", "verify")})
    records = lab.run_lab(plans, _lab(tmp_path, 1), first.steps)
    bad = records[1]
    assert not bad["passed"] and records[0]["passed"]
    assert [(s["name"], s["status"]) for s in bad["steps"]] == [
        ("deploy", "passed"), ("ready", "passed"), ("verify", "failed"),
        ("benchmark", "not run")]
    assert bad["steps"][3]["detail"] == "not run: verify did not pass"
    assert json.loads((tmp_path / "devices" / "bad.json").read_text()) == bad

    second = FakeSteps()
    records = lab.run_lab(plans, _lab(tmp_path, 2), second.steps)
    assert second.ran("good") == []  # everything passed before: nothing to do
    assert second.ran("bad") == ["verify", "benchmark"]
    good, bad = records
    assert good["passed"] and bad["passed"] and bad["attempts"] == [1, 2]
    assert [(s["name"], s["attempt"]) for s in bad["steps"]] == [
        ("deploy", 1), ("ready", 1), ("verify", 2), ("benchmark", 2)]
    assert good["benchmark"]["decode_tps"] == 20.0  # kept with the step it came from

    plans = [_plan("good", rid="rnew"), _plan("bad")]  # a new build: the device starts over
    third = FakeSteps()
    lab.run_lab(plans, _lab(tmp_path, 3), third.steps)
    assert third.ran("good") == ["deploy", "ready", "verify", "benchmark"]
    assert third.ran("bad") == []
    good = json.loads((tmp_path / "devices" / "good.json").read_text())
    assert good["release_id"] == "rnew" and good["attempts"] == [3]


# --- the flash paths, against the stand-ins -------------------------------------------------

def test_a_writer_that_is_not_a_block_device_fails_the_flash_and_nothing_after_it(
        tmp_path: Path) -> None:
    """The sd path is the one `builder flash` takes (the target's flash, flash.py's
    checks): a writer that is a plain file is refused before anything is written."""
    out = _fake_out(tmp_path / "out", kind="disk-image")
    card = tmp_path / "not-a-card"
    card.write_bytes(b"")
    f = _write(tmp_path, f"devices:\n  pi:\n    profile: x86-gateway\n    flash: sd\n"
                         f"    writer: {card}\n    confirm: true\n")
    [pl] = lab.plan(parse_inventory(f), ProfileStore(), out)
    (out / "x86-gateway" / "x.bmap").touch()
    m = json.loads((out / "x86-gateway" / "manifest.json").read_text())
    m["delivery"] = {"kind": "disk-image", "bytes": 1 << 20, "root_partuuid": "1-2",
                     "files": {"image": "x.img", "bmap": "x.bmap", "compressed": "x.bmap"}}
    pl.manifest = m
    record = lab.run_device(pl, _lab(tmp_path / "run"))
    assert [(s["name"], s["status"]) for s in record["steps"]] == [
        ("flash", "failed"), ("ready", "not run"), ("verify", "not run"),
        ("benchmark", "not run")]
    assert record["steps"][0]["detail"] == (f"--device {card}: not a block device (to write "
                                            "an image file, use --to-file PATH)")
    assert card.read_bytes() == b""


def test_no_jetson_in_recovery_mode_fails_the_flash_saying_how(tmp_path: Path,
                                                              monkeypatch) -> None:
    """The jetson-recovery path is `builder flash`'s for an Orin: the boards are looked
    for on this machine's USB (a fake sysfs with none in recovery mode)."""
    sysfs = make_usb_sysfs(tmp_path / "sys", [])
    monkeypatch.setenv("EDGE_LLM_SYSFS", str(sysfs))
    out = _fake_out(tmp_path / "out", profile="orin-nano-8gb", kind="flash-package")
    mpath = out / "orin-nano-8gb" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["delivery"].update(module=m["inputs"]["profile"]["jetson"]["module"],
                         files={"package": "flash.tar.zst"})
    mpath.write_text(json.dumps(m))
    f = _write(tmp_path, "devices:\n  orin:\n    profile: orin-nano-8gb\n"
                         "    flash: jetson-recovery\n    confirm: true\n")
    [pl] = lab.plan(parse_inventory(f), ProfileStore(), out)
    record = lab.run_device(pl, _lab(tmp_path / "run"))
    first = record["steps"][0]
    assert (first["name"], first["status"]) == ("flash", "failed")
    assert first["detail"].startswith("no Jetson in recovery mode: hold REC (force "
                                      "recovery), press and release RESET"), first["detail"]


def test_a_lab_run_writes_no_device_whose_entry_does_not_confirm_it(
        workdir: Path, run_builder) -> None:
    """A lab runs unattended, so nobody answers flash's question: a device is written
    only when its entry says confirm: true, or with --yes. Without either, one line
    naming the device and what it would overwrite, exit 2, before anything runs."""
    card = workdir / "card"
    card.write_bytes(b"")
    _write(workdir, f"devices:\n  pi:\n    profile: x86-gateway\n    flash: sd\n"
                    f"    writer: {card}\n")
    r = run_builder("lab", "run", "--inventory", "lab.yml", "--output", "run")
    assert (r.returncode, r.stderr) == (2, (
        f"error: lab.yml:2:3: devices.pi: flash: sd overwrites what {card} holds; add "
        "confirm: true to the device (or run with --yes) to let the lab write it\n"))
    assert not (workdir / "run").exists()
    assert lab_inventory.require_confirmed(parse_inventory(workdir / "lab.yml"), yes=True) \
        is None


def test_the_flash_step_itself_refuses_a_device_not_confirmed(tmp_path: Path) -> None:
    """The step checks again (a Lab made another way than the command does): nothing
    is handed to the target's flash without confirm: true or --yes."""
    with pytest.raises(lab.StepFailed) as e:
        lab.step_flash(lab.Ctx(_plan("pi", "sd", "/dev/sdz"), _lab(tmp_path), {}))
    assert str(e.value) == ("not written: lab.yml:1:1 (pi): devices.pi has no confirm: true "
                            "(add it, or run with --yes, to let the lab overwrite what "
                            "/dev/sdz holds)")


# --- the benchmark and the bars ---------------------------------------------------------------

class _Streamer(BaseHTTPRequestHandler):
    """A chat completions endpoint that streams `max_tokens` words, 10 ms apart, after a
    prefill of 20 ms plus 0.1 ms a prompt word (a prompt of 500 words: 70 ms, about
    7,100 words/s), with the usage an engine reports (a word is a token). It remembers
    the prompts it saw."""

    prompts: ClassVar[list[str]] = []
    context: ClassVar[int] = 100_000  # a longer prompt is refused, as an engine does

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer sekrit"
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        if len(prompt.split()) > self.context:
            err = json.dumps({"error": {"code": 400, "type": "exceed_context_size_error",
                                        "message": "the request exceeds the context"}})
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(err)))
            self.end_headers()
            self.wfile.write(err.encode())
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(0.02 + 0.0001 * len(prompt.split()))
        n = body["max_tokens"]
        for i in range(n):
            if i:
                time.sleep(0.01)
            chunk = {"choices": [{"delta": {"content": f"w{i} "}}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        usage = {"choices": [], "usage": {"completion_tokens": n,
                                          "prompt_tokens": len(prompt.split())}}
        self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args) -> None:
        pass


def test_the_benchmark_measures_decode_rate_and_time_to_first_token() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        b = measure.benchmark(f"http://127.0.0.1:{server.server_port}", "sekrit",
                              requests=4, max_tokens=11)
    finally:
        server.shutdown()
    assert b.requests == 4 and b.tokens == 44
    assert 50 < b.decode_tps < 101  # 10 tokens after the first in >= 100 ms
    assert 20 <= b.ttft_ms_p50 <= b.ttft_ms_p95 < 500
    # prefill: the engine-counted prompt over its time to first token (>= 20 + 51 ms)
    assert b.prefill_prompt_tokens and b.prefill_prompt_tokens > 500
    assert 1000 < b.prefill_tps < b.prefill_prompt_tokens / 0.07


def test_a_context_too_small_for_the_long_prompt_gets_a_shorter_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Streamer, "context", 300)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        b = measure.benchmark(f"http://127.0.0.1:{server.server_port}", "sekrit",
                              requests=1, max_tokens=2, prefill_words=1000)
    finally:
        server.shutdown()
    assert 200 < b.prefill_prompt_tokens <= 300  # 1000 words, then 500, then 250 fit
    assert b.prefill_tps


def test_the_long_prompts_share_no_prefix_a_cache_could_reuse() -> None:
    _Streamer.prompts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Streamer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        measure.benchmark(f"http://127.0.0.1:{server.server_port}", "sekrit", requests=1,
                          max_tokens=2, prefill_words=64, prefill_requests=3)
        measure.benchmark(f"http://127.0.0.1:{server.server_port}", "sekrit", requests=1,
                          max_tokens=2, prefill_words=64, prefill_requests=3)
    finally:
        server.shutdown()
    long = [p for p in _Streamer.prompts if len(p.split()) > 60]
    assert len(long) == 6
    assert len({p.split()[0] for p in long}) == 6  # each opens differently


def test_percentiles_are_values_that_were_measured() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert measure.percentile(values, 50) == 3.0
    assert measure.percentile(values, 95) == 5.0
    assert measure.percentile([7.0], 95) == 7.0
    assert measure.percentile(list(map(float, range(1, 101))), 95) == 95.0


def test_the_benchmark_is_held_to_the_profile_bars() -> None:
    bars = {"min_decode_tps": 5.0, "max_ttft_ms": 1000, "max_rss_bytes": 1 << 30}
    ok = bench.compare({"decode_tps": 5.0, "ttft_ms_p50": 1000, "peak_rss_bytes": 1 << 30}, bars)
    assert [(c.name, c.ok) for c in ok] == [("decode_tps", True), ("ttft_ms_p50", True),
                                            ("peak_rss_bytes", True)]  # at the bar passes
    bad = bench.compare({"decode_tps": 4.99, "ttft_ms_p50": 1001,
                       "peak_rss_bytes": (1 << 30) + 1}, bars)
    assert not any(c.ok for c in bad)
    unmeasured = bench.compare({"decode_tps": None, "ttft_ms_p50": 10}, bars)
    assert [c.ok for c in unmeasured] == [False, True, False]
    assert bench.describe(unmeasured[0]) == "decode tok/s not measured (bar >= 5)"
    assert bench.describe(bad[2]) == "engine peak RSS 1.0GiB (bar <= 1GiB)"


def test_tune_adds_a_step_where_the_engine_has_a_benchmark_to_tune(tmp_path: Path) -> None:
    gw, orin = _plan("gw"), _plan("orin")
    orin.resolved = device("orin-nano-8gb")
    orin.device = dataclasses.replace(orin.device, profile="orin-nano-8gb")
    tuning = dataclasses.replace(_lab(tmp_path), tune=lab.TuneOptions())
    assert tuning.steps_of(gw) == ("deploy", "ready", "verify", "benchmark", "tune")
    assert tuning.steps_of(orin) == ("deploy", "ready", "verify", "benchmark")  # TensorRT-LLM
    assert _lab(tmp_path).steps_of(gw) == ("deploy", "ready", "verify", "benchmark")


def test_a_rerun_with_tune_runs_only_the_tune_and_keeps_the_rest(tmp_path: Path) -> None:
    plans = [_plan("gw")]
    lab.run_lab(plans, _lab(tmp_path, 1), FakeSteps().steps)
    second = FakeSteps(fail={("gw", "tune")})
    tuning = dataclasses.replace(_lab(tmp_path, 2), tune=lab.TuneOptions())
    [r] = lab.run_lab(plans, tuning, second.steps)
    assert second.ran("gw") == ["tune"] and not r["passed"]
    assert [(s["name"], s["attempt"], s["status"]) for s in r["steps"]][-2:] == [
        ("benchmark", 1, "passed"), ("tune", 2, "failed")]
    assert r["benchmark"]["decode_tps"] == 20.0


TUNE_RECORD = {"overlay": "devices/gw/tuned.yaml",
               "runtime": {"threads": 2, "flash_attn": "off", "kv_cache_type": "f16",
                           "load_mode": "mmap", "ubatch_size": 256, "batch_size": 2048},
               "device": {"host": "ssh://edge@10.0.0.5:22", "cpu": "Cortex-A76", "cores": 4},
               "test": {"depth": 2048, "prompt_tokens": 512, "gen_tokens": 32,
                        "repetitions": 2},
               "default": {"decode_tps": 10.0, "prefill_tps": 40.0},
               "tuned": {"decode_tps": 12.0, "prefill_tps": 44.0}, "seconds": 300.0}


def test_the_reports_show_the_tuned_settings_per_profile(a_run) -> None:
    meta, records = a_run
    tuned = {**records[0], "steps": [*records[0]["steps"], {
        "name": "tune", "status": "passed", "attempt": 2, "seconds": 300.0,
        "detail": "threads 2, flash_attn off"}], "tune": TUNE_RECORD}
    md = lab_report.markdown(meta, [tuned, *records[1:]])
    assert "| ready | verify | benchmark | tune |" in md
    assert "## Tuned runtime settings (builder tune)" in md
    [row] = [line for line in md.splitlines() if "`devices/gw/tuned.yaml`" in line]
    assert "| x86-gateway | fast | Cortex-A76, 4 CPUs |" in row and "| 2048 |" in row
    assert "10 → 12 (1.20x)" in row and "40 → 44 (1.10x)" in row
    page = lab_report.html_page(meta, [tuned, *records[1:]])
    assert "<th>tune</th>" in page and "10 → 12 (1.20x)" in page
    # a run without --tune: no tune column, no section (the sample report stays as it is)
    assert "tune" not in lab_report.markdown(meta, records).lower()
    # an ARM device whose tune chose another weight format: the row says which
    arm = {**tuned, "tune": {**TUNE_RECORD, "weights": "Q4_0"}}
    [row] = [line for line in lab_report.markdown(meta, [arm]).splitlines()
             if "`devices/gw/tuned.yaml`" in line]
    assert "weights Q4_0, threads 2" in row


# --- the reports ------------------------------------------------------------------------------

@pytest.fixture
def a_run(tmp_path: Path) -> tuple[dict, list[dict]]:
    """Two attempts over three devices: one passed at once, one passed on the re-run, one
    still failing its benchmark (too slow for its bar)."""
    plans = [_plan("fast"), _plan("flaky"), _plan("slow")]
    slow = plans[2].p.model_copy(update={"verify": plans[2].p.verify.model_copy(
        update={"min_decode_tps": 50.0})})
    plans[2].resolved = dataclasses.replace(plans[2].resolved, profile=slow)
    lab.run_lab(plans, _lab(tmp_path, 1), FakeSteps(fail={("flaky", "ready")}).steps)
    records = lab.run_lab(plans, _lab(tmp_path, 2), FakeSteps().steps)
    meta = {"run_id": "20261127T140000", "inventory": "lab.yml",
            "attempts": [{"attempt": 1, "started": "2026-11-27T14:00:00Z",
                          "finished": "2026-11-27T14:05:00Z"},
                         {"attempt": 2, "started": "2026-11-27T14:10:00Z",
                          "finished": "2026-11-27T14:12:00Z"}]}
    return meta, records


def test_the_junit_has_one_testcase_per_device_and_step(a_run) -> None:
    meta, records = a_run
    root = ElementTree.fromstring(lab_report.junit(meta, records).encode())
    [suite] = root.iter("testsuite")
    cases = {(tc.get("classname"), tc.get("name")): tc for tc in suite.iter("testcase")}
    assert len(cases) == 12 and suite.get("tests") == "12"
    assert suite.get("failures") == "1" and suite.get("skipped") == "0"
    failure = cases[("lab.slow", "benchmark")].find("failure")
    assert failure is not None and "decode tok/s 20 (bar >= 50)" in failure.get("message")
    kept = cases[("lab.fast", "deploy")]
    assert "passed in attempt 1, kept" in kept.find("system-out").text
    props = {p.get("name"): p.get("value")
             for p in cases[("lab.flaky", "benchmark")].iter("property")}
    assert props["decode_tps"] == "20.0" and props["attempt"] == "2"
    assert cases[("lab.flaky", "deploy")].find("failure") is None


def test_a_step_not_reached_is_skipped_in_the_junit(tmp_path: Path) -> None:
    records = lab.run_lab([_plan("x")], _lab(tmp_path), FakeSteps(fail={("x", "deploy")}).steps)
    root = ElementTree.fromstring(lab_report.junit({"attempts": [{"attempt": 1}]},
                                                   records).encode())
    skipped = [tc.get("name") for tc in root.iter("testcase") if tc.find("skipped") is not None]
    assert skipped == ["ready", "verify", "benchmark"]


def test_the_markdown_report_says_what_happened(a_run) -> None:
    meta, records = a_run
    md = lab_report.markdown(meta, records)
    assert "**Result: 2 of 3 device(s) passed; not passed: slow.**" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines()
            if line.startswith("| ") and "x86-gateway" in line and "deploy-only" in line}
    assert "passed in attempt 1" in rows["fast"]
    assert "| failed |" in rows["slow"] or "| failed" in rows["slow"]
    bar = ProfileStore().load("x86-gateway").concrete().verify.min_decode_tps
    assert "20 ✗ | ≥ 50 |" in md and f"20 ✓ | ≥ {bar:g} |" in md
    assert "| ready | failed | 1 |" not in md  # the last attempt's outcome, not the first
    assert md.count("| 400 (530 tokens) |") == 3  # prefill, in the benchmark table


def test_the_html_report_is_self_contained_with_a_chart_against_the_bar(a_run) -> None:
    meta, records = a_run
    page = lab_report.html_page(meta, records)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    svg = ElementTree.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    ns = "{http://www.w3.org/2000/svg}"
    bars = list(svg.iter(f"{ns}rect"))
    assert len(bars) == 3
    fills = [b.get("fill") for b in bars]
    assert fills.count("#d0433a") == 1  # the slow device, under its bar
    ticks = [ln for ln in svg.iter(f"{ns}line") if ln.get("stroke-width") == "3"]
    assert len(ticks) == 3  # each device's bar
    widths = [float(b.get("width")) for b in bars]
    assert widths[0] == widths[1] == widths[2]  # the same 20 tok/s, the same length
    x_of = {t.get("x1") for t in ticks}
    assert len(x_of) == 2  # bars of 1 and 50 tok/s
    text = " ".join(t.text or "" for t in svg.iter(f"{ns}text"))
    assert "fast" in text and "slow" in text and "bar ≥ 50" in text
    assert page.count('<td class="num">400 (530 tokens)</td>') == 3  # prefill, per device


def test_the_reports_are_written_in_the_run_directory(a_run, tmp_path: Path) -> None:
    meta, records = a_run
    paths = lab_report.write(tmp_path, meta, records)
    assert [p.name for p in paths] == ["junit.xml", "report.md", "report.html"]
    ElementTree.parse(paths[0])


# --- the sample in the docs is the renderer's, from the records it shows ---------------------

def _sample() -> tuple[dict, list[dict]]:
    meta = json.loads((SAMPLE / "run.json").read_text())
    return meta, lab.load_records(SAMPLE)


def test_the_sample_report_is_what_the_renderer_makes_of_the_sample_records() -> None:
    meta, records = _sample()
    assert records, "docs/lab-sample/devices/*.json: no records"
    assert (SAMPLE / "report.md").read_text() == lab_report.markdown(meta, records), (
        "docs/lab-sample/report.md is stale: run `builder lab report docs/lab-sample`")
    assert {r["device"] for r in records} == {"vm1", "vm2"}  # from the VM fleet's run
    assert (SAMPLE / "report.html").read_text() == lab_report.html_page(meta, records)
    assert (SAMPLE / "junit.xml").read_text() == lab_report.junit(meta, records)


def test_docs_lab_md_embeds_the_sample_report_as_rendered() -> None:
    doc = (REPO / "docs" / "lab.md").read_text()
    assert lab_report.BEGIN in doc and lab_report.END in doc
    embedded = doc.split(lab_report.BEGIN, 1)[1].split(lab_report.END, 1)[0]
    meta, records = _sample()
    assert embedded == lab_report.embedded(meta, records), (
        "docs/lab.md's sample section is stale: EDGE_LLM_LAB_SAMPLE=docs/lab-sample pytest "
        "tests/test_fleet_e2e.py -k lab makes it again")
    assert lab_report.embed(doc, meta, records) == doc


def test_the_device_facts_command_reads_status_and_key_and_tolerates_what_is_missing(
        tmp_path: Path) -> None:
    """measure.DEVICE_FACTS as a device runs it (here without sudo or the unit)."""
    import subprocess
    import sys

    status, keys = tmp_path / "engine-status.json", tmp_path / "api-keys"
    status.write_text(json.dumps({"state": "ready", "build_seconds": 1234}))
    keys.write_text("# made at first boot\n\n  k3y-one  \nk3y-two\n")
    r = subprocess.run([sys.executable, "-c", measure.DEVICE_FACTS, "no-such.service",
                        str(status), str(keys)], capture_output=True, text=True, check=True)
    facts = json.loads(r.stdout)
    assert facts["engine_status"]["build_seconds"] == 1234 and facts["api_key"] == "k3y-one"
    assert "peak_rss_bytes" not in facts  # no such unit: not measured, not made up
    r = subprocess.run([sys.executable, "-c", measure.DEVICE_FACTS, "x.service",
                        str(tmp_path / "none"), str(tmp_path / "none")],
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == {"engine_status": None, "api_key": None}
    assert "sudo python3 -c " in measure.device_facts_command("u", "/run/s", "/etc/k")


def test_a_deploy_gets_the_device_alone_in_an_inventory_ansible_reads(tmp_path: Path) -> None:
    from builder.provision import inventory_hosts

    pl = _plan("gw-a")
    path = lab.ansible_inventory(lab.Ctx(pl, _lab(tmp_path), {}))
    assert inventory_hosts(path) == {"gw-a": {"ansible_host": "127.0.0.1",
                                              "ansible_port": 2200, "ansible_user": "edge"}}


def test_lab_report_writes_the_reports_again_from_the_records(a_run, tmp_path: Path,
                                                              cli) -> None:
    meta, records = a_run  # its records are in tmp_path/devices/
    (tmp_path / "run.json").write_text(json.dumps(meta))
    r = cli("lab", "report", str(tmp_path))
    assert r.code == 0, r.err
    assert (tmp_path / "report.md").read_text() == lab_report.markdown(meta, records)
    r = cli("lab", "report", str(tmp_path / "devices"))
    assert r.code == 2 and "not a lab run directory" in r.err


def test_the_command_runs_the_lab_and_a_rerun_resumes_it(workdir: Path, run_builder,
                                                         monkeypatch) -> None:
    """`builder lab run` as a user runs it, over an Orin that is not in recovery mode
    (a fake sysfs): its flash fails, the rest is not run, exit 1 with the way to resume;
    the run directory holds the inventory, the record, JUnit and the reports. Resumed, the
    flash is tried again (it did not pass) in attempt 2."""
    monkeypatch.setenv("EDGE_LLM_SYSFS", str(make_usb_sysfs(workdir / "sys", [])))
    out = _fake_out(workdir / "out", profile="orin-nano-8gb", kind="flash-package")
    mpath = out / "orin-nano-8gb" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["delivery"].update(module=m["inputs"]["profile"]["jetson"]["module"])
    mpath.write_text(json.dumps(m))
    _write(workdir, "devices:\n  orin:\n    profile: orin-nano-8gb\n"
                    "    flash: jetson-recovery\n    ansible_host: 10.0.0.31\n"
                    "    confirm: true\n")
    r = run_builder("lab", "run", "--inventory", "lab.yml", "--output", "run")
    assert r.returncode == 1, r.stderr
    assert "orin: flash ...\norin: flash failed (0s): no Jetson in recovery mode" in r.stderr
    assert r.stderr.splitlines()[-1] == ("error: lab run: 1 of 1 device(s) did not pass: "
                                         "orin: flash failed; fix and re-run with --resume "
                                         "run")
    run = workdir / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "devices", "junit.xml", "lab.yml", "report.html", "report.md", "run.json"]
    cases = {tc.get("name"): tc for tc in ElementTree.parse(run / "junit.xml").iter("testcase")}
    assert cases["flash"].find("failure") is not None
    assert all(cases[n].find("skipped") is not None for n in ("ready", "verify", "benchmark"))
    assert "**Result: 0 of 1 device(s) passed; not passed: orin.**" in (
        run / "report.md").read_text()

    r = run_builder("lab", "run", "--resume", "run")  # the inventory as that run had it
    assert r.returncode == 1
    assert "lab run run (resumed): 1 device(s) in 1 lane(s)" in r.stderr
    record = json.loads((run / "devices" / "orin.json").read_text())
    assert record["attempts"] == [1, 2] and record["steps"][0]["attempt"] == 2
    assert [a["attempt"] for a in json.loads((run / "run.json").read_text())["attempts"]] \
        == [1, 2]


def test_a_failed_facts_command_never_quotes_the_device_api_key() -> None:
    """What the facts command prints holds the device's API key; an ssh that fails after
    printing it (its output quoted in the error, as run() quotes a tool's last lines)
    must not carry the key into a lab record or report."""
    from builder.device.layout import Layout
    from builder.errors import BuilderError

    def ssh(command: str, what: str) -> str:
        raise BuilderError(f"{what} failed: ...\n{{\"api_key\": \"s3cret-key\"}}\nexit 255")

    with pytest.raises(bench.BenchFailed) as e:
        bench.on_device({"layout": Layout().to_json(), "engine": {}}, "http://x", ssh)
    assert "s3cret-key" not in str(e.value) and "over ssh failed" in str(e.value)
