"""A device's filesystem in a temporary directory, with the device tool run on it
(python -m builder.device.release_tool, EDGE_LLM_ROOT pointing at the tree).

Releases are made by the builder's own release.make (real trees, real signatures),
then delivered the way the release role does: the tree under releases/ (or staged as
releases/.incoming-<id>) and the model into the content-addressed model directory. At
its two boundaries the tool meets fakes: `systemctl` (a script that records its
calls) and the gateway (an HTTP server on loopback that answers for whichever release
`current` names: healthy, or 503 for a release built broken; it wants the device's
API key when the release asks for one)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from harness.llama_server import free_port
from stand_ins import device_of

from builder.contracts import ReleaseInputs
from builder.device import api_keys
from builder.fleet import release
from builder.model.pipeline import ModelArtifact
from builder.profiles import ProfileStore
from builder.sshkey import allowed_signers_line

BROKEN = "BROKEN"  # a file in a release's bin/ that makes the fake gateway fail its health


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path


class Device:
    def __init__(self, root: Path, key: Path, port: int, work: Path) -> None:
        self.root, self.key, self.port, self.work = root, key, port, work
        self.releases = root / "opt/edge-llm/releases"
        self.models = root / "var/lib/edge-llm/models"
        self.keys = root / "etc/edge-llm/api-keys"
        self.calls = root / "systemctl.log"
        self.api_auth = False

    def run(self, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        fake = self.root / "fake-systemctl"
        full = {**os.environ, "EDGE_LLM_ROOT": str(self.root),
                "EDGE_LLM_SYSTEMCTL": str(fake), **(env or {})}
        return subprocess.run([sys.executable, "-m", "builder.device.release_tool", *args],
                              env=full, capture_output=True, text=True, timeout=120)

    def bundle(self, name: str, *, broken: bool = False, model: bytes = b"GGUF model",
               key: Path | None = None, api_auth: bool | None = None,
               engine_port: int = 8081) -> release.Bundle:
        """A signed release made by release.make on the build side (self.work)."""
        base = ProfileStore().load("x86-gateway").concrete()
        auth = self.api_auth if api_auth is None else api_auth
        p = base.model_copy(update={"service": base.service.model_copy(
            update={"port": self.port, "api_auth": auth, "engine_port": engine_port})})
        eng = self.work / f"engine-{name}"
        (eng / "bin").mkdir(parents=True, exist_ok=True)
        (eng / "bin/llama-server").write_bytes(b"#!engine " + name.encode())
        (eng / "bin/llama-server").chmod(0o755)
        (eng / "bin/libllama.so.0").write_bytes(b"lib")
        (eng / "bin/libllama.so").unlink(missing_ok=True)
        (eng / "bin/libllama.so").symlink_to("libllama.so.0")
        if broken:
            (eng / "bin" / BROKEN).write_text("this release fails its health check\n")
        gw = self.work / "gateway"
        gw.mkdir(exist_ok=True)
        (gw / "__init__.py").write_text('"""a gateway package"""\n')
        (gw / "app.py").write_text("ANSWER = 42\n")
        mfile = self.work / f"model-{name}.gguf"
        mfile.write_bytes(model)
        sha = hashlib.sha256(model).hexdigest()
        i = ReleaseInputs(device=device_of(p, f"dev-{name}"), engine_dir=eng,
                          engine_key=f"engine-{name}", gateway_dir=gw, gateway_key="g",
                          model=ModelArtifact(mfile, sha, "Q4_K_M", "gguf"),
                          model_id="test-model")
        return release.make(i, self.work / "releases", key or self.key)

    def deliver(self, b: release.Bundle, *, incoming: bool = False) -> Path:
        """Put a release and its model where the release role puts them."""
        name = f".incoming-{b.release_id}" if incoming else b.release_id
        dest = self.releases / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(b.tree, dest, symlinks=True)
        self.models.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(b.model_path, self.models / Path(b.manifest["model"]["path"]).name)
        return dest

    def make(self, name: str, **kw) -> str:
        """Make and deliver a release; its id."""
        b = self.bundle(name, **kw)
        self.deliver(b)
        return b.release_id

    def current(self) -> str | None:
        link = self.root / "opt/edge-llm/current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def state(self) -> dict:
        return json.loads((self.root / "var/lib/edge-llm/release-state.json").read_text())

    def write_state(self, st: dict) -> None:
        (self.root / "var/lib/edge-llm/release-state.json").write_text(json.dumps(st))

    def point_current_at(self, rid: str) -> None:
        """What a reset right after a switch leaves behind."""
        tmp = self.root / "opt/edge-llm/.test-link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"releases/{rid}")
        os.replace(tmp, self.root / "opt/edge-llm/current")


@pytest.fixture
def device(tmp_path: Path):
    root = tmp_path / "device"
    key = keygen(tmp_path / "signing")
    (root / "etc/edge-llm").mkdir(parents=True)
    (root / "etc/edge-llm/allowed_signers").write_text(
        allowed_signers_line((tmp_path / "signing.pub").read_text()) + "\n")
    (root / "opt/edge-llm/releases").mkdir(parents=True)
    fake = root / "fake-systemctl"
    # `show` answers as systemd does for an engine that keeps exiting (a release built
    # broken, once a test wrote the count to engine-restarts), else nothing
    fake.write_text(
        f"#!/bin/sh\necho \"$@\" >> {root / 'systemctl.log'}\n"
        f"if [ \"$1\" = show ] && [ -f {root / 'engine-restarts'} ] && "
        f"[ -e {root / 'opt/edge-llm/current/bin' / BROKEN} ]; then\n"
        f"  echo \"NRestarts=$(cat {root / 'engine-restarts'})\"; echo ActiveState=activating\n"
        "fi\n")
    fake.chmod(0o755)
    port = free_port()
    dev = Device(root, key, port, tmp_path / "build")

    class Gateway(http.server.BaseHTTPRequestHandler):
        def _current(self) -> Path | None:
            cur = dev.current()
            return dev.releases / cur if cur else None

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            cur = self._current()
            ok = cur is not None and not (cur / "bin" / BROKEN).exists()
            self._send(200 if ok else 503, {"status": "ok" if ok else "unavailable"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            cur = self._current()
            gw = json.loads((cur / "gateway.json").read_text()) if cur else {}
            if gw.get("api_auth"):
                keys = api_keys.read(dev.keys)  # the gateway's reader
                if self.headers.get("Authorization") != f"Bearer {keys[0]}":
                    return self._send(401, {"error": {"code": "invalid_api_key"}})
            self._send(200, {"choices": [{"message": {"content": "OK"}}]})

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield dev
    server.shutdown()
