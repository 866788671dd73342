"""Does the engine's memory stay inside its plan? Hundreds of distinct conversations.

    .venv/bin/python benchmarks/soak.py [--model qwen2.5-0.5b-instruct | --model-file GGUF]
        [--conversations 300] [--words 250] [--ram 1408MiB] [--ctx 4096] [--parallel 1]

llama-server keeps a host copy of each slot's KV cache when the slot moves on to a new
prompt (its prompt cache, `--cache-ram`, 8 GiB by default), so every distinct
conversation adds its prompt's KV (Qwen2.5-0.5B, f16: 12 KiB per token) until the
ceiling. The planner sizes that ceiling from what the plan leaves (docs/planner.md) and
the engine's settings carry it.

One llama-server (the x86-gateway engine build; a synthetic model in the catalog's
shape, Q4_K_M, from the artifact cache) per configuration, one after the other:

  planned   the settings a device gets (builder/engines/llama_cpp/server.py), with the
            plan's --cache-ram and --ctx-checkpoints
  defaults  the same without those two: llama-server's own defaults

Each gets the same conversations: a distinct prompt of --words random words (no shared
prefix beyond the chat template), a few tokens back. The server's RSS (VmRSS) is
sampled every 0.2 s. Printed: RSS after every tenth of the run, the peak, the growth
over the second half, against the plan's figure for the engine (total minus the
gateway). The plan is that of a device with --ram of RAM (less the x86-gateway
profile's OS reserve), small by default so its prompt cache fills within the run.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)
from harness.llama_server import LlamaServer, free_port

from builder import planner, resolve
from builder.engines.llama_cpp.ggml import from_gguf
from builder.engines.llama_cpp.memory import repacked_types
from builder.engines.llama_cpp.server import server_args, server_env
from builder.model.synth import SYLLABLES
from builder.profiles import ProfileStore
from builder.schema import Runtime
from builder.units import MiB, format_size, parse_size

# llama-server's log when the prompt cache is full and it drops its oldest entries
EVICTED = re.compile(r"making room for prompt cache entry|cache size limit reached|"
                     r"cache token limit .* reached")


def cpu_features() -> frozenset[str]:
    flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    return frozenset(flags.group(1).split()) if flags else frozenset()


def soak_plan(model: Path, *, ram: int, ctx: int, parallel: int,
              profile: str = "x86-gateway") -> planner.Plan:
    """The plan of `profile` serving `model` (read from the file) on a device with `ram`,
    `ctx` tokens x `parallel` slots, repacking as this machine's CPU does."""
    rp = ProfileStore().load(profile)
    p = rp.concrete()
    p = p.model_copy(update={
        "runtime": p.runtime.model_copy(update={"context_length": ctx, "parallel": parallel}),
        "device": p.device.model_copy(update={"ram": ram})})
    shape = from_gguf(model)
    pin = resolve.plan_input(resolve.resolve(rp, p, shape), shape)
    return planner.plan(replace(pin, repack_types=repacked_types(cpu_features())),
                        suggest=False)


def _runtime(plan: planner.Plan) -> Runtime:
    i = plan.input
    return Runtime(context_length=i.context_length, parallel=i.parallel,
                   kv_cache_type=i.kv_cache_type, flash_attn=i.flash_attn,
                   ubatch_size=i.ubatch_size)


def planned_args(plan: planner.Plan, model: Path, port: int, threads: int) -> list[str]:
    """llama-server's command line for this plan (what a device's settings say)."""
    return server_args(_runtime(plan), str(model), port=port, threads=threads,
                       prompt_cache=plan.prompt_cache)


def planned_env(plan: planner.Plan, model: Path, port: int, threads: int) -> dict[str, str]:
    """The same settings as the LLAMA_ARG_* environment a device's engine unit reads."""
    return server_env(_runtime(plan), str(model), port=port, threads=threads,
                      prompt_cache=plan.prompt_cache)


def default_args(args: list[str]) -> list[str]:
    """The same command line, with llama-server's own prompt cache and checkpoints."""
    out = list(args)
    for flag in ("--cache-ram", "--ctx-checkpoints"):
        i = out.index(flag)
        del out[i:i + 2]
    return out


def engine_figure(plan: planner.Plan) -> int:
    """What the plan allows the engine process: its total without the gateway."""
    return plan.total - plan.gateway_overhead


def distinct_prompt(rng: random.Random, words: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
                    for _ in range(words))


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024


