"""`builder tune`'s choice against the profile's defaults, on this machine, and both as a
fraction of the memory-bandwidth bound.

    .venv/bin/python benchmarks/tune.py [--profile x86-gateway] [--overlay FILE]
        [--pairs 3] [--depth 2048] [--prompt 512] [--gen 32]

1. Unless --overlay names one already written, `builder tune --local --profile P
   --synthetic` runs first, timed (the bar: under 10 minutes for x86-gateway on 2 x86
   cores), into a temporary file.
2. The profile's defaults (A) and the overlay's settings (B), side by side and
   interleaved, A B A B ... (--pairs pairs), each one llama-bench run of one repetition
   (the x86-gateway engine build, the synthetic model of the profile, Q4_K_M): decode
   tok/s at depth 0 and at --depth, prefill tok/s of a --prompt-token prompt. Medians.
3. The bound, as benchmarks/roofline.py measures it: read bandwidth (its numpy kernels
   with each side's thread count, before and after the runs, the mean) over the bytes a
   decoded token reads (the GGUF's tensors plus the KV cache at depth + gen/2, at each
   side's KV type). Prefill is bound by compute, not bandwidth: it is given as a ratio
   only.

Prints ratios; nothing here asserts a speed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as roofline.py: the kernel's threads
os.environ.setdefault("OMP_NUM_THREADS", "1")       # are ours

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)
from roofline import read_bandwidth, token_bytes

from builder import resolve
from builder.profiles import ProfileStore
from builder.schema import Runtime
from builder.tune import settings_of
from builder.tuned import load as load_overlay

# the tools run with the environment of a device, not this script's one-thread settings
TOOL_ENV = {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def bench_once(tuner, tool: Path, model: Path, rt: Runtime, *, cores: int, prompt: int,
               gen: int, depth: int) -> dict[str, float]:
    outputs = []
    for argv in tuner.commands(str(tool), str(model), [rt], threads=cores, prompt=prompt,
                               gen=gen, depth=depth, reps=1):
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=7200, env=TOOL_ENV)
        if r.returncode != 0:
            raise RuntimeError(f"llama-bench failed ({r.returncode}): {r.stderr[-800:]}")
        outputs.append(r.stdout)
    return tuner.read(outputs, depth=depth, count=1)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="x86-gateway")
    ap.add_argument("--overlay", type=Path, help="a tuned overlay already written")
    ap.add_argument("--model-file", type=Path,
                    help="a GGUF instead of the profile's synthetic model")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--depth", type=int, default=2048)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--bw-reps", type=int, default=5)
    a = ap.parse_args()

    from harness import engine_for, synthetic_gguf

    from builder.cache import Cache

    cache = Cache()
    rp = ProfileStore().load(a.profile)
    d = resolve.resolve(rp, rp.concrete())
    p = d.profile
    engine = engine_for(a.profile, cache)
    model = a.model_file or synthetic_gguf(p.model.id, cache, engine, p.model.quant)
    tuner = d.engine.tuner()
    tool = engine.tool(tuner.TOOL)

    overlay_path, tune_seconds = a.overlay, None
    if overlay_path is None:
        overlay_path = Path(tempfile.mkdtemp(prefix="tune-")) / f"{a.profile}.yaml"
        cmd = [str(Path(sys.executable).with_name("builder")), "tune", "--local",
               "--profile", a.profile, "--depth", str(a.depth), "--prompt", str(a.prompt),
               "--gen", str(a.gen), "-o", str(overlay_path),
               *(["--model-file", str(a.model_file)] if a.model_file else ["--synthetic"])]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.monotonic()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, env=TOOL_ENV)
        tune_seconds = time.monotonic() - t0
    overlay = load_overlay(overlay_path)
    cores = p.device.cpu_cores
    base = settings_of(p.runtime, cores)
    tuned = {**base, **overlay.runtime}
    sides = {"defaults": Runtime.model_validate({**p.runtime.model_dump(), **base}),
             "tuned": Runtime.model_validate({**p.runtime.model_dump(), **tuned})}
    threads = {name: rt.threads or cores for name, rt in sides.items()}

    print("read bandwidth, before ...", file=sys.stderr, flush=True)
    bw_before = {t: max(read_bandwidth(t, reps=a.bw_reps).values())
                 for t in set(threads.values())}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for i in range(a.pairs):
        for name, rt in sides.items():  # A B, A B, ...
            m = bench_once(tuner, tool, model, rt, cores=cores, prompt=a.prompt, gen=a.gen,
                           depth=a.depth)
            runs[name].append(m)
            print(f"  pair {i + 1} {name}: decode d0 {m['decode_tps_depth0']:.2f}, "
                  f"d{a.depth} {m['decode_tps']:.2f}, prefill {m['prefill_tps']:.1f} tok/s",
                  file=sys.stderr, flush=True)
    bw_after = {t: max(read_bandwidth(t, reps=a.bw_reps).values())
                for t in set(threads.values())}
    bw = {t: (bw_before[t] + bw_after[t]) / 2 for t in bw_before}

    def bound(name: str, depth: int) -> float:
        """tokens/s the bandwidth allows at this depth, with this side's threads and KV."""
        nbytes = token_bytes(model, sides[name].kv_cache_type).at(depth + a.gen / 2)
        return bw[threads[name]] / nbytes

    med = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "cpu"}
           for name, rows in runs.items()}
    what = a.model_file.name if a.model_file else f"{p.model.id} {p.model.quant} (synthetic)"
    print(f"{a.profile}: {what}, {os.cpu_count()} CPUs here; medians of {a.pairs} "
          "interleaved pairs")
    if tune_seconds is not None:
        print(f"{' '.join(cmd[1:])}: {tune_seconds:.0f}s wall")
    print("defaults: " + ", ".join(f"{k} {v}" for k, v in base.items()))
    changed = ", ".join(f"{k} {v}" for k, v in tuned.items() if base.get(k) != v)
    print(f"tuned:    {changed or 'the defaults'}")
    print("read bandwidth (GB/s): " + ", ".join(
        f"{t} thread(s) {bw_before[t] / 1e9:.1f} before, {bw_after[t] / 1e9:.1f} after"
        for t in sorted(bw)))
    print()
    print(f"{'':24s} {'defaults':>9s} {'tuned':>9s} {'ratio':>6s} "
          f"{'defaults of bound':>18s} {'tuned of bound':>15s}")
    for key, label, depth in (("decode_tps_depth0", "decode tok/s, depth 0", 0),
                              ("decode_tps", f"decode tok/s, depth {a.depth}", a.depth),
                              ("prefill_tps", f"prefill tok/s ({a.prompt})", None)):
        va, vb = med["defaults"][key], med["tuned"][key]
        if depth is None:
            shares = ("-", "-")
        else:
            shares = tuple(f"{med[n][key] / bound(n, depth):.0%}" for n in ("defaults", "tuned"))
        print(f"{label:24s} {va:9.2f} {vb:9.2f} {vb / va:6.3f} {shares[0]:>18s} "
              f"{shares[1]:>15s}")


if __name__ == "__main__":
    main()
