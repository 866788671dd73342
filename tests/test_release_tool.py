"""The device-side release tool (builder/device/release_tool.py) on a device tree in a
temporary directory (tests/device_tree.py): releases made by release.make, real
signatures (ssh-keygen -Y), real hashing and switching, fakes of systemctl and the
gateway at the tool's two boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from device_tree import Device, keygen


def test_install_verifies_and_makes_the_release_current_and_good(device: Device) -> None:
    r1 = device.make("r1")
    r = device.run("install", r1)
    assert r.returncode == 0, r.stderr
    assert device.current() == r1
    st = device.state()
    assert st["last_good"] == r1 and st["pending"] is None
    assert st["last_result"]["result"] == "installed"
    from builder.fleet.deploy import gate_for
    from builder.fleet.trust import Manifest

    data = (device.releases / r1 / "release.json").read_bytes()
    manifest = Manifest.parse(data, r1)
    assert manifest.engine.build_seconds is None  # built on the build host
    assert gate_for(manifest, 300) == 300


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda d: (d / "bin/llama-server").write_bytes(b"evil"), "sha256 differs"),
    (lambda d: (d / "bin/extra").write_bytes(b"x"), "not in the signed release"),
    (lambda d: (d / "engine.env").unlink(), "missing engine.env"),
    (lambda d: (d / "engine.env").chmod(0o666), "mode differs"),
    (lambda d: (d / "release.json").write_text(
        (d / "release.json").read_text().replace('"api_auth": false', '"api_auth": true')),
     "signature refused"),
    (lambda d: (d / "release.json.sig").unlink(), "not signed"),
], ids=["changed-file", "extra-file", "missing-file", "mode", "edited-manifest", "no-sig"])
def test_a_tampered_release_is_refused_and_nothing_switches(device: Device, tamper,
                                                            reason: str) -> None:
    r1 = device.make("r1")
    assert device.run("install", r1).returncode == 0
    r2 = device.make("r2", model=b"weights two")
    tamper(device.releases / r2)
    r = device.run("activate", r2, "--gate-timeout=5")
    assert r.returncode == 2 and reason in r.stderr, r.stderr
    assert device.current() == r1
    assert device.state()["last_result"]["result"] == "refused"
    assert not device.calls.exists()  # nothing restarted


def test_a_tampered_model_or_a_foreign_key_is_refused(device: Device, tmp_path: Path) -> None:
    r1 = device.make("r1")
    model = next(device.models.glob("*.gguf"))
    model.write_bytes(b"other weights")
    r = device.run("verify", r1)
    assert r.returncode == 2 and "sha256 differs" in r.stderr
    r2 = device.make("r2", model=b"weights two", key=keygen(tmp_path / "stranger"))
    r = device.run("verify", r2)
    assert r.returncode == 2 and "signature refused" in r.stderr


def test_activate_switches_restarts_and_gates(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", model=b"new weights")
    r = device.run("activate", r2, "--gate-timeout=10")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "activated"
    assert device.current() == r2 and device.state()["last_good"] == r2
    assert "restart edge-llm-engine.service edge-llm-gateway.service" in device.calls.read_text()
    # again: already current and good, nothing restarts
    device.calls.unlink()
    r = device.run("activate", r2)
    assert json.loads(r.stdout)["result"] == "unchanged" and not device.calls.exists()


def test_a_release_failing_its_gate_is_rolled_back(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", broken=True)
    r = device.run("activate", r2, "--gate-timeout=3")
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["result"] == "rolled-back" and out["serving"] == r1
    assert f"{r1} serves again" in out["restored"]
    assert device.current() == r1
    st = device.state()
    assert st["last_good"] == r1 and st["pending"] is None
    assert st["last_result"]["result"] == "rolled-back"


def test_an_engine_that_keeps_exiting_fails_the_gate_without_waiting_it_out(
        device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", broken=True)
    (device.root / "engine-restarts").write_text("3\n")  # systemd restarted it 3 times
    r = device.run("activate", r2, "--gate-timeout=600")
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert out["result"] == "rolled-back" and out["serving"] == r1, out
    assert out["reason"] == ("not healthy: edge-llm-engine.service exited 3 times since "
                             "the switch (journalctl -u edge-llm-engine.service)")
    assert f"{r1} serves again" in out["restored"]


def test_guard_undoes_a_switch_interrupted_before_its_gate(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", broken=True)
    # what a reset right after the switch leaves: pending set, current already switched
    st = device.state()
    st["pending"] = {"release": r2, "previous": r1, "since": 0, "timeout": 3}
    device.write_state(st)
    device.point_current_at(r2)
    r = device.run("guard", "--gate-timeout=3")
    assert r.returncode == 3, r.stderr
    assert device.current() == r1 and device.state()["pending"] is None


def test_guard_keeps_an_interrupted_switch_that_serves(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", model=b"weights two")
    st = device.state()
    st["pending"] = {"release": r2, "previous": r1, "since": 0, "timeout": 3}
    device.write_state(st)
    device.point_current_at(r2)
    assert device.run("guard", "--gate-timeout=5").returncode == 0
    assert device.current() == r2 and device.state()["last_good"] == r2


def test_rollback_returns_to_the_previous_good_release(device: Device) -> None:
    r1 = device.make("r1")
    device.run("install", r1)
    r2 = device.make("r2", model=b"weights two")
    assert device.run("activate", r2, "--gate-timeout=5").returncode == 0
    r = device.run("rollback", "--gate-timeout=5")
    assert r.returncode == 0, r.stderr
    assert device.current() == r1 and device.state()["last_good"] == r1


def test_gc_keeps_current_last_good_and_the_newest(device: Device) -> None:
    ids = []
    for i in range(1, 5):
        ids.append(device.make(f"r{i}", model=f"weights {i}".encode()))
        device.run("install", ids[-1])
    r = device.run("gc", "--keep=2")
    out = json.loads(r.stdout)
    assert sorted(out["kept"]) == sorted(ids[2:])
    assert sorted(out["removed_releases"]) == sorted(ids[:2])
    assert len(list(device.models.glob("*.gguf"))) == 2
    status = json.loads(device.run("status").stdout)
    assert status["current"] == ids[3] and status["releases"] == sorted(ids[2:])
    assert status["healthy"] is True
