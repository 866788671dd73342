"""Decode speed against the hardware limit: memory bandwidth / bytes read per token.

    .venv/bin/python benchmarks/roofline.py [--models qwen2.5-0.5b-instruct,qwen2.5-1.5b-instruct]
        [--threads 1,2] [--depths 0,2048] [--gen 64] [--reps 3] [--no-tune]

Decoding one token reads every weight matrix once (the token embedding: one row; with
tied embeddings the same matrix is read whole as the output layer) and the KV cache of
every earlier token. So decode is bound by memory bandwidth:

    bound (tokens/s) = read bandwidth / (weights touched + KV at the context)

Measured in the same run, on this machine:
  bandwidth  a numpy read kernel in T threads, each over its own slice of a 1 GiB float32
             array (far larger than any cache): np.dot(x, x) (OpenBLAS sdot, one BLAS
             thread per caller) and np.add.reduce(x), best of --bw-reps; the faster
             kernel is taken (a higher bandwidth only lowers the fraction). Measured
             before and after the decode runs; the mean is used, both are printed.
  bytes      from the GGUF's own tensor table (the gguf package, engines/llama_cpp/ggml.py from_gguf
             for the architecture): every tensor, except the embedding where a separate
             output matrix exists (then one row), plus K and V for the mean context of
             the run (depth + gen/2 tokens), at the KV type's size.
  decode     llama-bench (the x86-gateway engine build, its x86-64-v3 backend) tg --gen
             tokens after --depth tokens of context, -t T, --reps repetitions.

Models are synthetic (random weights in the catalog's exact shapes, Q4_K_M, from the
artifact cache; decode speed depends on the shapes, not the values). Then, unless
--no-tune, what the profile controls that can change decode (runtime.flash_attn,
kv_cache_type, mmap/mlock; threads are in the table above; batch and ubatch only shape
prefill) is tried at the longest depth with all threads, and the best is reported
against the profile's defaults. Prints ratios; nothing here asserts a speed.
"""

# (the BLAS thread count is set before numpy loads OpenBLAS, so imports follow it)
from __future__ import annotations

import os

# one BLAS thread per caller: the kernel's threads are ours
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)
import numpy as np

from builder.engines.llama_cpp.ggml import from_gguf
from builder.engines.llama_cpp.memory import KV_BYTES
from builder.units import GiB, MiB

# --- bandwidth -------------------------------------------------------------------------

KERNELS = {
    "sdot": lambda x: np.dot(x, x),
    "sum": lambda x: np.add.reduce(x),
}


def read_bandwidth(threads: int, *, size: int = GiB, reps: int = 5) -> dict[str, float]:
    """Bytes/s each kernel reads with `threads` threads over `size` bytes (best of reps)."""
    a = np.ones(size // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    out = {}
    for name, kernel in KERNELS.items():
        best = float("inf")
        for _ in range(reps):
            workers = [threading.Thread(target=kernel, args=(p,)) for p in parts]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = min(best, time.perf_counter() - t0)
        out[name] = a.nbytes / best
    return out


# --- bytes per token -------------------------------------------------------------------

@dataclass(frozen=True)
class TokenBytes:
    weights: int  # weight bytes one decoded token reads
    kv_per_token: float  # KV bytes per token of context (K and V, every layer)

    def at(self, context: float) -> float:
        return self.weights + self.kv_per_token * context


def token_bytes(gguf_path: Path, kv_type: str = "f16") -> TokenBytes:
    """What decoding one token reads, from the file's tensor table."""
    import gguf

    shape = from_gguf(gguf_path)
    tensors = {t.name: t for t in gguf.GGUFReader(str(gguf_path)).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    embd = tensors["token_embd.weight"]
    if "output.weight" in tensors:  # untied: the embedding is only looked up, one row
        rows = int(embd.shape[1])
        total -= int(embd.n_bytes) - int(embd.n_bytes) // rows
    arch = shape.arch
    return TokenBytes(total, arch.n_layer * 2 * arch.n_embd_kv * KV_BYTES[kv_type])


# --- decode ----------------------------------------------------------------------------

def llama_bench(binary: Path, model: Path, *, threads: int, depth: int, gen: int, reps: int,
                extra: list[str] | None = None) -> float:
    """Decode tokens/s (llama-bench tg `gen` after `depth` tokens)."""
    cmd = [str(binary), "-m", str(model), "-p", "0", "-n", str(gen), "-d", str(depth),
           "-t", str(threads), "-r", str(reps), "-o", "json", *(extra or [])]
    r = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}): {r.stderr[-800:]}")
    rows = json.loads(r.stdout)
    return float(rows[0]["avg_ts"])


# --- the run ---------------------------------------------------------------------------

