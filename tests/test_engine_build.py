"""llama.cpp built for real, once per suite run (then from the cache): x86 with one CPU
backend per x86-64 level, arm64 cross-built and run under qemu-user."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from harness import engine_for
from harness.llama_server import LlamaServer, free_port

from builder.cache import key_of
from builder.engines.llama_cpp.server import server_args
from builder.schema import Runtime

pytestmark = pytest.mark.slow


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return struct.unpack_from("<H", head, 18)[0]


EM_X86_64, EM_AARCH64 = 62, 183


def test_x86_artifact_has_the_tools_and_a_backend_per_cpu_level(x86_engine) -> None:
    files = x86_engine.entry.manifest["outputs"]
    for tool in ("llama-server", "llama-quantize", "llama-bench"):
        assert f"bin/{tool}" in files
        assert elf_machine(x86_engine.tool(tool)) == EM_X86_64
    assert "bin/libggml-cpu-x86-64-v2.so" in files and "bin/libggml-cpu-x86-64-v3.so" in files
    assert "bin/libggml-cpu.so" not in files  # only the named levels ship
    assert x86_engine.entry.problems() == []


def test_a_second_build_is_a_cache_hit(x86_engine, artifact_cache) -> None:
    again = engine_for("x86-gateway", artifact_cache)
    assert again.entry.hit and again.entry.path == x86_engine.entry.path


def test_the_key_changes_with_any_build_input(x86_engine) -> None:
    inputs = x86_engine.entry.manifest["inputs"]
    assert key_of("engines", inputs) == x86_engine.entry.key
    for change in ({"source": "0" * 64},
                   {"recipe": {**inputs["recipe"], "cmake_args": [
                       *inputs["recipe"]["cmake_args"], "-DGGML_LLAMAFILE=OFF"]}},
                   {"tools": {**inputs["tools"], "cmake": "cmake version 4.0.0"}}):
        assert key_of("engines", {**inputs, **change}) != x86_engine.entry.key


def _host_has(flag: str) -> bool:
    return flag in Path("/proc/cpuinfo").read_text().split()


def test_the_loader_picks_the_best_backend_this_cpu_runs(x86_engine, tiny_q4,
                                                         server_log: Path) -> None:
    port = free_port()
    args = server_args(Runtime(context_length=512), str(tiny_q4), port=port, threads=2)
    with LlamaServer(x86_engine.tool("llama-server"), [*args, "-lv", "4"], server_log,
                     port=port) as srv:
        assert srv.complete("hello", max_tokens=4)["tokens_predicted"] == 4
    level = "x86-64-v3" if _host_has("avx2") and _host_has("fma") else "x86-64-v2"
    assert f"loaded CPU backend from {x86_engine.bin}/libggml-cpu-{level}.so" in \
        srv.log_text()


@pytest.mark.emulated
def test_arm64_build_is_aarch64_and_answers_under_qemu_user(pi5_engine, tiny_q4,
                                                           server_log: Path) -> None:
    server = pi5_engine.tool("llama-server")
    assert elf_machine(server) == EM_AARCH64
    port = free_port()
    args = server_args(Runtime(context_length=512), str(tiny_q4), port=port, threads=2)
    # qemu-user runs the aarch64 binary; -L gives it Debian's arm64 cross libraries.
    with LlamaServer(server, args, server_log, port=port, start_timeout=600,
                     wrapper=["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu"]) as srv:
        d = srv.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8,
            "temperature": 0})
    assert d["usage"]["completion_tokens"] == 8
    assert d["choices"][0]["message"]["content"], "the arm64 llama-server returned no text"
