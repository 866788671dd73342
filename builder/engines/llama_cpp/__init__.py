"""llama.cpp: llama-server on CPU (x86 gateways, the Pi 5) or CUDA (Jetson, built on the
device). Models are GGUF files, converted and quantized with llama.cpp's own tools."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...hardware import Platform
from ...schema import Profile
from .. import Engine, EngineArtifact, Probe
from . import build as build_mod
from . import memory as memory_mod
from .recipe import LlamaCppRecipe, recipe
from .server import server_env

if TYPE_CHECKING:
    from ...cache import Cache
    from ...device.layout import Layout
    from ...fleet.release import Inputs
    from ...model.pipeline import Fetched, ModelArtifact
    from ...planner import BuildCheck, PlanInput

# Peak memory per compile job when building on the device: nvcc on ggml-cuda's template
# instances peaks near 1.5 GiB (seen on Orin), gcc on ggml-cpu near 0.5 GiB.
COMPILE_JOB_PEAK = {True: 3 << 29, False: 1 << 29}


class LlamaCpp(Engine):
    kind = "llama.cpp"
    # /health answers 200 once the model is loaded (503 while loading); /metrics is
    # answered by the server's task loop, so it stops answering when that loop hangs.
    probe = Probe(ready="/health", alive="/metrics")
    model_format = "gguf"

    def version(self, p: Profile) -> str:
        src = p.engine.llama_cpp.source
        return {"pypi-sdist": src.package, "path": "local source tree",
                "git": f"{src.url}@{src.ref}"}.get(src.kind, src.kind)

    def recipe(self, p: Profile, platform: Platform) -> LlamaCppRecipe:
        return recipe(p, platform, build_mod.host_triplet())

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        if self.recipe(p, platform).on_device:
            return None
        return build_mod.build(p, platform, cache, base_dir=base_dir, jobs=jobs)

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        from ...planner import BuildCheck, build_budget
        from ...units import MiB

        if not platform.build_on_device:
            return None
        per_job = COMPILE_JOB_PEAK[bool(platform.cuda_arch)]
        jobs = p.engine.build_jobs or p.device.cpu_cores
        budget = build_budget(p)
        peak = jobs * per_job + 512 * MiB
        safe = max(1, (budget - 512 * MiB) // per_job)
        ok = peak <= budget
        return BuildCheck(f"llama.cpp compile with {jobs} jobs", peak, budget, ok,
                          "" if ok else f"set engine.build_jobs: {safe}")

    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        from ...model.pipeline import gguf_pipeline

        return gguf_pipeline(p, fetched, cache,
                             lambda: build_mod.host_tools(p, cache, base_dir=source_base),
                             source_base=source_base)

    def release_files(self, i: Inputs, tree: Path) -> None:
        assert i.engine_dir is not None
        shutil.copytree(i.engine_dir / "bin", tree / "bin", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    def env(self, i: Inputs, layout: Layout) -> dict[str, str]:
        p = i.profile
        env = server_env(p.runtime, f"{layout.model_dir}/{i.model.device_name}",
                         port=p.service.engine_port, threads=p.device.cpu_cores,
                         alias=i.model_id, prompt_cache=planned_prompt_cache(i))
        env.pop("LLAMA_ARG_HOST")  # ExecStart pins 127.0.0.1 on the command line
        return env

    def exec_start(self, i: Inputs, layout: Layout) -> str:
        return f"{layout.current}/bin/llama-server --host 127.0.0.1"

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        return platform.gpu_devices if platform.cuda_arch else ()

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        return ("libgomp1",)  # ggml's CPU backend uses OpenMP

    def memory(self, pin: PlanInput) -> dict[str, int]:
        return memory_mod.memory(pin)

    def repacked_types(self, platform: Platform) -> tuple[str, ...]:
        if platform.cuda_arch:  # weights live in the GPU's buffers, not repacked for CPU
            return ()
        return memory_mod.repacked_types(platform.cpu_features)

    def cheaper_kv(self, pin: PlanInput) -> tuple[str, dict[str, Any]] | None:
        """A q8_0 KV cache (a quantized V cache needs flash attention)."""
        kv = memory_mod.KV_BYTES
        if kv[pin.kv_cache_type] <= kv["q8_0"]:
            return None
        extra = " (with runtime.flash_attn: on)" if pin.flash_attn == "off" else ""
        return (f"runtime.kv_cache_type: q8_0{extra}",
                {"kv_cache_type": "q8_0",
                 "flash_attn": "on" if pin.flash_attn == "off" else pin.flash_attn})


def planned_prompt_cache(i: Inputs) -> int:
    """The prompt cache the plan of this release leaves room for: planned for the GGUF
    file it carries (its own header), else for the profile's catalog model (stand-in
    files in tests). Either way the engine's total stays at the plan's: the cache is
    what the other parts leave."""
    from ...errors import BuilderError
    from ...model.shape import from_gguf
    from ...planner import PlanInput, plan

    try:
        shape = from_gguf(i.model.path) if i.model.path.is_file() else None
    except BuilderError:
        shape = None
    return plan(PlanInput.from_profile(i.profile, shape), suggest=False).prompt_cache


ENGINE = LlamaCpp()