class Sampler(threading.Thread):
    """VmRSS of a process every `interval` seconds, until stopped."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append(rss(self.pid))
            except (OSError, AttributeError):
                return
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


@dataclass
class Soak:
    loaded: int  # RSS once the model is loaded
    after: list[int] = field(default_factory=list)  # RSS after each conversation
    peak: int = 0  # the highest sample, during conversations too
    prompt_tokens: int = 0
    evictions: int = 0  # times the server dropped old prompts to stay under its ceiling
    seconds: float = 0

    def growth(self, start: float = 0.5) -> int:
        """RSS gained from `start` (share of the run) to the end."""
        return self.after[-1] - self.after[int(len(self.after) * start) - 1]


def soak(binary: Path, args: list[str], log: Path, *, conversations: int, words: int,
         port: int, env: dict[str, str] | None = None, seed: int = 0,
         progress: bool = False) -> Soak:
    """`conversations` distinct prompts, one after another, RSS sampled throughout."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    with LlamaServer(binary, args, log, port=port, env=env) as srv:
        assert srv.proc is not None
        result = Soak(loaded=rss(srv.proc.pid))
        sampler = Sampler(srv.proc.pid)
        sampler.start()
        try:
            for n in range(conversations):
                d = srv.post("/v1/chat/completions", {
                    "messages": [{"role": "user", "content": distinct_prompt(rng, words)}],
                    "max_tokens": 4, "temperature": 0})
                result.prompt_tokens += d["usage"]["prompt_tokens"]
                result.after.append(rss(srv.proc.pid))
                if progress and (n + 1) % 10 == 0:
                    print(f"    {n + 1:4d} conversations  RSS {result.after[-1] / MiB:7.1f} MiB",
                          file=sys.stderr, flush=True)
        finally:
            sampler.stop()
        result.peak = max(sampler.peak, *result.after)
        result.evictions = len(EVICTED.findall(srv.log_text()))
    result.seconds = time.monotonic() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct",
                    help="catalog id: a synthetic model in its shape, Q4_K_M")
    ap.add_argument("--model-file", type=Path, help="a GGUF instead")
    ap.add_argument("--conversations", type=int, default=300)
    ap.add_argument("--words", type=int, default=250, help="words per prompt (~1.5 tokens each)")
    ap.add_argument("--ram", default="1408MiB", help="the planned device's RAM")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["planned", "defaults"])
    a = ap.parse_args()

    import tempfile

    from harness import engine_for, synthetic_gguf

    from builder.cache import Cache

    cache = Cache()
    engine = engine_for("x86-gateway", cache)
    model = a.model_file or synthetic_gguf(a.model, cache, engine)
    plan = soak_plan(model, ram=parse_size(a.ram), ctx=a.ctx, parallel=a.parallel)
    if plan.verdict is planner.Verdict.NO_FIT:
        sys.exit(f"{model.name} does not fit a device with {a.ram}: {plan.reason}")
    figure = engine_figure(plan)
    print(f"model      {model.name} ({format_size(model.stat().st_size)})")
    print(f"plan       device RAM {a.ram}, {a.ctx} ctx x {a.parallel} slot(s): engine "
          f"{format_size(figure)} = loaded {format_size(figure - plan.prompt_cache)} + "
          f"prompt cache {format_size(plan.prompt_cache)}; MemoryMax "
          f"{format_size(plan.memory_max)}")
    port = free_port()
    args = planned_args(plan, model, port, a.threads)
    configs = {"planned": args, "defaults": default_args(args)}
    results: dict[str, Soak] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            if a.only and name != a.only:
                continue
            cache_flag = (cfg[cfg.index("--cache-ram") + 1] + " MiB" if "--cache-ram" in cfg
                          else "llama.cpp default (8192 MiB)")
            print(f"{name:10s} --cache-ram {cache_flag}: {a.conversations} conversations ...",
                  file=sys.stderr, flush=True)
            results[name] = soak(engine.tool("llama-server"), cfg, Path(tmp) / f"{name}.log",
                                 conversations=a.conversations, words=a.words, port=port,
                                 progress=True)
    report(results, figure, a.conversations)


def report(results: dict[str, Soak], figure: int, n: int) -> None:
    names = list(results)
    print()
    print("RSS (MiB) after k conversations")
    print(f"{'k':>6s}" + "".join(f"{name:>12s}" for name in names))
    print(f"{'load':>6s}" + "".join(f"{results[x].loaded / MiB:12.1f}" for x in names))
    for k in sorted({max(1, n * t // 10) for t in range(1, 11)}):
        print(f"{k:6d}" + "".join(f"{results[x].after[k - 1] / MiB:12.1f}" for x in names))
    print()
    print(f"{'':28s}" + "".join(f"{name:>12s}" for name in names))
    rows = [
        ("peak RSS (MiB)", lambda r: f"{r.peak / MiB:.1f}"),
        ("growth, 2nd half (MiB)", lambda r: f"{r.growth() / MiB:+.1f}"),
        ("growth, last 10% (MiB)", lambda r: f"{r.growth(0.9) / MiB:+.1f}"),
        ("peak / planned engine", lambda r: f"{r.peak / figure:.2f}"),
        ("evictions (cache full)", lambda r: str(r.evictions)),
        ("prompt tokens (mean)", lambda r: f"{r.prompt_tokens / n:.0f}"),
        ("minutes", lambda r: f"{r.seconds / 60:.1f}"),
    ]
    for label, fmt in rows:
        print(f"{label:28s}" + "".join(f"{fmt(results[x]):>12s}" for x in names))
    print(f"planned engine figure: {figure / MiB:.1f} MiB")


if __name__ == "__main__":
    main()
