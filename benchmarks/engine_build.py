"""Engine build: cold (empty cache and ccache) vs warm (artifact cache hit) vs a rebuild
with a changed recipe but a warm ccache, side by side in one run.

    .venv/bin/python benchmarks/engine_build.py [--profile x86-gateway]

Prints seconds and ratios against the cold build. Uses a fresh temporary cache, so it
never touches ~/.cache/edge-llm-builder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILDER = str(Path(sys.executable).with_name("builder"))


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run([BUILDER, *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="x86-gateway")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="elb-bench-") as tmp:
        env = {**os.environ, "EDGE_LLM_CACHE": tmp}
        prof = Path(tmp) / "changed.yaml"
        prof.write_text(f"extends: {a.profile}\nengine:\n  llama_cpp:\n"
                        f"    cmake_args: [-DGGML_LLAMAFILE=ON]\n")
        rows = [("cold (empty cache, empty ccache)", timed(
                    ["engine", "build", "-p", a.profile], env)),
                ("warm (artifact cache hit)", timed(["engine", "build", "-p", a.profile], env)),
                ("changed recipe, warm ccache", timed(["engine", "build", "-p", str(prof)],
                                                      env))]
    cold = rows[0][1]
    print(f"engine build, profile {a.profile}, {os.cpu_count()} CPUs")
    print(f"{'run':36} {'seconds':>9} {'vs cold':>9}")
    for name, secs in rows:
        print(f"{name:36} {secs:9.1f} {secs / cold:9.3f}x")


if __name__ == "__main__":
    main()
