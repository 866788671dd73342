"""Engines: everything that differs per inference engine lives behind this seam.

An engine module (llama_cpp, trtllm) supplies, for a profile on a target's Platform:
how it is built (on the build host, or on the device), what its model artifact is (a
GGUF file, a checkpoint directory), what a release carries for it and the environment
and command its unit runs, how its readiness is probed, which device nodes it needs,
and its memory model for the planner. Adding an engine is adding a module here.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BuilderError
from ..hardware import Platform
from ..schema import Profile

if TYPE_CHECKING:
    from ..cache import Cache, Entry
    from ..device.layout import Layout
    from ..fleet.release import Inputs
    from ..model.pipeline import Fetched, ModelArtifact
    from ..planner import PlanInput


@dataclass(frozen=True)
class Probe:
    """How the device asks the engine on loopback whether it serves."""

    ready: str  # answers 200 once the model is loaded (the unit's ExecStartPost)
    alive: str  # answered by the engine's work loop, not only its HTTP thread (watchdog)


@dataclass(frozen=True)
class EngineArtifact:
    """An engine built on this machine, in the artifact cache (entry.out)."""

    entry: Entry
    recipe: Any

    @property
    def bin(self) -> Path:
        return self.entry.out / "bin"

    def tool(self, name: str) -> Path:
        return self.bin / name


class Engine(ABC):
    kind: ClassVar[str]
    probe: ClassVar[Probe]
    model_format: ClassVar[str]  # what the release ships: "gguf" (one file) or "hf" (a dir)

    @abstractmethod
    def version(self, p: Profile) -> str:
        """What users see as the engine's version (/v1/appliance)."""

    # --- building --------------------------------------------------------------------
    @abstractmethod
    def recipe(self, p: Profile, platform: Platform) -> Any:
        """The build, as data: .arch, .on_device, .notes, .to_json() (the cache key) and
        .commands() (what `builder engine recipe` prints)."""

    @abstractmethod
    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        """Build on this machine (cached); None when the device builds it itself."""

    def build_check(self, p: Profile, platform: Platform) -> Any:
        """Peak memory of building on the device (planner.BuildCheck), or None."""
        return None

    # --- the model ---------------------------------------------------------------------
    @abstractmethod
    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        """The model artifact a release carries, from what was fetched."""

    # --- on the device -----------------------------------------------------------------
    @abstractmethod
    def release_files(self, i: Inputs, tree: Path) -> None:
        """Put what the engine needs into a release tree (binaries, build settings)."""

    @abstractmethod
    def env(self, i: Inputs, layout: Layout) -> dict[str, str]:
        """The engine's settings, as the environment its unit gets (engine.env)."""

    @abstractmethod
    def exec_start(self, i: Inputs, layout: Layout) -> str:
        """The unit's ExecStart, run from `current/` (so a release switches it)."""

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        """What the gateway must know of this engine (gateway.json): the probe it answers
        from its work loop, the engine's own request fields the gateway lets through
        (of builder/gateway/validate.py's LLAMA_FIELDS; default: all of them), and the
        status file of a build on the device."""
        return {"engine_probe_path": self.probe.alive}

    def start_timeout(self, p: Profile) -> int:
        """Seconds loading may take before the unit's start fails."""
        return 600

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        """Device nodes the engine's unit may open (DeviceAllow=); none on a CPU."""
        return ()

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        """Runtime libraries the rootfs must carry for this engine."""
        return ()

    # --- memory --------------------------------------------------------------------------
    @abstractmethod
    def memory(self, pin: PlanInput) -> dict[str, int]:
        """What the engine allocates at load, in bytes: weights, repacked, kv_per_slot,
        kv_total, compute, output, engine_overhead."""

    def repacked_types(self, platform: Platform) -> tuple[str, ...]:
        """Weight types the engine copies into a CPU-specific layout at load."""
        return ()

    def cheaper_kv(self, pin: PlanInput) -> tuple[str, dict[str, Any]] | None:
        """A cheaper KV cache the planner may suggest: (what to set, PlanInput changes)."""
        return None


@functools.cache
def _engines() -> dict[str, Engine]:
    """Every module (or package) here with an ENGINE."""
    found = {}
    for m in pkgutil.iter_modules(__path__):
        engine = importlib.import_module(f"{__name__}.{m.name}").ENGINE
        found[engine.kind] = engine
    return found


def get(kind: str) -> Engine:
    try:
        return _engines()[kind]
    except KeyError:
        raise BuilderError(f"engine.kind: unknown engine {kind!r}; known: "
                           f"{', '.join(_engines())}") from None
