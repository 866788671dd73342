"""The device's cache of engines it built itself, shared by the engines that build on the
device (trtllm.py, edgellm.py), and `edge-llm-engine-build`, the command the inference
role's build unit runs.

An engine is built in a work directory and renamed into the cache only when whole (a
`.complete` stamp in it), so a cut build leaves nothing that looks built. How the build
goes is written to a status file the gateway reads (503 "engine building" meanwhile).

  edge-llm-engine-build SETTINGS   the release's engine, from the cache or built now, by
                                   the device tool SETTINGS's "tool" names: one of this
                                   package's DEVICE_TOOLS that builds engines, never another
                                   program (the settings come from a verified release; the
                                   tool then runs the release's recipe). A release made
                                   before SETTINGS existed has engine/trtllm.json instead,
                                   built by edge-llm-trtllm.
"""

from __future__ import annotations

import importlib
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
BUILD_UNIT = "edge-llm-engine-build.service"  # the inference role's unit that builds
SETTINGS = "engine/build.json"  # in a release: what the device builds and serves
LEGACY = ("engine/trtllm.json", "edge-llm-trtllm")  # SETTINGS before 2026-12, its tool
_RELEASE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)")


class EngineCache:
    def __init__(self, layout: Layout, root: str = "/", tool: str = "edge-llm-engine") -> None:
        self.layout = layout
        self.root = Path(root)
        self.tool = tool
        self.engines = Path(layout.state_dir) / "engines"  # layout: already under root
        self.status_file = Path(layout.engine_status)

    # what an engine's tool supplies (trtllm.py, edgellm.py)
    OUTPUTS: tuple[str, ...] = ()  # files of a whole engine directory
    LAST_STEP = ""  # the builder that writes them, for messages

    def key(self, s: dict) -> str:
        """What names the release's engine: everything that changes its bytes."""
        raise NotImplementedError

    def preflight(self, s: dict) -> None:
        """Stop in one line (self.failed) when the build cannot run here."""

    def places(self, s: dict, work: Path) -> dict[str, str]:
        """The recipe's placeholders (MODEL, ENGINE ...) -> paths; ENGINE is work/engine."""
        raise NotImplementedError

    def run_step(self, s: dict, cmd: list[str], work: Path) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def serve_argv(self, s: dict) -> list[str]:
        """The command that serves the release's engine on loopback."""
        raise NotImplementedError

    def build(self, s: dict) -> Path:
        """The release's engine (settings `s`): from the cache, or built now step by step
        in a work directory renamed into the cache when whole."""
        key = self.key(s)
        cached = self.built(key)
        if cached:
            self.log(f"engine {key} is built (cached)")
            self.status("ready", engine=key)
            return cached
        self.preflight(s)
        work = self.work_dir(key)
        places = self.places(s, work)
        started = time.time()
        steps = s["steps"]
        for i, argv in enumerate(steps, start=1):
            cmd = [places.get(a, a) for a in argv]
            what = Path(cmd[1]).name if cmd[0].endswith("python3") else Path(cmd[0]).name
            self.log(f"step {i}/{len(steps)}: {' '.join(cmd)}")
            self.status("building", step=what, steps=f"{i}/{len(steps)}",
                        since=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)))
            r = self.run_step(s, cmd, work)
            if r.returncode != 0:
                shutil.rmtree(work, ignore_errors=True)
                raise self.failed(what, f"{what} failed (exit {r.returncode}); the journal "
                                  "of this unit has its output", exit=r.returncode)
        built = work / "engine"
        if not all((built / f).is_file() or list(built.glob(f)) for f in self.OUTPUTS):
            shutil.rmtree(work, ignore_errors=True)
            raise self.failed(self.LAST_STEP, f"{self.LAST_STEP} wrote no "
                              f"{' and '.join(self.OUTPUTS)}", reason="no engine written")
        engine = self.commit(built, key, started)
        shutil.rmtree(work, ignore_errors=True)
        return engine

    def log(self, msg: str) -> None:
        print(f"{self.tool}: {msg}", file=sys.stderr, flush=True)

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

    def on_device(self, path: str) -> Path:
        """A path the settings name, under this device's root."""
        return self.root / path.lstrip("/")

    def work_dir(self, key: str) -> Path:
        work = self.engines / f".build-{key}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    def built(self, key: str, marker: str = "config.json") -> Path | None:
        """The engine `key` when the cache holds it whole, else None."""
        engine = self.engines / key
        whole = (engine / marker).is_file() and (engine / ".complete").is_file()
        return engine if whole else None

    def commit(self, built: Path, key: str, started: float) -> Path:
        """`built` (a finished engine directory) into the cache as `key`."""
        engine = self.engines / key
        (built / ".complete").write_text(f"{time.time() - started:.0f}s\n")
        shutil.rmtree(engine, ignore_errors=True)
        os.replace(built, engine)
        self.log(f"engine {key} built in {time.time() - started:.0f}s")
        self.status("ready", engine=key, build_seconds=round(time.time() - started))
        return engine

    def failed(self, step: str, message: str, **fields: object) -> SystemExit:
        self.status("failed", step=step, **fields)
        return SystemExit(f"{self.tool}: {message}")


def tool_main(device: type[EngineCache], name: str, argv: list[str]) -> int:
    """`NAME build|serve SETTINGS`, an engine's device tool: build the release's engine
    (or take it from the cache), or exec what serves it (Device.serve_argv)."""
    if len(argv) != 2 or argv[0] not in ("build", "serve"):
        print(f"usage: {name} build|serve SETTINGS", file=sys.stderr)
        return 2
    root = os.environ.get("EDGE_LLM_ROOT", "/")
    d = device(Layout.load(root), root)
    s = json.loads(Path(argv[1]).read_text())
    if argv[0] == "build":
        d.build(s)
        return 0
    cmd = d.serve_argv(s)
    os.execv(cmd[0] if "/" in cmd[0] else shutil.which(cmd[0]) or cmd[0], cmd)
    return 1  # not reached


def settings_path(path: str) -> tuple[Path, str | None]:
    """SETTINGS, or the legacy file of a release made before it (and its tool)."""
    p = Path(path)
    legacy = p.parent.parent / LEGACY[0]
    if not p.exists() and p.name == Path(SETTINGS).name and legacy.is_file():
        return legacy, LEGACY[1]
    return p, None


def builder_of(path: Path, default_tool: str | None = None):
    """The module of the device tool SETTINGS names, if it builds engines."""
    from . import DEVICE_TOOLS

    s = json.loads(path.read_text())
    tool = s.get("tool", default_tool) if isinstance(s, dict) else None
    name = DEVICE_TOOLS.get(tool) if isinstance(tool, str) else None
    module = importlib.import_module(f"{__package__}.{name}") if name else None
    # this module's class as the tools import it (run with -m, this one is __main__)
    base = importlib.import_module(f"{__package__}.engine_cache").EngineCache
    if module is None or not issubclass(getattr(module, "Device", object), base):
        raise SystemExit(f"edge-llm-engine-build: {path}: \"tool\" is not a device tool "
                         f"that builds engines: {tool!r}")
    return module


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: edge-llm-engine-build SETTINGS", file=sys.stderr)
        return 2
    path, default_tool = settings_path(args[0])
    return builder_of(path, default_tool).main(["build", str(path)])


if __name__ == "__main__":
    sys.exit(main())
