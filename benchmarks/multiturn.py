"""Does the next turn of a chat find its prefix? Time to first token per turn, three
stacks side by side in one run.

    .venv/bin/python benchmarks/multiturn.py [--conversations 4] [--turns 10]
        [--system-tokens 1000] [--shared-system] [--max-tokens 16]
        [--model GGUF | --synthetic CATALOG-ID] [--skip-diy] [--report RESULTS.json]

--conversations chat clients at once, each a closed loop of --turns turns (the next
question as soon as the answer is in, the whole history resent, as chat clients do),
each with a ~--system-tokens system prompt of its own (--shared-system: one for all),
on one 2-slot engine. The model is synthetic (random weights in a catalog model's exact
shape, Q4_K_M, built from the artifact cache like the tests' qwen05_q4; default
qwen2.5-0.5b-instruct): the answers are noise, the speed is that shape's. Each stack
starts fresh, gets one short warm-up request, then the conversations:

  gateway  builder/gateway (slot affinity) in front of llama-server with the settings a
           device gets (builder/engines/llama_cpp/server.py for the x86-gateway profile:
           2 slots x 8192 tokens, the plan's --cache-ram, --cache-reuse)
  plain    llama-server as its README runs it: `llama-server -m MODEL --parallel 2
           --ctx-size 16384 --threads N`, everything else its defaults (an 8 GiB prompt
           cache, its own similarity-based slot choice); clients talk to it directly
  diy      the do-it-yourself stack: llama-cpp-python (one Llama, one lock), FastAPI
           and SSE, a thin server (this file, --serve-diy) run from the venv
           benchmarks/gateway.py builds

TTFT is measured at the client, from sending the request to the first streamed event
with a choice in it (llama-server sends its first event with the first token), so it
does not depend on the model writing visible text, and it includes any wait for a
slot. llama-server's own `timings` (tokens computed for the prompt) are shown for the
two llama-server stacks. Printed: TTFT p50/p95 per turn, and turns 2..N p50 / turn 1
p50 per stack (the goal: <= 0.2). CPU time is shared with whatever else runs on the
machine: compare stacks within a run, not across runs. The raw results are written
after each stack (the path is printed); --report prints a saved run again.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)

SLOTS = 2
CTX = 8192  # per slot, as the x86-gateway profile
WORDS = ("the of and to in is was for on that with as by at from his her an were which "
         "time river stone cloud house paper music garden window light table market "
         "bridge winter summer forest engine ticket letter morning evening village "
         "mountain harbour station library kitchen doctor teacher painter farmer sailor "
         "question answer story reason number colour weather journey friend family").split()


# --- the do-it-yourself stack (runs under the diy venv's python: no builder imports) ---

def serve_diy(model: str, port: int, n_ctx: int, threads: int) -> None:
    """llama-cpp-python behind FastAPI with SSE: what the seed article builds."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_batch=512,
                verbose=False)
    lock = threading.Lock()  # one context: one generation at a time
    app = FastAPI()

    async def health(request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def chat(request) -> StreamingResponse:
        body = await request.json()

        def events():
            with lock:
                for chunk in llm.create_chat_completion(
                        messages=body["messages"], max_tokens=body.get("max_tokens", 16),
                        temperature=body.get("temperature", 0.8), stream=True):
                    yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # plain routes: the handlers take the request as it is (annotations here are strings)
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --- the clients ---------------------------------------------------------------------

def text_of(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def turn(port: int, key: str | None, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat turn: TTFT at the client, the reply's text, and llama-server's
    timings when it sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"port {port}: {r.status} {r.read()[:300]!r}")
    ttft, text, timings = None, [], {}
    for line in r:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("choices") and ttft is None:
            ttft = time.perf_counter() - t0
        for choice in event.get("choices") or ():
            text.append((choice.get("delta") or {}).get("content") or "")
        timings = event.get("timings") or timings
    conn.close()
    return {"ttft": ttft, "text": "".join(text), "prompt_n": timings.get("prompt_n"),
            "cache_n": timings.get("cache_n")}


def conversations(port: int, key: str | None, systems: list[str], questions: list[list[str]],
                  max_tokens: int) -> list[list[dict]]:
    """Every conversation in its own thread, turn after turn: results[c][t]."""
    results: list[list[dict]] = [[] for _ in systems]

    def run(c: int) -> None:
        messages = [{"role": "system", "content": systems[c]}]
        for q in questions[c]:
            messages.append({"role": "user", "content": q})
            got = turn(port, key, messages, max_tokens)
            results[c].append(got)
            messages.append({"role": "assistant", "content": got["text"]})

    threads = [threading.Thread(target=run, args=(c,)) for c in range(len(systems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# --- the stacks ----------------------------------------------------------------------

def appliance_args(model: Path, port: int, threads: int) -> list[str]:
    """llama-server's command line as a device's settings give it (x86-gateway profile,
    2 slots, the plan's prompt cache for this model)."""
    from builder import resolve
    from builder.engines.llama_cpp.ggml import from_gguf
    from builder.engines.llama_cpp.server import server_args
    from builder.profiles import ProfileStore

    rp = ProfileStore().load("x86-gateway")
    p = rp.concrete()
    rt = p.runtime.model_copy(update={"parallel": SLOTS, "context_length": CTX,
                                      "threads": threads})
    p = p.model_copy(update={"runtime": rt})
    plan = resolve.resolve(rp, p, from_gguf(model)).plan
    return server_args(rt, str(model), port=port, threads=threads,
                       prompt_cache=plan.prompt_cache)


def run_gateway(engine, model: Path, tmp: Path, threads: int, workload) -> dict:
    from harness.gateway_process import GatewayProcess
    from harness.llama_server import LlamaServer, free_port

    port = free_port()
    args = appliance_args(model, port, threads)
    with LlamaServer(engine.tool("llama-server"), args, tmp / "gateway-engine.log",
                     port=port) as srv, \
            GatewayProcess(tmp / "gw", srv.url, "m", slots=SLOTS, max_queue=16,
                           max_tokens=1024) as gw:
        return {"flags": " ".join(args[2:]), **workload(gw.port, gw.key),
                "assignments": {k: gw.metric("slot_assignments_total", f'kind="{k}"')
                                for k in ("continued", "fresh", "other", "client")}}


def run_plain(engine, model: Path, tmp: Path, threads: int, workload,
              extra: list[str] = ()) -> dict:
    from harness.llama_server import LlamaServer, free_port

    port = free_port()
    args = ["-m", str(model), "--port", str(port), "--parallel", str(SLOTS),
            "--ctx-size", str(CTX * SLOTS), "--threads", str(threads), *extra]
    with LlamaServer(engine.tool("llama-server"), args, tmp / "plain.log", port=port):
        return {"flags": " ".join(args[2:]), **workload(port, None)}


def run_diy(cache, model: Path, tmp: Path, threads: int, workload) -> dict:
    from gateway import diy_venv, wait_http  # benchmarks/gateway.py builds the venv
    from harness.llama_server import free_port

    py = diy_venv(cache)
    port = free_port()
    with (tmp / "diy.log").open("wb") as log:
        proc = subprocess.Popen([str(py), __file__, "--serve-diy", "--model", str(model),
                                 "--port", str(port), "--n-ctx", str(CTX),
                                 "--threads", str(threads)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_http(port, "/health")
        return {"flags": f"n_ctx={CTX} n_threads={threads}", **workload(port, None)}
    finally:
        proc.terminate()
        proc.wait()


# --- the report ----------------------------------------------------------------------

def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def per_turn(results: list[list[dict]], field: str) -> list[list[float]]:
    turns = len(results[0])
    return [[c[t][field] for c in results if c[t][field] is not None] for t in range(turns)]


def report(saved: dict) -> None:
    a = argparse.Namespace(**saved["settings"])
    runs: dict[str, dict] = saved["runs"]
    names = list(runs)
    print(f"\n{a.conversations} conversations x {a.turns} turns, system prompt "
          f"~{a.system_tokens} tokens ({'one for all' if a.shared_system else 'each its own'})"
          f", {a.max_tokens} tokens per answer, {SLOTS} slots, model {a.model_name}")
    for name in names:
        print(f"  {name:8s} {runs[name]['flags']}")
    print("\nTTFT ms per turn (p50 / p95 over the conversations)")
    print("turn " + "".join(f"{n:>22s}" for n in names))
    ttfts = {n: per_turn(runs[n]["results"], "ttft") for n in names}
    for t in range(a.turns):
        row = ""
        for n in names:
            xs = ttfts[n][t]
            row += f"{pct(xs, .5) * 1000:>12.0f} / {pct(xs, .95) * 1000:>7.0f}"
        print(f"{t + 1:>4d} {row}")
    print("\nprompt tokens computed per turn by llama-server (p50; turn 1 .. turn N)")
    for n in names:
        computed = per_turn(runs[n]["results"], "prompt_n")
        if all(computed):
            print(f"  {n:8s} " + " ".join(f"{statistics.median(x):.0f}" for x in computed))
    print("\nturns 2..N TTFT p50 / turn 1 TTFT p50 (goal <= 0.2)")
    for n in names:
        later = [x for xs in ttfts[n][1:] for x in xs]
        ratio = statistics.median(later) / statistics.median(ttfts[n][0])
        print(f"  {n:8s} {ratio:.3f}   (p95 of turns 2..N / turn 1 p50: "
              f"{pct(later, .95) / statistics.median(ttfts[n][0]):.3f})")
    if "gateway" in runs:
        print(f"\ngateway slot assignments: {runs['gateway']['assignments']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--shared-system", action="store_true",
                    help="one system prompt for every conversation")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=Path, help="a GGUF instead of a synthetic model")
    ap.add_argument("--synthetic", default="qwen2.5-0.5b-instruct", metavar="CATALOG-ID")
    ap.add_argument("--stacks", default="gateway,plain,diy")
    ap.add_argument("--skip-diy", action="store_true")
    ap.add_argument("--plain-extra", default="", metavar="FLAGS",
                    help="more llama-server flags for the plain stack (an A/B of one of "
                    "the device's settings, e.g. --no-kv-unified)")
    ap.add_argument("--report", type=Path, metavar="RESULTS.json",
                    help="print the report of a saved run and exit")
    ap.add_argument("--serve-diy", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n-ctx", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_diy:
        return serve_diy(str(a.model), a.port, a.n_ctx, a.threads)
    if a.report:
        return report(json.loads(a.report.read_text()))

    from harness import engine_for, synthetic_gguf
    from harness.llama_server import LlamaServer, free_port

    from builder.cache import Cache

    cache = Cache()
    engine = engine_for("x86-gateway", cache)
    model = a.model or synthetic_gguf(a.synthetic, cache, engine)
    a.model_name = model.name if a.model else f"synthetic {a.synthetic} Q4_K_M"
    tmp = Path(tempfile.mkdtemp(prefix="bench-multiturn-"))

    # the prompts: ~system_tokens tokens each, measured with the model's tokenizer
    port = free_port()
    with LlamaServer(engine.tool("llama-server"),
                     ["-m", str(model), "--port", str(port), "--ctx-size", "4096"],
                     tmp / "tokenize.log", port=port) as srv:
        def n_tokens(text: str) -> int:
            return len(srv.post("/tokenize", {"content": text})["tokens"])

        systems = []
        for c in range(1 if a.shared_system else a.conversations):
            rng = random.Random(1000 + c)
            text = f"You are the assistant of desk {c}. " + text_of(rng, a.system_tokens)
            while n_tokens(text) > a.system_tokens:
                text = text.rsplit(" ", 10)[0]
            systems.append(text)
        if a.shared_system:
            systems *= a.conversations
    questions = [[f"Question {t + 1}: " + text_of(random.Random(c * 100 + t), 20) + "?"
                  for t in range(a.turns)] for c in range(a.conversations)]

    def workload(port: int, key: str | None) -> dict:
        turn(port, key, [{"role": "user", "content": "hi"}], 2)  # warm up (page in)
        return {"results": conversations(port, key, systems, questions, a.max_tokens)}

    stacks = [s for s in a.stacks.split(",") if not (s == "diy" and a.skip_diy)]
    runs: dict[str, dict] = {}
    saved = {"settings": {k: getattr(a, k) for k in (
        "conversations", "turns", "system_tokens", "shared_system", "max_tokens",
        "threads", "model_name")}, "runs": runs}
    out = tmp / "results.json"
    print(f"raw results: {out}", file=sys.stderr, flush=True)
    for name in stacks:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        if name == "gateway":
            runs[name] = run_gateway(engine, model, tmp, a.threads, workload)
        elif name == "plain":
            runs[name] = run_plain(engine, model, tmp, a.threads, workload,
                                   shlex.split(a.plain_extra))
        elif name == "diy":
            runs[name] = run_diy(cache, model, tmp, a.threads, workload)
        else:
            raise SystemExit(f"--stacks: unknown stack {name!r}")
        runs[name]["seconds"] = time.monotonic() - start
        print(f"  {name}: {runs[name]['seconds']:.0f} s", file=sys.stderr, flush=True)
        out.write_text(json.dumps(saved, indent=1))
    report(saved)
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
