"""edge-llm-trtllm: TensorRT-LLM engines built and served on the device itself.

TensorRT engines are specific to the GPU and the TensorRT version, so a release for a
TensorRT-LLM device carries the model (a Hugging Face checkpoint) and the build
settings (engine/build.json), and the device builds the engine it lacks:

  build SETTINGS   the engine for this release, from the cache or built now: the
                   checkpoint made (convert_checkpoint.py, or quantize.py for AWQ) and
                   trtllm-build run with the release's limits, in a work directory that
                   is renamed into the cache only when whole. Progress goes to the journal
                   and to a status file the gateway reads (503 "engine building" meanwhile).
                   The cache key: the model's sha256, the quantization, the TensorRT-LLM
                   version, the L4T release and GPU of this device, and every build flag.
  serve SETTINGS   exec TensorRT-LLM's OpenAI server (examples/apps/openai_server.py) on
                   loopback with the release's engine.

`build` runs in edge-llm-engine-build.service (the inference role's, through
`edge-llm-engine-build`: engine_cache.py), before the
engine unit starts: as the engine user, in the engine's sandbox, capped at the device's
build budget (MemoryMax), with the engine cache and the status file its only writable
places. The engine unit runs `serve` (the release's drop-in says so) and can read the
cache, never write it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from .engine_cache import BUILD_UNIT, EngineCache, tool_main
from .layout import Layout


class Device(EngineCache):
    def __init__(self, layout: Layout, root: str = "/") -> None:
        super().__init__(layout, root, tool="edge-llm-trtllm")

    def key(self, s: dict) -> str:
        """What names an engine: everything that changes its bytes."""
        blob = json.dumps({"model": s["model_sha256"], "quant": s["quant"],
                           "version": s["version"], "l4t": self.l4t_release(),
                           "sm": s["sm"], "steps": s["steps"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    OUTPUTS = ("config.json", "rank*.engine")
    LAST_STEP = "trtllm-build"

    def places(self, s: dict, work: Path) -> dict[str, str]:
        (work / "checkpoint").mkdir()
        return {"MODEL": str(self.on_device(s["model"])),
                "CHECKPOINT": str(work / "checkpoint"), "ENGINE": str(work / "engine")}

    def run_step(self, s: dict, cmd: list[str], work: Path) -> subprocess.CompletedProcess:
        return subprocess.run(self.step_argv(s, cmd), cwd=s["checkout"],
                              stdin=subprocess.DEVNULL)

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
        raise self.failed("setup", f"TensorRT-LLM {s['version']} cannot run here "
                          f"({reason}): the image carries it when built with "
                          "engine.tensorrt_llm.wheel, wheelhouse and examples, and JetPack's "
                          "CUDA, cuDNN and TensorRT from jetson.jetpack (docs/orin.md); "
                          "engine.tensorrt_llm.python/checkout say where they are",
                          reason=reason)

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

    def serve_argv(self, s: dict) -> list[str]:
        engine = self.built(self.key(s))
        if engine is None:
            raise SystemExit(f"edge-llm-trtllm: no engine {self.key(s)} is built for this "
                             f"release; its build says why: journalctl -u {BUILD_UNIT}")
        model = str(self.on_device(s["model"]))
        server = Path(s["checkout"]) / "examples/apps/openai_server.py"
        return [s["python"], str(server), str(engine), "--tokenizer", model,
                "--host", "127.0.0.1", "--port", str(s["port"])]


def main(argv: list[str] | None = None) -> int:
    return tool_main(Device, "edge-llm-trtllm", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
