"""Engine sources and recipes: pins, bad sources, what goes into the cache key. Fast:
nothing here compiles llama.cpp (the broken source fails at CMake configure)."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import pytest
from stand_ins import build_context, device

from builder import build as build_mod
from builder.engines.llama_cpp.memory import CACHE_RAM_DEFAULT
from builder.engines.llama_cpp.recipe import x86_flags
from builder.engines.llama_cpp.server import server_args, server_settings
from builder.fleet import release
from builder.profiles import ProfileStore
from builder.schema import Runtime
from builder.units import MiB


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def recipe_of(name: str):
    d = device(name)
    return d.engine.recipe(d.profile, d.platform)


def test_x86_recipe_builds_each_cpu_level_as_a_loadable_backend() -> None:
    r = recipe_of("x86-gateway")
    assert "-DGGML_BACKEND_DL=ON" in r.cmake_args and "-DGGML_NATIVE=OFF" in r.cmake_args
    assert [v.name for v in r.variants] == ["x86-64-v2", "x86-64-v3"]
    v2, v3 = (set(v.cmake_args) for v in r.variants)
    assert "-DGGML_AVX2=OFF" in v2 and "-DGGML_SSE42=ON" in v2
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON"} <= v3
    assert "-DGGML_AMX_INT8=ON" not in v3  # AMX kernels SIGILL off the build host
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in r.cmake_args  # nothing fetched at build time


def test_pi5_recipe_cross_compiles_for_the_a76() -> None:
    r = recipe_of("pi5-4gb")
    assert r.arch == "arm64" and r.compilers == ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++")
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in r.cmake_args
    assert not any("i8mm" in a or "sve" in a for a in r.cmake_args)


def test_orin_recipe_is_cuda_sm87_on_the_device(cli, workdir: Path) -> None:
    write(workdir / "profiles/orin-gguf.yaml",
          "extends: orin-nano-8gb\nengine:\n  kind: llama.cpp\nmodel:\n  quant: Q4_K_M\n")
    r = recipe_of("orin-gguf")
    assert r.on_device and "-DCMAKE_CUDA_ARCHITECTURES=87" in r.cmake_args
    res = cli("engine", "recipe", "--profile", "orin-gguf")
    assert res.code == 0 and "-DGGML_CUDA=ON" in res.out
    res = cli("engine", "build", "--profile", "orin-gguf")
    assert res.code == 2
    assert res.err == ("error: orin-gguf: llama.cpp for jetson-orin is built on the device; "
                       "`builder engine recipe --profile orin-gguf` shows the commands\n")


def test_tensorrt_llm_engine_is_not_built_here(cli) -> None:
    res = cli("engine", "build", "--profile", "orin-nano-8gb")
    assert res.code == 2 and "tensorrt-llm for jetson-orin is built on the device" in res.err
    res = cli("engine", "recipe", "--profile", "orin-nano-8gb")
    assert res.code == 0 and "trtllm-build --checkpoint_dir" in res.out


def test_x86_level_flags_are_exclusive() -> None:
    assert x86_flags("x86-64-v2").count("-DGGML_AVX=ON") == 0
    assert "-DGGML_AVX512=ON" in x86_flags("x86-64-v4")


def test_source_that_does_not_build_fails_in_one_line_and_caches_nothing(
        cli, workdir: Path, tmp_path: Path) -> None:
    write(workdir / "broken/CMakeLists.txt", "cmake_minimum_required(VERSION 3.14)\n"
          "project(broken C)\nmessage(FATAL_ERROR \"this llama.cpp does not build\")\n")
    write(workdir / "profiles/broken.yaml", "extends: x86-gateway\nengine:\n  llama_cpp:\n"
          "    source:\n      kind: path\n      path: ../broken\n")
    cache = tmp_path / "cache"
    r = cli("engine", "build", "--profile", "broken", "--cache-dir", str(cache))
    errors = [ln for ln in r.err.splitlines() if ln.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and r.err.endswith(errors[0] + "\n")
    assert errors[0].startswith("error: configuring llama.cpp for amd64 (x86-64-v2, "
                                "x86-64-v3): cmake exited with status 1 (log: ")
    assert errors[0].endswith("CMake Error at CMakeLists.txt:3 (message): this llama.cpp "
                              "does not build")
    log = Path(r.err.split("(log: ")[1].split(")")[0])
    assert log.is_file() and "this llama.cpp does not build" in log.read_text()
    assert not list((cache / "engines").iterdir()) or all(
        p.name.startswith(".lock") for p in (cache / "engines").iterdir())
    assert "Traceback" not in r.err


def test_source_path_that_is_missing(cli, workdir: Path) -> None:
    write(workdir / "profiles/gone.yaml", "extends: x86-gateway\nengine:\n  llama_cpp:\n"
          "    source: {kind: path, path: /nonexistent/llama.cpp}\n")
    r = cli("engine", "build", "--profile", "gone", "--cache-dir", str(workdir / "c"))
    assert (r.code, r.err) == (2, "error: engine.llama_cpp.source.path: /nonexistent/llama.cpp "
                                  "does not exist\n")


def test_tarball_with_wrong_sha256_is_refused(cli, workdir: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        data = b"cmake_minimum_required(VERSION 3.14)\n"
        info = tarfile.TarInfo("llama.cpp-x/CMakeLists.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (workdir / "llama.tar.gz").write_bytes(buf.getvalue())
    write(workdir / "profiles/tb.yaml", "extends: x86-gateway\nengine:\n  llama_cpp:\n"
          "    source: {kind: path, path: ../llama.tar.gz, sha256: '" + "0" * 64 + "'}\n")
    r = cli("engine", "build", "--profile", "tb", "--cache-dir", str(workdir / "c"))
    assert r.code == 2
    assert r.err.startswith("error: engine.llama_cpp.source.sha256: llama.tar.gz has sha256 ")
    assert r.err.endswith(f"expected {'0' * 64}\n")


@pytest.mark.parametrize(("field", "value"), [
    ("package", "llama-cpp-python"),
])
def test_pypi_source_must_be_pinned(field: str, value: str, cli, workdir: Path) -> None:
    write(workdir / "profiles/unpinned.yaml", "extends: x86-gateway\nengine:\n  llama_cpp:\n"
          f"    source: {{{field}: {value}}}\n")
    r = cli("engine", "build", "--profile", "unpinned", "--cache-dir", str(workdir / "c"))
    assert (r.code, r.err) == (2, "error: engine.llama_cpp.source.package: pin a version, "
                                  "e.g. llama-cpp-python==0.3.36\n")


# --- llama-server's settings: everything it may hold is the plan's ---------------------

LLAMA_CPP_PROFILES = ["pi5-4gb", "pi5-8gb", "x86-gateway"]


@pytest.mark.parametrize("name", LLAMA_CPP_PROFILES)
def test_engine_env_bounds_the_prompt_cache_to_the_plan(name: str) -> None:
    ctx = build_context(name)
    i = build_mod.release_inputs(ctx)
    env = ctx.engine.env(i, release.LAYOUT)
    assert ctx.plan is not None and ctx.plan.prompt_cache > 0
    assert env["LLAMA_ARG_CACHE_RAM"] == str(ctx.plan.prompt_cache // MiB)
    assert env["LLAMA_ARG_CTX_CHECKPOINTS"] == "0"  # and the plan counts none
    assert ctx.plan.checkpoints == 0
    conf = release.engine_unit_conf(i)
    memory_max = int(re.search(r"^MemoryMax=(\d+)$", conf, re.M).group(1))
    engine = ctx.plan.total - ctx.plan.gateway_overhead  # prompt cache included
    assert engine <= memory_max
    assert int(env["LLAMA_ARG_CACHE_RAM"]) * MiB <= memory_max - (
        engine - ctx.plan.prompt_cache)


def test_a_profile_may_set_the_prompt_cache_or_turn_it_off(workdir: Path) -> None:
    write(workdir / "profiles/no-cache.yaml",
          "extends: x86-gateway\nruntime:\n  prompt_cache: 0\n")
    ctx = build_context("no-cache")
    env = ctx.engine.env(build_mod.release_inputs(ctx), release.LAYOUT)
    assert env["LLAMA_ARG_CACHE_RAM"] == "0" and ctx.plan.prompt_cache == 0


def test_without_a_plan_llama_server_keeps_no_prompt_cache() -> None:
    args = server_args(Runtime(), "m.gguf", threads=2)
    assert args[args.index("--cache-ram") + 1] == "0"  # llama.cpp's default is 8 GiB
    args = server_args(Runtime(prompt_cache="300MiB"), "m.gguf", threads=2)
    assert args[args.index("--cache-ram") + 1] == "300"
    args = server_args(Runtime(), "m.gguf", threads=2, prompt_cache=300 * MiB + 5)
    assert args[args.index("--cache-ram") + 1] == "300"
    assert args[args.index("--ctx-checkpoints") + 1] == "0"


def _pinned_llama_cpp() -> Path:
    """The pinned llama.cpp source, if the artifact cache has it (nothing is fetched)."""
    from builder.cache import Cache, key_of

    src = ProfileStore().load("x86-gateway").profile.engine.llama_cpp.source
    out = Cache().dir("sources") / key_of("sources", {"pypi": src.package,
                                                      "sha256": src.sha256}) / "out"
    if not (out / "common/arg.cpp").is_file():
        pytest.skip("the pinned llama.cpp source is not in the artifact cache yet")
    return out


def test_every_setting_is_one_the_pinned_llama_server_reads() -> None:
    """llama-server ignores an environment variable it does not know: a misspelt one
    would leave llama.cpp's default (an 8 GiB prompt cache) in place, silently."""
    arg_cpp = (_pinned_llama_cpp() / "common/arg.cpp").read_text()
    flags_of: dict[str, set[str]] = {}  # LLAMA_ARG_* -> the flags of that option
    for option in arg_cpp.split("add_opt(")[1:]:
        env = re.search(r'set_env\("(LLAMA_ARG_\w+)"\)', option)
        if env:
            flags_of[env.group(1)] = set(re.findall(r'"(--[\w-]+)"', option))
    for flag, env, _ in server_settings(Runtime(), "m.gguf", threads=2, alias="a"):
        assert env in flags_of, f"llama-server reads no {env}"
        assert flag in flags_of[env], f"{env} is not the variable of {flag}"


def test_planned_defaults_match_the_pinned_llama_cpp() -> None:
    common = (_pinned_llama_cpp() / "common/common.h").read_text()
    assert int(re.search(r"cache_ram_mib\s*=\s*(\d+);", common).group(1)) * MiB \
        == CACHE_RAM_DEFAULT
