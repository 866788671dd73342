"""llama.cpp: llama-server on CPU (x86 gateways, the Pi 5) or CUDA (Jetson, built on the
device). Models are GGUF files, converted and quantized with llama.cpp's own tools."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contracts import Engine, EngineArtifact, HostServer, Platform, Probe, Tool
from ...schema import Profile
from . import build as build_mod
from . import ggml
from . import memory as memory_mod
from . import source as sources
from .recipe import HOST_ONLY, LlamaCppRecipe, recipe
from .server import server_env
from .settings import LlamaCppSettings

if TYPE_CHECKING:
    from ...cache import Cache
    from ...contracts import BuildCheck, PlanInput, ReleaseInputs
    from ...device.layout import Layout
    from ...model.catalog import ModelArch, Tensor
    from ...model.pipeline import Fetched, ModelArtifact
    from ...model.shape import ModelShape

# Peak memory per compile job when building on the device: nvcc on ggml-cuda's template
# instances peaks near 1.5 GiB (seen on Orin), gcc on ggml-cpu near 0.5 GiB.
COMPILE_JOB_PEAK = {True: 3 << 29, False: 1 << 29}
class LlamaCpp(Engine):
    kind = "llama.cpp"
    section = "llama_cpp"
    settings = LlamaCppSettings
    # /health answers 200 once the model is loaded (503 while loading); /metrics is
    # answered by the server's task loop, so it stops answering when that loop hangs.
    probe = Probe(ready="/health", alive="/metrics")
    model_format = "gguf"
    quants = ggml.QUANTS

    def version(self, p: Profile) -> str:
        src = self.settings_of(p).source
        return {"pypi-sdist": src.package, "path": "local source tree",
                "git": f"{src.url}@{src.ref}"}.get(src.kind, src.kind)

    def problems(self, p: Profile) -> list[tuple[tuple[str | int, ...], str]]:
        rt, out = p.runtime, []
        if rt.kv_cache_type not in ("f32", "f16", "bf16") and rt.flash_attn == "off":
            out.append((("runtime", "kv_cache_type"), f"a quantized V cache "
                        f"({rt.kv_cache_type}) needs flash attention; set runtime.flash_attn "
                        f"to auto or on, or kv_cache_type to f16"))
        if rt.ubatch_size > rt.batch_size:
            out.append((("runtime", "ubatch_size"), f"{rt.ubatch_size} is larger than "
                        f"runtime.batch_size ({rt.batch_size})"))
        return out

    def relative_paths(self) -> tuple[tuple[str | int, ...], ...]:
        return (("source", "path"),)

    # --- weights ---------------------------------------------------------------------
    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        return ggml.tensor_types(model, quant)

    def shape_of(self, path: Path, quant: str) -> ModelShape:
        from ...model.shape import from_hf_dir

        if path.is_file():
            return ggml.from_gguf(path)
        return from_hf_dir(path, quant, self)  # a checkpoint: what the pipeline makes of it

    # --- building --------------------------------------------------------------------
    def recipe(self, p: Profile, platform: Platform) -> LlamaCppRecipe:
        return recipe(self.settings_of(p), platform, build_mod.host_triplet())

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        if self.recipe(p, platform).on_device:
            return None
        return build_mod.build(self.settings_of(p), platform, cache, base_dir=base_dir,
                               jobs=jobs or p.engine.build_jobs)

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        from ...contracts import BuildCheck
        from ...planner import build_budget
        from ...units import MiB

        if not platform.build_on_device:
            return None
        per_job = COMPILE_JOB_PEAK[platform.gpu == "cuda"]
        jobs = p.engine.build_jobs or p.device.cpu_cores
        budget = build_budget(p)
        peak = jobs * per_job + 512 * MiB
        safe = max(1, (budget - 512 * MiB) // per_job)
        ok = peak <= budget
        return BuildCheck(f"llama.cpp compile with {jobs} jobs", peak, budget, ok,
                          "" if ok else f"set engine.build_jobs: {safe}")

    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        from .convert import gguf_pipeline

        s = self.settings_of(p)
        return gguf_pipeline(p.model.quant, s.source, fetched, cache,
                             lambda: build_mod.host_tools(s, cache, base_dir=source_base),
                             source_base=source_base)

    def quality(self, p: Profile, fetched: Fetched, quants: list[str], cache: Cache, *,
                corpus: Path, ctx: int, chunks: int, source_base: Path | None = None
                ) -> list[dict[str, Any]]:
        from . import quality

        return quality.of_quants(self.settings_of(p), fetched, quants,
                                 quality.Text(corpus, ctx=ctx, chunks=chunks), cache,
                                 of={"engine": self.kind, "model": p.model.id},
                                 source_base=source_base,
                                 threads=len(os.sched_getaffinity(0)))  # this machine's

    def host_server(self, p: Profile, platform: Platform, tree: Path, cache: Cache, *,
                    source_base: Path | None = None) -> HostServer:
        from ...rootfs.binfmt import host_arch
        from ...verify.suite.engine_env import parse_env_file
        from .local import serving

        env = parse_env_file((tree / "engine.env").read_text())
        server = tree / "bin" / "llama-server"
        if platform.arch == host_arch() and server.is_file():
            what = "the release's own llama-server"
        else:  # another architecture's build: the same source built for this machine
            server = build_mod.host_tools(self.settings_of(p), cache,
                                          base_dir=source_base).tool("llama-server")
            what = f"llama-server of the same llama.cpp source built for {host_arch()}"
        return HostServer(lambda model: serving(server, env, model.path), what, server)

    def convert(self, p: Profile, fetched: Fetched, cache: Cache, *,
                source_base: Path | None = None) -> Path:
        from .convert import convert, gguf_of

        src = sources.llama_cpp(self.settings_of(p).source, cache, base_dir=source_base)
        return gguf_of(convert(fetched, src, cache))

    # --- on the device -----------------------------------------------------------------
    def release_files(self, i: ReleaseInputs, tree: Path) -> None:
        assert i.engine_dir is not None
        shutil.copytree(i.engine_dir / "bin", tree / "bin", symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *HOST_ONLY))

    def env(self, i: ReleaseInputs, layout: Layout) -> dict[str, str]:
        p = i.profile
        env = server_env(p.runtime, f"{layout.model_dir}/{i.model.device_name}",
                         port=p.service.engine_port, threads=p.device.cpu_cores,
                         alias=i.model_id, prompt_cache=i.plan.prompt_cache)
        env.pop("LLAMA_ARG_HOST")  # ExecStart pins 127.0.0.1 on the command line
        return env

    def exec_start(self, i: ReleaseInputs, layout: Layout) -> str:
        return f"{layout.current}/bin/llama-server --host 127.0.0.1"

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        return platform.gpu_devices if platform.gpu == "cuda" else ()

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        return ("libgomp1",)  # ggml's CPU backend uses OpenMP

    def gpu_stack(self, p: Profile, platform: Platform) -> tuple[str, ...]:
        # CUDA built on the device needs the toolkit (nvcc) there, and its runtime
        if platform.gpu == "cuda" and platform.build_on_device:
            return ("cuda-runtime", "cuda-toolkit")
        return ()

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        return {"engine": (Tool("cmake", "cmake", "configures llama.cpp"),
                           Tool("ninja", "ninja-build", "builds it"),
                           Tool("ccache", "ccache", "rebuilds only what changed"),
                           Tool("c++", "g++", "compiles it"),
                           Tool("git", "git", "fetches a git source"))}

    # --- memory --------------------------------------------------------------------------
    def memory(self, pin: PlanInput) -> dict[str, int]:
        return memory_mod.memory(pin)

    def repacked_types(self, platform: Platform) -> tuple[str, ...]:
        if platform.gpu == "cuda":  # weights live in the GPU's buffers, not repacked for CPU
            return ()
        return memory_mod.repacked_types(platform.cpu_features)

    def compute_basis(self, pin: PlanInput) -> str:
        return f"ubatch {pin.ubatch_size}"  # one physical batch's activations

    def tuner(self) -> Any:
        from . import tune

        return tune

    def cheaper_kv(self, pin: PlanInput) -> tuple[str, PlanInput] | None:
        """A q8_0 KV cache (a quantized V cache needs flash attention)."""
        kv = memory_mod.KV_BYTES
        if kv[pin.kv_cache_type] <= kv["q8_0"]:
            return None
        extra = " (with runtime.flash_attn: on)" if pin.flash_attn == "off" else ""
        return (f"runtime.kv_cache_type: q8_0{extra}",
                replace(pin, kv_cache_type="q8_0",
                        flash_attn="on" if pin.flash_attn == "off" else pin.flash_attn))


ENGINE = LlamaCpp()
