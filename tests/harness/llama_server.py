"""llama-server as a local process, for tests and benchmarks: start it, wait until the
model is loaded, read what it allocated, ask it things. Not used by `builder` itself."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from builder.engines.llama_cpp.server import LoadReport, parse_load_report
from builder.errors import BuilderError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`with LlamaServer(binary, args, log_file) as srv: srv.chat(...)`"""

    def __init__(self, binary: Path, args: list[str], log_file: Path, *,
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int, start_timeout: float = 300):
        self.cmd = [*(wrapper or []), str(binary), *args]
        self.log_file = log_file
        self.env = env
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        fh = self.log_file.open("wb")
        self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        fh.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BuilderError(f"llama-server exited with status {self.proc.returncode} "
                                   f"while loading: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # 503 while loading, or not listening yet
            time.sleep(0.5)
        self.stop()
        raise BuilderError(f"llama-server did not become ready in {self.start_timeout:.0f}s: "
                           f"{self.log_tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def log_tail(self) -> str:
        lines = [ln for ln in self.log_text().splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "(no output)"

    def report(self) -> LoadReport:
        return parse_load_report(self.log_text())

    def post(self, path: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def counter(self, name: str) -> float:
        """One of its own counters (GET /metrics, with --metrics), e.g.
        counter("prompt_tokens_total"): the prompt tokens it computed, not found cached."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=60) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(f"llamacpp:{name} "):
                    return float(line.split()[1])
        raise BuilderError(f"llama-server reports no {name} (is it run with --metrics?)")

    def chat(self, question: str, *, max_tokens: int = 32, timeout: float = 600) -> str:
        d = self.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 0}, timeout=timeout)
        return d["choices"][0]["message"]["content"]

    def complete(self, prompt: str, *, max_tokens: int = 16, timeout: float = 600
                 ) -> dict[str, Any]:
        return self.post("/completion", {"prompt": prompt, "n_predict": max_tokens,
                                         "temperature": 0, "seed": 0}, timeout=timeout)
