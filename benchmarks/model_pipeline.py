"""Model pipeline on the synthetic Qwen2.5-0.5B-Instruct: synthesize, convert HF -> F16
GGUF (llama.cpp convert_hf_to_gguf.py), quantize to Q4_K_M (llama-quantize); wall time
and peak memory of each step, side by side in one run.

    .venv/bin/python benchmarks/model_pipeline.py [--model qwen2.5-0.5b-instruct]

Needs the x86 engine (built or taken from the cache first). Uses a fresh temporary
cache for the model steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[5]) / "tests"))  # the harnesses
from builder.model import pipeline as model_pipeline, synth
from builder.engines.llama_cpp import convert as gguf, source as sources
from builder.cache import Cache
from harness import engine_for
from builder.profiles import ProfileStore
step, model, quant, host_cache = sys.argv[1:5]
cache = Cache()
p = ProfileStore().load("x86-gateway").concrete()
t = time.monotonic()
if step == "synth":
    out = synth.cached(model, cache).out
elif step == "convert":
    f = model_pipeline.fetch(p.model.source, cache, model_file=synth.cached(model, cache).out)
    out = gguf.gguf_of(gguf.convert(f, sources.llama_cpp(
        p.engine.llama_cpp.source, Cache(Path(host_cache))), cache))
else:
    f = model_pipeline.fetch(p.model.source, cache, model_file=synth.cached(model, cache).out)
    conv = gguf.convert(f, sources.llama_cpp(p.engine.llama_cpp.source,
                                        Cache(Path(host_cache))), cache)
    tools = engine_for("x86-gateway", Cache(Path(host_cache)))
    f16 = gguf.gguf_of(conv)
    out = gguf.gguf_of(gguf.quantize(
        f16, conv.manifest["outputs"][f16.name]["sha256"], quant,
        tools.tool("llama-quantize"), tools.entry.key, cache))
secs = time.monotonic() - t
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
size = sum(f.stat().st_size for f in Path(out).rglob("*")) if Path(out).is_dir() \
    else Path(out).stat().st_size
print(json.dumps({"seconds": secs, "peak_rss": peak, "bytes": size}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-0.5b-instruct")
    ap.add_argument("--quant", default="Q4_K_M")
    a = ap.parse_args()
    host_cache = os.environ.get("EDGE_LLM_CACHE",
                                str(Path.home() / ".cache" / "edge-llm-builder"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="elb-bench-") as tmp:
        env = {**os.environ, "EDGE_LLM_CACHE": tmp}
        for step in ("synth", "convert", "quantize"):
            r = subprocess.run([sys.executable, "-c", STEP, step, a.model, a.quant,
                                host_cache, str(Path(__file__).resolve().parents[1])],
                               env=env, check=True, capture_output=True, text=True)
            rows.append((step, json.loads(r.stdout.strip().splitlines()[-1])))
    base = rows[0][1]["seconds"]
    print(f"model pipeline, {a.model} -> {a.quant}, {os.cpu_count()} CPUs")
    print(f"{'step':10} {'seconds':>8} {'vs synth':>9} {'peak RSS':>10} {'output':>10}")
    for step, d in rows:
        print(f"{step:10} {d['seconds']:8.1f} {d['seconds'] / base:8.2f}x "
              f"{d['peak_rss'] / 2**20:8.0f}MiB {d['bytes'] / 1e6:8.1f}MB")


if __name__ == "__main__":
    main()
