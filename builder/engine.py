"""The engine artifact: llama.cpp built for a target, cached by every input that
changes its bytes (source, recipe, compilers, CMake)."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import sources
from .cache import Cache, Entry
from .errors import BuilderError
from .progress import step
from .recipes import LlamaCppRecipe
from .run import run
from .schema import LlamaCppBuild, Profile
from .targets import TARGETS

RECIPE_VERSION = 1  # bump when this module changes what it puts in an artifact


@dataclass(frozen=True)
class EngineArtifact:
    entry: Entry
    recipe: LlamaCppRecipe

    @property
    def bin(self) -> Path:
        return self.entry.out / "bin"

    def tool(self, name: str) -> Path:
        return self.bin / name


def recipe_for(p: Profile) -> LlamaCppRecipe:
    if p.engine.kind != "llama.cpp":
        raise BuilderError(f"engine.kind: {p.engine.kind} engines are built on the device by "
                           f"its engine role; `builder engine recipe` shows the commands")
    return TARGETS[p.target].llama_cpp_recipe(p)


def tool_versions(recipe: LlamaCppRecipe) -> dict[str, str]:
    """First line of each tool's --version: part of the cache key."""
    out = {}
    for tool in (*recipe.compilers, "cmake", "ninja"):
        text = run([tool, "--version"], what=f"{tool} --version")
        out[tool] = text.strip().splitlines()[0] if text.strip() else "?"
    return out


def build(p: Profile, cache: Cache, *, base_dir: Path | None = None,
          jobs: int | None = None) -> EngineArtifact:
    recipe = recipe_for(p)
    if recipe.on_device:
        raise BuilderError(f"{recipe.target}: llama.cpp with CUDA is built on the device; "
                           f"`builder engine recipe --profile ...` shows the commands")
    src = sources.llama_cpp(p.engine.llama_cpp.source, cache, base_dir=base_dir)
    inputs = {
        "recipe_version": RECIPE_VERSION,
        "source": src.id,
        "recipe": recipe.to_json(),
        "tools": tool_versions(recipe),
    }
    n_jobs = jobs or p.engine.build_jobs or os.cpu_count() or 2
    label = f"llama.cpp for {recipe.target} ({recipe.arch})"

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
            for i, variant in enumerate(recipe.variants or (None,)):
                name = variant.name if variant else "build"
                bdir = work / name
                args = [*recipe.cmake_args, *(variant.cmake_args if variant else ())]
                with step(f"configuring {label}" + (f" [{name}]" if variant else "")) as line:
                    run(["cmake", "-S", src.path, "-B", bdir, "-G", "Ninja", *args],
                        what=f"configuring {label}", env=env, log_file=log_file,
                        on_line=line)
                targets = recipe.targets if i == 0 else ("ggml-cpu",)
                with step(f"building {label}" + (f" [{name}]" if variant else "")) as line:
                    run(["cmake", "--build", bdir, "-j", str(n_jobs), "--target", *targets],
                        what=f"building {label}", env=env, log_file=log_file,
                        on_line=line)
                _collect(bdir / "bin", bin_out, recipe, variant.name if variant else None,
                         first=i == 0)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {"target": recipe.target, "arch": recipe.arch, "source": src.description,
                "variants": [v.name for v in recipe.variants], "tools": list(recipe.targets)}
        (out / "engine.json").write_text(json.dumps(info, indent=2))
        return {"engine": info}

    entry = cache.get_or_build("engines", inputs, do_build, label=label)
    return EngineArtifact(entry, recipe)


def _collect(build_bin: Path, dest: Path, recipe: LlamaCppRecipe, variant: str | None,
             *, first: bool) -> None:
    """Binaries and shared libraries into dest; a variant's CPU backend renamed after it
    (ggml's loader picks the best-scoring libggml-cpu-*.so next to the executable)."""
    if first:
        for tool in recipe.targets:
            shutil.copy2(build_bin / tool, dest / tool)
        for lib in build_bin.glob("lib*.so*"):
            if not lib.name.startswith("libggml-cpu"):
                shutil.copy2(lib, dest / lib.name, follow_symlinks=False)
    if variant:
        shutil.copy2(build_bin / "libggml-cpu.so", dest / f"libggml-cpu-{variant}.so")


def host_tools(p: Profile, cache: Cache, *, base_dir: Path | None = None) -> EngineArtifact:
    """llama.cpp built for this build host (llama-quantize, llama-bench), from the same
    source as the profile's engine. On x86-64 it is the x86-gateway build, so one
    compile serves both."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise BuilderError(f"host tools: building on {platform.machine()} hosts is not "
                           f"supported yet; use an x86-64 build host")
    lc = LlamaCppBuild(source=p.engine.llama_cpp.source)
    host = p.model_copy(update={
        "target": "x86-gateway",
        "engine": p.engine.model_copy(update={"kind": "llama.cpp", "llama_cpp": lc,
                                              "build_jobs": p.engine.build_jobs}),
    })
    return build(host, cache, base_dir=base_dir)
