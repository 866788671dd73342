"""edge-llm-trtllm: TensorRT-LLM engines built and served on the device itself.

TensorRT engines are specific to the GPU and the TensorRT version, so a release for a
TensorRT-LLM device carries the model (a Hugging Face checkpoint) and the build
settings (engine/trtllm.json), and the device builds the engine it lacks:

  build SETTINGS   the engine for this release, from the cache or built now: the
                   checkpoint made (convert_checkpoint.py, or quantize.py for AWQ) and
                   trtllm-build run with the release's limits, in a work directory that
                   is renamed into the cache only when whole. Progress goes to the journal
                   and to a status file the gateway reads (503 "engine building" meanwhile).
                   The cache key: the model's sha256, the quantization, the TensorRT-LLM
                   version, the L4T release and GPU of this device, and every build flag.
  serve SETTINGS   exec TensorRT-LLM's OpenAI server (examples/apps/openai_server.py) on
                   loopback with the release's engine.

`build` runs in edge-llm-engine-build.service (the inference role's), before the
engine unit starts: as the engine user, in the engine's sandbox, capped at the device's
build budget (MemoryMax), with the engine cache and the status file its only writable
places. The engine unit runs `serve` (the release's drop-in says so) and can read the
cache, never write it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .layout import Layout

STATUS = "engine-status.json"  # Layout.engine_status, world-readable: the gateway reads it
BUILD_UNIT = "edge-llm-engine-build.service"  # the inference role's unit that runs `build`
_RELEASE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)")


def log(msg: str) -> None:
    print(f"edge-llm-trtllm: {msg}", file=sys.stderr, flush=True)


class Device:
    def __init__(self, layout: Layout, root: str = "/") -> None:
        self.layout = layout
        self.root = Path(root)
        self.engines = Path(layout.state_dir) / "engines"  # layout: already under root
        self.status_file = Path(layout.engine_status)

    def status(self, state: str, **fields: object) -> None:
        data = {"state": state, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **fields}
        tmp = self.status_file.with_name(STATUS + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data) + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.status_file)

    def l4t_release(self) -> str:
        try:
            m = _RELEASE.search((self.root / "etc/nv_tegra_release").read_text())
        except OSError:
            return "unknown"
        return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else "unknown"

    def key(self, s: dict) -> str:
        """What names an engine: everything that changes its bytes."""
        blob = json.dumps({"model": s["model_sha256"], "quant": s["quant"],
                           "version": s["version"], "l4t": self.l4t_release(),
                           "sm": s["sm"], "steps": s["steps"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def engine_dir(self, s: dict) -> Path:
        return self.engines / self.key(s)

    def build(self, s: dict) -> Path:
        engine = self.engine_dir(s)
        if self.built(s):
            log(f"engine {engine.name} is built (cached)")
            self.status("ready", engine=engine.name)
            return engine
        self.preflight(s)
        work = self.engines / f".build-{engine.name}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "checkpoint").mkdir(parents=True)
        places = {"MODEL": str(self.root / s["model"].lstrip("/")),
                  "CHECKPOINT": str(work / "checkpoint"), "ENGINE": str(work / "engine")}
        started = time.time()
        for i, argv in enumerate(s["steps"], start=1):
            cmd = [places.get(a, a) for a in argv]
            what = Path(cmd[1]).name if cmd[0].endswith("python3") else Path(cmd[0]).name
            log(f"step {i}/{len(s['steps'])}: {' '.join(cmd)}")
            self.status("building", step=what, steps=f"{i}/{len(s['steps'])}",
                        since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
            r = subprocess.run(self.step_argv(s, cmd), cwd=s["checkout"],
                               stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                self.status("failed", step=what, exit=r.returncode)
                shutil.rmtree(work, ignore_errors=True)
                raise SystemExit(f"edge-llm-trtllm: {what} failed (exit {r.returncode}); "
                                 "the journal of this unit has its output")
        built = work / "engine"
        if not (built / "config.json").is_file() or not list(built.glob("rank*.engine")):
            self.status("failed", step="trtllm-build", reason="no engine written")
            raise SystemExit("edge-llm-trtllm: trtllm-build wrote no config.json and "
                             "rank0.engine")
        (built / ".complete").write_text(f"{time.time() - started:.0f}s\n")
        os.replace(built, engine)
        shutil.rmtree(work, ignore_errors=True)
        log(f"engine {engine.name} built in {time.time() - started:.0f}s")
        self.status("ready", engine=engine.name, build_seconds=round(time.time() - started))
        return engine

    def preflight(self, s: dict) -> None:
        """What the build runs on is here: the checkout's examples, and a Python that
        imports tensorrt_llm, which loads JetPack's TensorRT and CUDA (the image carries
        both: engine.tensorrt_llm.wheel/examples, jetson.jetpack). Imported from /, not
        the checkout, whose own tensorrt_llm/ source tree would shadow the wheel."""
        missing = [x for x in (s["python"], f"{s['checkout']}/examples") if not Path(x).exists()]
        reason = f"missing {', '.join(missing)}" if missing else None
        if not missing:
            r = subprocess.run([s["python"], "-c", "import tensorrt_llm"], cwd="/",
                               stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if r.returncode != 0:
                lines = [x for x in r.stderr.splitlines() if x.strip()]
                reason = lines[-1] if lines else f"exit {r.returncode}"
        if reason is None:
            return
        self.status("failed", step="setup", reason=reason)
        raise SystemExit(f"edge-llm-trtllm: TensorRT-LLM {s['version']} cannot run here "
                         f"({reason}): the image carries it when built with "
                         "engine.tensorrt_llm.wheel, wheelhouse and examples, and JetPack's "
                         "CUDA, cuDNN and TensorRT from jetson.jetpack (docs/orin.md); "
                         "engine.tensorrt_llm.python/checkout say where they are")

    def step_argv(self, s: dict, cmd: list[str]) -> list[str]:
        """A build step as run: the examples with the settings' Python, trtllm-build from
        that Python's environment (else PATH). Nothing else: the build's unit holds the
        memory cap, and the engine user may ask systemd for nothing (no scope of its own)."""
        python = s["python"]
        if cmd[0] == "python3":
            cmd = [python, *cmd[1:]]
        elif cmd[0] == "trtllm-build":
            beside = Path(python).parent / "trtllm-build"
            cmd = [str(beside) if beside.is_file() else cmd[0], *cmd[1:]]
        return cmd

    def built(self, s: dict) -> Path | None:
        """The release's engine when the cache holds it whole, else None."""
        engine = self.engine_dir(s)
        whole = (engine / "config.json").is_file() and (engine / ".complete").is_file()
        return engine if whole else None

    def serve_argv(self, s: dict) -> list[str]:
        engine = self.built(s)
        if engine is None:
            raise SystemExit(f"edge-llm-trtllm: no engine {self.key(s)} is built for this "
                             f"release; its build says why: journalctl -u {BUILD_UNIT}")
        model = str(self.root / s["model"].lstrip("/"))
        server = Path(s["checkout"]) / "examples/apps/openai_server.py"
        return [s["python"], str(server), str(engine), "--tokenizer", model,
                "--host", "127.0.0.1", "--port", str(s["port"])]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("build", "serve"):
        print("usage: edge-llm-trtllm build|serve SETTINGS", file=sys.stderr)
        return 2
    root = os.environ.get("EDGE_LLM_ROOT", "/")
    d = Device(Layout.load(root), root)
    s = json.loads(Path(args[1]).read_text())
    if args[0] == "build":
        d.build(s)
        return 0
    cmd = d.serve_argv(s)
    os.execv(cmd[0] if "/" in cmd[0] else shutil.which(cmd[0]) or cmd[0], cmd)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
