"""Run the gateway (builder/gateway/) as a local process in front of a local engine:
what the tests and benchmarks use, the same code the device runs under systemd.

Two environment variables run the same tests against another gateway, as a device
would run it (the package copied to lib/edge_llm_gateway, `python3 -m edge_llm_gateway`):
EDGE_LLM_GATEWAY_PYTHON, an interpreter (say, one with Debian bookworm's aiohttp 3.8 and
prometheus-client 0.16), and EDGE_LLM_GATEWAY_SRC, the package directory to copy (say,
a release's lib/edge_llm_gateway, or an older checkout's builder/gateway)."""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.lab.measure import TLS  # a self-signed test certificate is fine here

from .llama_server import free_port


class GatewayProcess:
    """`with GatewayProcess(workdir, engine_url, model_id) as gw: gw.url, gw.key`"""

    def __init__(self, workdir: Path, engine_url: str, model_id: str, *,
                 port: int | None = None, start_timeout: float = 60,
                 keys_text: str | None = None, nofile: int | None = None,
                 **settings: Any):
        """keys_text: the API keys file as written (default: the one key, a newline);
        nofile: the process's open-file limit (what the unit's LimitNOFILE sets)."""
        self.dir = workdir
        self.port = port or free_port()
        self.key = "sk-edge-" + secrets.token_urlsafe(24)
        self.keys_text = self.key + "\n" if keys_text is None else keys_text
        self.nofile = nofile
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
        keys.write_bytes(self.keys_text.encode())
        keys.chmod(0o600)
        (self.dir / "gateway.json").write_text(json.dumps(self.config, indent=2))
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_file.open("wb") as fh:
            self.proc = subprocess.Popen(
                [*self._command(), "--config", str(self.dir / "gateway.json")],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=limits, env=self._env())
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

    def _command(self) -> list[str]:
        src = os.environ.get("EDGE_LLM_GATEWAY_SRC")
        python = os.environ.get("EDGE_LLM_GATEWAY_PYTHON") or sys.executable
        if not src and python == sys.executable:
            return [python, "-m", "builder.gateway"]
        lib = self.dir / "lib"
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(src or Path(__file__).parent / "gateway", lib / "edge_llm_gateway",
                        ignore=shutil.ignore_patterns("__pycache__"))
        return [python, "-m", "edge_llm_gateway"]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if (self.dir / "lib").is_dir():
            env["PYTHONPATH"] = str(self.dir / "lib")
        return env

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
            with urllib.request.urlopen(req, timeout=timeout, context=TLS) as r:
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

    def memory(self, field: str = "VmRSS") -> int:
        """Bytes of the gateway process's VmRSS (now) or VmHWM (peak), from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise BuilderError(f"no {field} in /proc/{self.proc.pid}/status")

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
