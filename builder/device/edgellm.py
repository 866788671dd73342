"""edge-llm-edgellm: TensorRT Edge-LLM engines built and served on the device itself.

A release for an Edge-LLM device carries the model as an ONNX directory (exported on
the build host by tensorrt-edgellm-export) and the build settings (engine/build.json);
Edge-LLM's build directory is in the image (engine.tensorrt_edge_llm.checkout):

  build SETTINGS   the engine for this release, from the cache or built now with
                   Edge-LLM's llm_build and the release's limits (engine_cache.py: a work
                   directory renamed into the cache when whole; progress in the journal
                   and the status file the gateway reads). The cache key: the ONNX's
                   sha256, the Edge-LLM version, this device's L4T release, TensorRT
                   version and GPU, and every llm_build flag.
  serve SETTINGS   exec the adapter (edgellm_serve.py) on loopback with that engine.

Before llm_build sees the ONNX directory, its config.json is checked: llm_build copies
each `external_weight_files[].file` from `<onnxDir>/<file>` with no check that it stays
inside (cpp/builder/llmBuilder.cpp:1660-1697, TensorRT-Edge-LLM 0.9.1), so a name with
a slash, an absolute path or a dot-name is refused here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .engine_cache import BUILD_UNIT, EngineCache, tool_main
from .layout import Layout

LLM_BUILD = "build/examples/llm/llm_build"  # in the checkout (examples/llm/CMakeLists.txt)
PLUGIN = "build/libNvInfer_edgellm_plugin.so"  # cpp/CMakeLists.txt:148-151
BINDING_DIR = "build/pybind"  # experimental/server/engine.py:244-275
ENGINE_FILE = "llm.engine"  # cpp/builder/llmBuilder.cpp:252-266
DPKG_STATUS = "var/lib/dpkg/status"
TENSORRT_PACKAGE = "libnvinfer10"  # JetPack 6.x and 7.x: TensorRT 10's runtime library
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
# llm_build's limits a release may set (examples/llm/llm_build.cpp:103-117)
LIMITS = ("--maxInputLen", "--maxKVCacheCapacity", "--maxBatchSize")


def onnx_problems(onnx: Path) -> list[str]:
    """What makes `onnx` unfit for llm_build (an empty list: fit): an export of
    tensorrt-edgellm-export (<out>/llm/) whose external weight files stay inside it."""
    if not (onnx / "model.onnx").is_file():
        return [f"{onnx}: no model.onnx (give the llm/ directory tensorrt-edgellm-export "
                "wrote)"]
    try:
        cfg = json.loads((onnx / "config.json").read_text())
    except (OSError, ValueError) as e:
        return [f"{onnx}/config.json: not readable JSON ({e.__class__.__name__})"]
    if not isinstance(cfg, dict):
        return [f"{onnx}/config.json: not a JSON object"]
    files = cfg.get("external_weight_files", [])
    if not isinstance(files, list):
        return [f"{onnx}/config.json: external_weight_files is not a list"]
    out = []
    for entry in files:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _PLAIN_NAME.match(name):
            out.append(f"{onnx}/config.json: external weight file {name!r} is not a file "
                       "name inside the directory")
        elif not (onnx / name).is_file() or (onnx / name).is_symlink():
            out.append(f"{onnx}/config.json: external weight file {name} is missing")
    return out


class Device(EngineCache):
    def __init__(self, layout: Layout, root: str = "/") -> None:
        super().__init__(layout, root, tool="edge-llm-edgellm")

    def tensorrt_version(self) -> str:
        """TensorRT's version as dpkg has it installed (an engine is tied to it)."""
        try:
            text = (self.root / DPKG_STATUS).read_text(errors="replace")
        except OSError:
            return "unknown"
        for para in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in para.splitlines()
                          if ": " in line and not line.startswith(" "))
            if fields.get("Package") == TENSORRT_PACKAGE and \
                    fields.get("Status", "").endswith(" installed"):
                return fields.get("Version", "unknown")
        return "unknown"

    def key(self, s: dict) -> str:
        """What names an engine: everything that changes its bytes, the builder and the
        plugin it was built with included (a runtime rebuilt at the same version builds
        anew)."""
        blob = json.dumps({"model": s["model_sha256"], "version": s["version"],
                           "l4t": self.l4t_release(), "tensorrt": self.tensorrt_version(),
                           "runtime": [self.file_sha256(self.checkout(s) / f)
                                       for f in (LLM_BUILD, PLUGIN)],
                           "sm": s["sm"], "steps": s["steps"]}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @staticmethod
    def file_sha256(path: Path) -> str | None:
        try:
            with path.open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError:
            return None

    def checkout(self, s: dict) -> Path:
        return self.on_device(s["checkout"])

    OUTPUTS = (ENGINE_FILE, "config.json")
    LAST_STEP = "llm_build"

    def places(self, s: dict, work: Path) -> dict[str, str]:
        return {"ONNX": str(self.on_device(s["model"])), "ENGINE": str(work / "engine"),
                "llm_build": str(self.checkout(s) / LLM_BUILD)}

    def run_step(self, s: dict, cmd: list[str], work: Path) -> subprocess.CompletedProcess:
        # in the work directory: were the plugin path lost, llm_build's fallback
        # (build/libNvInfer_edgellm_plugin.so relative to it) finds nothing
        return subprocess.run(cmd, cwd=work, stdin=subprocess.DEVNULL,
                              env={**os.environ, "EDGELLM_PLUGIN_PATH": self.plugin(s)})

    def check_steps(self, s: dict) -> None:
        """The release's recipe runs llm_build and nothing else: its own input and output
        directories, and the limits as whole numbers (a verified release made it, but
        nothing in it names another program)."""
        steps = s.get("steps")
        ok = isinstance(steps, list) and len(steps) == 1 and isinstance(steps[0], list)
        argv = steps[0] if ok else []
        ok = ok and argv[:5] == ["llm_build", "--onnxDir", "ONNX", "--engineDir", "ENGINE"] \
            and len(argv) % 2 == 1 and all(
                flag in LIMITS and isinstance(v, str) and v.isdigit()
                for flag, v in zip(argv[5::2], argv[6::2], strict=True))
        if not ok:
            raise self.failed("setup", "the release's build steps are not an llm_build line "
                              "this tool runs", reason="unexpected build steps")

    def plugin(self, s: dict) -> str:
        return str(self.checkout(s) / PLUGIN)

    def preflight(self, s: dict) -> None:
        """The release's recipe is an llm_build line, what llm_build runs on is here (the
        image carries Edge-LLM's build directory: engine.tensorrt_edge_llm.runtime), and
        the release's ONNX is fit for it."""
        self.check_steps(s)
        onnx = self.on_device(s["model"])
        missing = [str(p) for p in (self.checkout(s) / LLM_BUILD, Path(self.plugin(s)))
                   if not p.is_file()]
        if missing:
            raise self.failed("setup", f"TensorRT Edge-LLM {s['version']} is not in this "
                              f"image (missing {', '.join(missing)}): build it with "
                              "engine.tensorrt_edge_llm.runtime (docs/orin.md)",
                              reason="missing " + ", ".join(missing))
        problems = onnx_problems(onnx)
        if problems:
            raise self.failed("setup", problems[0], reason=problems[0])

    def serve_argv(self, s: dict) -> list[str]:
        key = self.key(s)
        engine = self.built(key)
        if engine is None:
            raise SystemExit(f"edge-llm-edgellm: no engine {key} is built for this "
                             f"release; its build says why: journalctl -u {BUILD_UNIT}")
        adapter = Path(__file__).with_name("edgellm_serve.py")
        # env(1) sets the plugin the engine was built with (the runtime's fallback is
        # relative to its working directory): the same path the build gave llm_build
        return ["/usr/bin/env", f"EDGELLM_PLUGIN_PATH={self.plugin(s)}",
                s["python"], "-I", str(adapter), "--engine-dir", str(engine),
                "--runtime-dir", str(self.checkout(s) / BINDING_DIR),
                "--host", "127.0.0.1", "--port", str(s["port"]),
                "--model-id", s["model_id"], "--max-input-len", str(s["max_input_len"]),
                "--max-kv-cache-capacity", str(s["max_kv_cache_capacity"])]


def main(argv: list[str] | None = None) -> int:
    return tool_main(Device, "edge-llm-edgellm", sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
