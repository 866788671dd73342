"""Run the gateway (builder/gateway/) as a local process in front of a local engine:
what the tests and benchmarks use, the same code the device runs under systemd."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .errors import BuilderError
from .llama_server import free_port


class GatewayProcess:
    """`with GatewayProcess(workdir, engine_url, model_id) as gw: gw.url, gw.key`"""

    def __init__(self, workdir: Path, engine_url: str, model_id: str, *,
                 port: int | None = None, start_timeout: float = 60, **settings: Any):
        self.dir = workdir
        self.port = port or free_port()
        self.key = "sk-edge-" + secrets.token_urlsafe(24)
        self.config = {"model_id": model_id, "listen_host": "127.0.0.1",
                       "listen_port": self.port, "engine_url": engine_url,
                       "keys_file": str(workdir / "api-keys"), **settings}
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "gateway.log"

    @property
    def url(self) -> str:
        scheme = "https" if self.config.get("tls_cert") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> GatewayProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = self.dir / "api-keys"
        keys.write_text(self.key + "\n")
        keys.chmod(0o600)
        (self.dir / "gateway.json").write_text(json.dumps(self.config, indent=2))
        with self.log_file.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "builder.gateway", "--config",
                 str(self.dir / "gateway.json")],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BuilderError(f"the gateway exited with status {self.proc.returncode}: "
                                   f"{self.log_file.read_text()[-500:]}")
            if "serving " in self.log_file.read_text(errors="replace"):
                return
            time.sleep(0.1)
        self.stop()
        raise BuilderError(f"the gateway did not start in {self.start_timeout:.0f}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, *, key: str | None = None, timeout: float = 30
            ) -> tuple[int, bytes]:
        """(status, body) of a GET, with the API key unless key="" is given."""
        key = self.key if key is None else key
        req = urllib.request.Request(self.url + path, headers=(
            {"Authorization": f"Bearer {key}"} if key else {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. metric("requests_total", 'route="/health"');
        0 when absent."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith("edge_llm_gateway_" + name) and labels in line:
                head, _, value = line.rpartition(" ")
                if head.split("{")[0] == "edge_llm_gateway_" + name:
                    total += float(value)
        return total
