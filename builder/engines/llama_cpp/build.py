"""llama.cpp compiled on this machine (natively or cross), cached by every input that
changes its bytes: source, recipe, compilers, CMake and Ninja versions."""

from __future__ import annotations

import json
import os
import platform as host
import shutil
from pathlib import Path

from ...cache import Cache
from ...contracts import EngineArtifact, Platform
from ...errors import BuilderError
from ...progress import step
from ...run import run
from . import source as sources
from .recipe import LlamaCppRecipe, Variant, recipe
from .settings import LlamaCppSettings

RECIPE_VERSION = 1  # bump when this module changes what it puts in an artifact

# The build host's own platform, for llama-quantize and llama-bench: on x86-64 the same
# portable recipe as an x86 appliance's, so one compile serves both.
HOST_PLATFORMS = {
    "x86_64": Platform(arch="amd64", gnu_triplet="x86_64-linux-gnu",
                       x86_levels=("x86-64-v2", "x86-64-v3"),
                       cpu_features=frozenset({"sse4.2", "avx2"})),
}


def host_triplet() -> str:
    machine = host.machine()
    if machine not in HOST_PLATFORMS:
        raise BuilderError(f"building on a {machine} host is not supported yet; use an "
                           "x86-64 build host")
    return HOST_PLATFORMS[machine].gnu_triplet


def tool_versions(r: LlamaCppRecipe) -> dict[str, str]:
    """First line of each tool's --version: part of the cache key."""
    out = {}
    for tool in (*r.compilers, "cmake", "ninja"):
        text = run([tool, "--version"], what=f"{tool} --version")
        out[tool] = text.strip().splitlines()[0] if text.strip() else "?"
    return out


def build(s: LlamaCppSettings, platform: Platform, cache: Cache, *,
          base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact:
    r = recipe(s, platform, host_triplet())
    if r.on_device:
        raise BuilderError(f"llama.cpp for {platform.arch} with CUDA is built on the "
                           "device; `builder engine recipe --profile ...` shows the commands")
    src = sources.llama_cpp(s.source, cache, base_dir=base_dir)
    inputs = {"recipe_version": RECIPE_VERSION, "source": src.id, "recipe": r.to_json(),
              "tools": tool_versions(r)}
    n_jobs = jobs or os.cpu_count() or 2
    label = f"llama.cpp for {platform.arch}" + (
        f" ({', '.join(platform.x86_levels)})" if platform.x86_levels else
        f" ({platform.arm_arch})" if platform.arm_arch else "")

    def do_build(out: Path, log_file: Path) -> dict:
        work = cache.dir("work") / out.parent.name.removeprefix(".tmp-")
        shutil.rmtree(work, ignore_errors=True)
        env = {
            "CCACHE_DIR": str(cache.dir("ccache")),
            "CCACHE_BASEDIR": str(cache.root),
            "CCACHE_NOHASHDIR": "1",
            "CCACHE_MAXSIZE": os.environ.get("CCACHE_MAXSIZE", "5G"),
        }
        bin_out = out / "bin"
        bin_out.mkdir()
        try:
            for i, variant in enumerate(r.variants or (None,)):
                name = variant.name if variant else "build"
                bdir = work / name
                args = [*r.cmake_args, *(variant.cmake_args if variant else ())]
                tag = f" [{name}]" if variant else ""
                with step(f"configuring {label}{tag}") as line:
                    run(["cmake", "-S", src.path, "-B", bdir, "-G", "Ninja", *args],
                        what=f"configuring {label}", env=env, log_file=log_file,
                        on_line=line)
                targets = r.targets if i == 0 else ("ggml-cpu",)
                with step(f"building {label}{tag}") as line:
                    run(["cmake", "--build", bdir, "-j", str(n_jobs), "--target", *targets],
                        what=f"building {label}", env=env, log_file=log_file,
                        on_line=line)
                _collect(bdir / "bin", bin_out, r, variant, first=i == 0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {"arch": r.arch, "source": src.description,
                "variants": [v.name for v in r.variants], "tools": list(r.targets)}
        (out / "engine.json").write_text(json.dumps(info, indent=2))
        return {"engine": info}

    entry = cache.get_or_build("engines", inputs, do_build, label=label)
    return EngineArtifact(entry, r)


def _collect(build_bin: Path, dest: Path, r: LlamaCppRecipe, variant: Variant | None, *,
             first: bool) -> None:
    """Binaries and shared libraries into dest; a variant's CPU backend renamed after it
    (ggml's loader picks the best-scoring libggml-cpu-*.so next to the executable)."""
    if first:
        for tool in r.targets:
            shutil.copy2(build_bin / tool, dest / tool)
        for lib in build_bin.glob("lib*.so*"):
            if not lib.name.startswith("libggml-cpu"):
                shutil.copy2(lib, dest / lib.name, follow_symlinks=False)
    if variant:
        shutil.copy2(build_bin / "libggml-cpu.so", dest / f"libggml-cpu-{variant.name}.so")


def host_tools(s: LlamaCppSettings, cache: Cache, *,
               base_dir: Path | None = None) -> EngineArtifact:
    """llama.cpp built for this build host (llama-quantize, llama-bench), from the same
    source as the profile's engine."""
    plat = HOST_PLATFORMS.get(host.machine())
    host_triplet()  # says which hosts are supported
    assert plat is not None
    return build(LlamaCppSettings(source=s.source), plat, cache, base_dir=base_dir)
