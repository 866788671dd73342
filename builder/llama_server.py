"""llama-server: the command line rendered from a profile (pure), and a runner that
starts it, waits until the model is loaded, reads what it allocated, and asks it
things. Flags are llama.cpp's own (tools/server, common/arg.cpp)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BuilderError
from .schema import Runtime

MiB = 1024 * 1024


def load_mode(rt: Runtime) -> str:
    """llama-server --load-mode for the profile's mmap/mlock pair."""
    return {(True, False): "mmap", (True, True): "mmap+mlock", (False, True): "mlock",
            (False, False): "none"}[(rt.mmap, rt.mlock)]


def server_settings(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
                    threads: int, alias: str | None = None) -> list[tuple[str, str, str]]:
    """Every runtime knob as (llama-server flag, its environment variable, value): the
    one table both the command line and the service's EnvironmentFile come from.
    -c is the total over all slots (no unified KV cache), so each slot gets
    context_length cells; --fit off keeps the server from resizing what was planned."""
    rows = [
        ("--model", "LLAMA_ARG_MODEL", model),
        ("--host", "LLAMA_ARG_HOST", host),
        ("--port", "LLAMA_ARG_PORT", str(port)),
        ("--ctx-size", "LLAMA_ARG_CTX_SIZE", str(rt.context_length * rt.parallel)),
        ("--parallel", "LLAMA_ARG_N_PARALLEL", str(rt.parallel)),
        ("--kv-unified", "LLAMA_ARG_KV_UNIFIED", "false"),
        ("--threads", "LLAMA_ARG_THREADS", str(rt.threads or threads)),
        ("--batch-size", "LLAMA_ARG_BATCH", str(rt.batch_size)),
        ("--ubatch-size", "LLAMA_ARG_UBATCH", str(rt.ubatch_size)),
        ("--cache-type-k", "LLAMA_ARG_CACHE_TYPE_K", rt.kv_cache_type),
        ("--cache-type-v", "LLAMA_ARG_CACHE_TYPE_V", rt.kv_cache_type),
        ("--flash-attn", "LLAMA_ARG_FLASH_ATTN", rt.flash_attn),
        ("--load-mode", "LLAMA_ARG_LOAD_MODE", load_mode(rt)),
        ("--fit", "LLAMA_ARG_FIT", "off"),
        ("--metrics", "LLAMA_ARG_ENDPOINT_METRICS", "true"),
    ]
    if alias:
        rows.append(("--alias", "LLAMA_ARG_ALIAS", alias))
    return rows


def server_args(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
                threads: int, alias: str | None = None) -> list[str]:
    """The settings as llama-server flags (boolean flags take their on/off spelling)."""
    args: list[str] = []
    for flag, _, value in server_settings(rt, model, host=host, port=port, threads=threads,
                                          alias=alias):
        if value in ("true", "false"):
            args.append(flag if value == "true" else flag.replace("--", "--no-", 1))
        else:
            args += [flag, value]
    return args


def server_env(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
               threads: int, alias: str | None = None) -> dict[str, str]:
    """The settings as llama-server's own LLAMA_ARG_* environment variables."""
    rows = server_settings(rt, model, host=host, port=port, threads=threads, alias=alias)
    return {env: value for _, env, value in rows}


@dataclass
class LoadReport:
    """What llama-server says it allocated (bytes), parsed from its log."""

    model: float = 0  # the model file's tensors (mapped or loaded)
    repack: float = 0  # copies of weights re-laid-out for the CPU's SIMD (CPU_REPACK)
    kv: float = 0
    compute: float = 0
    output: float = 0
    n_ctx: int = 0
    raw: list[str] = field(default_factory=list)


_PATTERNS = {
    "repack": re.compile(r"REPACK model buffer size = +([\d.]+) MiB"),
    "model": re.compile(r"(?<!REPACK) model buffer size = +([\d.]+) MiB"),
    "kv": re.compile(r"KV buffer size = +([\d.]+) MiB"),
    "compute": re.compile(r"compute buffer size = +([\d.]+) MiB"),
    "output": re.compile(r"output buffer size = +([\d.]+) MiB"),
}
_N_CTX = re.compile(r"llama_context: n_ctx += (\d+)")


def parse_load_report(text: str) -> LoadReport:
    r = LoadReport()
    for line in text.splitlines():
        for name, pat in _PATTERNS.items():
            m = pat.search(line)
            if m:
                setattr(r, name, getattr(r, name) + float(m.group(1)) * MiB)
                r.raw.append(line.strip())
                break
        m = _N_CTX.search(line)
        if m:
            r.n_ctx = int(m.group(1))
    return r


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

    def chat(self, question: str, *, max_tokens: int = 32, timeout: float = 600) -> str:
        d = self.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "seed": 0}, timeout=timeout)
        return d["choices"][0]["message"]["content"]

    def complete(self, prompt: str, *, max_tokens: int = 16, timeout: float = 600
                 ) -> dict[str, Any]:
        return self.post("/completion", {"prompt": prompt, "n_predict": max_tokens,
                                         "temperature": 0, "seed": 0}, timeout=timeout)
