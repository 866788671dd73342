"""Image build and boot: a full build, a warm rebuild after changing one runtime knob
(goal: under 60 s), the image's size, and boot-to-ready time in the VM, in one run.

    sudo .venv/bin/python benchmarks/image_build.py [--model-file GGUF] [--cold]

Without --cold the artifact cache is used as it is (engine, model and rootfs usually
cached); with --cold a fresh temporary cache is used, so the first build compiles
llama.cpp and runs mmdebstrap. Boot-to-ready = QEMU start until the engine answers
/health over SSH (TCG or KVM, as detected).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)

BUILDER = str(Path(sys.executable).with_name("builder"))


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    r = subprocess.run([BUILDER, *args], env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"builder {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return time.monotonic() - start


def boot_to_ready(out: Path, env: dict[str, str]) -> tuple[float, str]:
    from harness.llama_server import free_port

    from builder import resolve, vm
    from builder.cache import Cache
    from builder.sshkey import builder_key

    m = json.loads((out / "x86-gateway" / "manifest.json").read_text())
    key, _ = builder_key(Cache(Path(env["EDGE_LLM_CACHE"])) if "EDGE_LLM_CACHE" in env
                         else Cache())
    machine = resolve.target_named("x86-gateway").vm_machine
    spec = vm.for_build(out / "x86-gateway", machine,
                        ssh_port=free_port(), forwards={}, memory_mb=1536, cpus=2,
                        state_dir=out / ".vm-bench")
    start = time.monotonic()
    handle = vm.start(spec)
    try:
        vm.wait_ssh(handle, "edge", key, timeout=900)
        port = m["inputs"]["profile"]["service"]["engine_port"]
        check = (f"python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:"
                 f"{port}/health', timeout=5)\"")
        while subprocess.run(vm.ssh_command(spec.ssh_port, "edge", key, check),
                             capture_output=True).returncode != 0:
            time.sleep(1)
        return time.monotonic() - start, vm.detect_accel()
    finally:
        vm.stop(spec.state_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-file", help="GGUF to bake (default: the profile's model)")
    ap.add_argument("--cold", action="store_true", help="start from an empty cache")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="elb-img-") as tmp:
        env = dict(os.environ)
        if a.cold:
            env["EDGE_LLM_CACHE"] = str(Path(tmp) / "cache")
        out = Path(tmp) / "out"
        model = ["--model-file", a.model_file] if a.model_file else []
        knob = Path(tmp) / "profiles" / "x86-gateway.yaml"
        knob.parent.mkdir()
        knob.write_text("extends: x86-gateway\nruntime:\n  context_length: 2048\n")
        first = timed(["build", "-p", "x86-gateway", *model, "--out", str(out)], env)
        again = timed(["build", "-p", str(knob), *model, "--out", str(Path(tmp) / "out2")],
                      env)
        m = json.loads((out / "x86-gateway" / "manifest.json").read_text())
        raw = out / "x86-gateway" / m["delivery"]["files"]["image"]
        zst_bytes = (out / "x86-gateway" / m["delivery"]["files"]["compressed"]).stat().st_size
        raw_blocks = raw.stat().st_blocks * 512
        boot, accel = boot_to_ready(out, env)
    print(f"image build, x86-gateway, {os.cpu_count()} CPUs, cache "
          f"{'cold' if a.cold else 'as found'}")
    print(f"{'measure':44} {'value':>12} {'vs build':>9}")
    print(f"{'build':44} {first:11.1f}s {1:9.3f}x")
    print(f"{'rebuild after one runtime knob (goal < 60 s)':44} {again:11.1f}s "
          f"{again / first:9.3f}x")
    print(f"{'image.raw (apparent)':44} {m['image']['bytes'] / 1e6:10.0f}MB")
    print(f"{'image.raw.zst':44} {zst_bytes / 1e6:10.0f}MB")
    print(f"{'image.raw blocks on disk':44} {raw_blocks / 1e6:10.0f}MB")
    print(f"{'boot to engine ready (' + accel + ')':44} {boot:11.1f}s")


if __name__ == "__main__":
    main()
