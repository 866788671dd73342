"""The Pi 5 engine (llama.cpp cross-built for armv8.2-a+dotprod+fp16) run under qemu-user
on this x86 machine, against the x86-gateway engine natively, on the same model: how
much slower the arm64 tests and the emulated appliance are than the hardware they stand
in for. Both are the builder's own engine builds (same llama.cpp source and flags but
the target's CPU options), run with llama-bench (prompt 64 tokens, 32 generated, one
and two threads, 2 repetitions). The arm64 binary runs as
`qemu-aarch64-static -L /usr/aarch64-linux-gnu llama-bench ...` (the cross toolchain's
libraries), which is what binfmt does for the arm64 rootfs.

    .venv/bin/python benchmarks/arm64_emulation.py [--models tiny,qwen2.5-0.5b-instruct]

A real Pi 5 decodes Qwen2.5-0.5B Q4_K_M at roughly 20-30 tok/s on 4 threads (community
llama.cpp figures: a reference, not measured here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness  # noqa: F401  (tests/harness on the path)
from harness import engine_for

from builder.cache import Cache


def bench(cmd: list[str], model: Path, threads: int) -> dict[str, float]:
    out = subprocess.run([*cmd, "-m", str(model), "-p", "64", "-n", "32", "-t", str(threads),
                          "-r", "2", "-o", "json"], capture_output=True, text=True,
                         check=True, timeout=3600).stdout
    rows = json.loads(out)
    return {("prefill" if r["n_prompt"] else "decode"): r["avg_ts"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,qwen2.5-0.5b-instruct")
    a = ap.parse_args()
    from harness import synthetic_gguf

    cache = Cache()
    x86 = engine_for("x86-gateway", cache)
    arm = engine_for("pi5-4gb", cache)
    runners = {"x86 native": [str(x86.tool("llama-bench"))],
               "arm64 qemu-user": ["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu",
                                   str(arm.tool("llama-bench"))]}
    print(f"{'model':24} {'thr':>3} {'engine':16} {'prefill t/s':>12} {'decode t/s':>11}"
          f" {'decode vs x86':>14}")
    for model_id in a.models.split(","):
        model = synthetic_gguf(model_id, cache, x86)
        for threads in (1, 2):
            base = None
            for name, cmd in runners.items():
                r = bench(cmd, model, threads)
                base = base or r["decode"]
                print(f"{model_id + ' Q4_K_M':24} {threads:>3} {name:16} "
                      f"{r['prefill']:>12.1f} {r['decode']:>11.2f} "
                      f"{r['decode'] / base:>13.3f}x", flush=True)


if __name__ == "__main__":
    main()