# what the profile controls that changes decode, as llama-bench flags (runtime.flash_attn,
# runtime.kv_cache_type, runtime.mmap/mlock -> --load-mode); the first is the default
TUNING = [
    ("profile defaults (fa auto, KV f16, mmap)", [], "f16"),
    ("flash_attn on", ["-fa", "on"], "f16"),
    ("flash_attn off", ["-fa", "off"], "f16"),
    ("flash_attn on, KV q8_0", ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"], "q8_0"),
    ("mlock (load-mode mmap+mlock)", ["-lm", "mmap+mlock"], "f16"),
    ("no mmap (load-mode none)", ["-lm", "none"], "f16"),
    ("flash_attn on, KV q8_0, no mmap", ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0",
                                          "-lm", "none"], "q8_0"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-0.5b-instruct,qwen2.5-1.5b-instruct")
    ap.add_argument("--model-file", type=Path, action="append", default=[],
                    help="a GGUF to run as well (repeatable)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--depths", default="0,2048", help="context tokens before decoding")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--bw-reps", type=int, default=5)
    ap.add_argument("--no-tune", action="store_true")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    depths = [int(d) for d in a.depths.split(",")]

    from harness import engine_for, synthetic_gguf

    from builder.cache import Cache

    cache = Cache()
    engine = engine_for("x86-gateway", cache)
    bench = engine.tool("llama-bench")
    models = [(m, synthetic_gguf(m, cache, engine)) for m in a.models.split(",") if m]
    models += [(f.stem, f) for f in a.model_file]

    print("read bandwidth, before (GB/s):", file=sys.stderr, flush=True)
    bw_before = {t: read_bandwidth(t, reps=a.bw_reps) for t in threads}
    print("  " + _bw_line(bw_before), file=sys.stderr, flush=True)

    runs: list[tuple[str, int, int, float, float]] = []  # model, threads, depth, tok/s, bytes
    tuned: dict[str, list[tuple[str, float, float]]] = {}
    for name, m in models:
        tb = token_bytes(m)
        for t in threads:
            for d in depths:
                tps = llama_bench(bench, m, threads=t, depth=d, gen=a.gen, reps=a.reps)
                runs.append((name, t, d, tps, tb.at(d + a.gen / 2)))
                print(f"  {name} t={t} depth={d}: {tps:.2f} tok/s", file=sys.stderr,
                      flush=True)
        if not a.no_tune:
            t, d = max(threads), max(depths)
            tuned[name] = []
            for label, flags, kv in TUNING:
                try:
                    tps = llama_bench(bench, m, threads=t, depth=d, gen=a.gen, reps=a.reps,
                                      extra=flags)
                except RuntimeError as e:
                    print(f"  {label}: {e}", file=sys.stderr)
                    continue
                tuned[name].append((label, tps, token_bytes(m, kv).at(d + a.gen / 2)))
                print(f"  {name} {label}: {tps:.2f} tok/s", file=sys.stderr, flush=True)

    print("read bandwidth, after (GB/s):", file=sys.stderr, flush=True)
    bw_after = {t: read_bandwidth(t, reps=a.bw_reps) for t in threads}
    bw = {t: (max(bw_before[t].values()) + max(bw_after[t].values())) / 2 for t in threads}

    print(f"read bandwidth (GB/s)  before: {_bw_line(bw_before)}")
    print(f"                       after:  {_bw_line(bw_after)}")
    print("                       used:   " + ", ".join(f"{t} thread(s) {bw[t] / 1e9:.1f}"
                                                       for t in threads))
    print()
    print(f"{'model':24s} {'thr':>3s} {'depth':>6s} {'MiB/token':>10s} {'bound t/s':>10s} "
          f"{'decode t/s':>10s} {'of bound':>9s}")
    for name, t, d, tps, nbytes in runs:
        bound = bw[t] / nbytes
        print(f"{name:24s} {t:3d} {d:6d} {nbytes / MiB:10.1f} {bound:10.1f} {tps:10.2f} "
              f"{tps / bound:9.0%}")
    for name, rows in tuned.items():
        t, d = max(threads), max(depths)
        print()
        print(f"{name}: tuning at depth {d}, {t} thread(s)")
        base = rows[0][1] if rows else 0
        for label, tps, nbytes in rows:
            bound = bw[t] / nbytes
            print(f"  {label:40s} {tps:8.2f} tok/s  {tps / bound:5.0%} of bound  "
                  f"{tps / base:5.2f}x")
        if rows:
            best = max(rows, key=lambda r: r[1])
            print(f"  best: {best[0]} ({best[1] / base:.2f}x the defaults)")


def _bw_line(bw: dict[int, dict[str, float]]) -> str:
    return "; ".join(f"{t} thread(s) " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in d.items())
                     for t, d in bw.items())


if __name__ == "__main__":
    main()
