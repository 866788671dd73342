"""The device-side release tool (builder/device/release.py) on a device tree
in a temporary directory: real signatures (ssh-keygen -Y), real hashing and switching.
At its two boundaries it meets fakes: `systemctl` (a script that records its calls) and
the gateway (an HTTP server on loopback that answers for whichever release `current`
names: healthy, or 503 for a release built broken)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.sshkey import allowed_signers_line
from builder.testing.llama_server import free_port


class Device:
    def __init__(self, root: Path, key: Path, port: int) -> None:
        self.root, self.key, self.port = root, key, port
        self.releases = root / "opt/edge-llm/releases"
        self.models = root / "var/lib/edge-llm/models"
        self.calls = root / "systemctl.log"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        fake = self.root / "fake-systemctl"
        env = {**os.environ, "EDGE_LLM_ROOT": str(self.root),
               "EDGE_LLM_SYSTEMCTL": str(fake)}
        return subprocess.run([sys.executable, "-m", "builder.device.release", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    def make(self, rid: str, *, broken: bool = False, model: bytes = b"GGUF model",
             key: Path | None = None) -> Path:
        """A release as `builder release` lays it out, signed."""
        rdir = self.releases / rid
        (rdir / "bin").mkdir(parents=True)
        (rdir / "bin/llama-server").write_bytes(b"#!engine " + rid.encode())
        (rdir / "bin/llama-server").chmod(0o755)
        (rdir / "bin/libllama.so.0").write_bytes(b"lib")
        (rdir / "bin/libllama.so.0").chmod(0o644)
        (rdir / "bin/libllama.so").symlink_to("libllama.so.0")
        (rdir / "engine.env").write_text(f"LLAMA_ARG_CTX_SIZE=\"{len(rid)}\"\n")
        (rdir / "engine.env").chmod(0o644)
        sha = hashlib.sha256(model).hexdigest()
        self.models.mkdir(parents=True, exist_ok=True)
        (self.models / f"{sha}.gguf").write_bytes(model)
        files = {str(p.relative_to(rdir)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                             "mode": f"{p.stat().st_mode & 0o777:04o}"}
                 for p in rdir.rglob("*") if p.is_file() and not p.is_symlink()}
        manifest = {"format": 1, "release_id": rid, "files": files,
                    "links": {"bin/libllama.so": "libllama.so.0"},
                    "model": {"sha256": sha, "bytes": len(model)},
                    "gateway": {"port": self.port, "tls": False, "api_auth": False},
                    "test_broken": broken}
        (rdir / "release.json").write_text(json.dumps(manifest))
        subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key or self.key), "-n",
                        "edge-llm-release", str(rdir / "release.json")], check=True)
        return rdir

    def current(self) -> str | None:
        link = self.root / "opt/edge-llm/current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def state(self) -> dict:
        return json.loads((self.root / "var/lib/edge-llm/release-state.json").read_text())


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path


@pytest.fixture
def device(tmp_path: Path):
    root = tmp_path / "device"
    key = _keygen(tmp_path / "signing")
    (root / "etc/edge-llm").mkdir(parents=True)
    (root / "etc/edge-llm/allowed_signers").write_text(
        allowed_signers_line((tmp_path / "signing.pub").read_text()) + "\n")
    (root / "opt/edge-llm/releases").mkdir(parents=True)
    fake = root / "fake-systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {root / 'systemctl.log'}\n")
    fake.chmod(0o755)
    port = free_port()
    dev = Device(root, key, port)

    class Gateway(http.server.BaseHTTPRequestHandler):
        def _healthy(self) -> bool:
            cur = dev.current()
            return bool(cur) and not json.loads(
                (dev.releases / cur / "release.json").read_text())["test_broken"]

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            ok = self._healthy()
            self._send(200 if ok else 503, {"status": "ok" if ok else "unavailable"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(200, {"choices": [{"message": {"content": "OK"}}]})

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield dev
    server.shutdown()


def test_install_verifies_and_makes_the_release_current_and_good(device: Device) -> None:
    device.make("r1")
    r = device.run("install", "r1")
    assert r.returncode == 0, r.stderr
    assert device.current() == "r1" and device.state()["last_good"] == "r1"


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda d: (d / "bin/llama-server").write_bytes(b"evil"), "sha256 differs"),
    (lambda d: (d / "bin/extra").write_bytes(b"x"), "file not in the signed release"),
    (lambda d: (d / "engine.env").unlink(), "missing engine.env"),
    (lambda d: (d / "engine.env").chmod(0o666), "mode differs"),
    (lambda d: (d / "release.json").write_text(
        (d / "release.json").read_text().replace('"test_broken": false', '"x": 1')),
     "signature refused"),
    (lambda d: (d / "release.json.sig").unlink(), "not signed"),
], ids=["changed-file", "extra-file", "missing-file", "mode", "edited-manifest", "no-sig"])
def test_a_tampered_release_is_refused_and_nothing_switches(device: Device, tamper,
                                                            reason: str) -> None:
    device.make("r1")
    assert device.run("install", "r1").returncode == 0
    tamper(device.make("r2"))
    r = device.run("activate", "r2", "--gate-timeout=5")
    assert r.returncode == 2 and reason in r.stderr, r.stderr
    assert device.current() == "r1"
    assert device.state()["last_result"]["result"] == "refused"
    assert not device.calls.exists()  # nothing restarted


def test_a_tampered_model_or_a_foreign_key_is_refused(device: Device, tmp_path: Path) -> None:
    device.make("r1")
    model = next(device.models.glob("*.gguf"))
    model.write_bytes(b"other weights")
    r = device.run("verify", "r1")
    assert r.returncode == 2 and "sha256 differs" in r.stderr
    device.make("r2", model=b"weights two", key=_keygen(tmp_path / "stranger"))
    r = device.run("verify", "r2")
    assert r.returncode == 2 and "signature refused" in r.stderr


def test_activate_switches_restarts_and_gates(device: Device) -> None:
    device.make("r1")
    device.run("install", "r1")
    device.make("r2", model=b"new weights")
    r = device.run("activate", "r2", "--gate-timeout=10")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == "activated"
    assert device.current() == "r2" and device.state()["last_good"] == "r2"
    assert "restart edge-llm-engine.service edge-llm-gateway.service" in device.calls.read_text()
    # again: already current and good, nothing restarts
    device.calls.unlink()
    r = device.run("activate", "r2")
    assert json.loads(r.stdout)["result"] == "unchanged" and not device.calls.exists()


def test_a_release_failing_its_gate_is_rolled_back(device: Device) -> None:
    device.make("r1")
    device.run("install", "r1")
    device.make("r2", broken=True)
    r = device.run("activate", "r2", "--gate-timeout=3")
    assert r.returncode == 3
    out = json.loads(r.stdout)
    assert out["result"] == "rolled-back" and out["serving"] == "r1"
    assert "r1 serves again" in out["restored"]
    assert device.current() == "r1"
    st = device.state()
    assert st["last_good"] == "r1" and st["pending"] is None
    assert st["last_result"]["result"] == "rolled-back"


def test_guard_undoes_a_switch_interrupted_before_its_gate(device: Device) -> None:
    device.make("r1")
    device.run("install", "r1")
    device.make("r2", broken=True)
    # what a reset right after the switch leaves: pending set, current already switched
    st = device.state()
    st["pending"] = {"release": "r2", "previous": "r1", "since": 0, "timeout": 3}
    (device.root / "var/lib/edge-llm/release-state.json").write_text(json.dumps(st))
    os.replace(_link(device, "r2"), device.root / "opt/edge-llm/current")
    r = device.run("guard", "--gate-timeout=3")
    assert r.returncode == 3, r.stderr
    assert device.current() == "r1" and device.state()["pending"] is None


def test_guard_keeps_an_interrupted_switch_that_serves(device: Device) -> None:
    device.make("r1")
    device.run("install", "r1")
    device.make("r2", model=b"weights two")
    st = device.state()
    st["pending"] = {"release": "r2", "previous": "r1", "since": 0, "timeout": 3}
    (device.root / "var/lib/edge-llm/release-state.json").write_text(json.dumps(st))
    os.replace(_link(device, "r2"), device.root / "opt/edge-llm/current")
    assert device.run("guard", "--gate-timeout=5").returncode == 0
    assert device.current() == "r2" and device.state()["last_good"] == "r2"


def test_rollback_returns_to_the_previous_good_release(device: Device) -> None:
    device.make("r1")
    device.run("install", "r1")
    device.make("r2", model=b"weights two")
    assert device.run("activate", "r2", "--gate-timeout=5").returncode == 0
    r = device.run("rollback", "--gate-timeout=5")
    assert r.returncode == 0, r.stderr
    assert device.current() == "r1" and device.state()["last_good"] == "r1"


def test_gc_keeps_current_last_good_and_the_newest(device: Device) -> None:
    for i in range(1, 5):
        device.make(f"r{i}", model=f"weights {i}".encode())
        device.run("install", f"r{i}")
    r = device.run("gc", "--keep=2")
    out = json.loads(r.stdout)
    assert sorted(out["kept"]) == ["r3", "r4"] and sorted(out["removed_releases"]) == ["r1",
                                                                                      "r2"]
    assert len(list(device.models.glob("*.gguf"))) == 2
    status = json.loads(device.run("status").stdout)
    assert status["current"] == "r4" and status["releases"] == ["r3", "r4"]
    assert status["healthy"] is True


def _link(device: Device, rid: str) -> Path:
    tmp = device.root / "opt/edge-llm/.test-link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(f"releases/{rid}")
    return tmp
