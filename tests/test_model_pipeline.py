"""Models through llama.cpp's own tools: HF -> GGUF F16 -> Q4_K_M, answers from
llama-server, the planner against what llama-server allocates, and a real chat model."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest
from harness.llama_server import LlamaServer, free_port

from builder import planner
from builder.contracts import PlanInput
from builder.engines.llama_cpp.memory import kv_bytes_per_token, repacked_types
from builder.engines.llama_cpp.server import server_args
from builder.model import catalog
from builder.model.shape import from_catalog
from builder.resolve import engine_named
from builder.schema import Runtime
from builder.units import GiB, MiB

LLAMA = engine_named("llama.cpp")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_reader(llama_source):
    sys.path.insert(0, str(llama_source.path / "gguf-py"))
    import gguf

    yield gguf.GGUFReader
    sys.path.remove(str(llama_source.path / "gguf-py"))


def _field(reader, key: str):
    f = reader.fields[key]
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]


def test_tiny_qwen2_converts_and_quantizes_with_its_qwen2_features(tiny_q4, gguf_reader
                                                                   ) -> None:
    r = gguf_reader(tiny_q4)
    assert _field(r, "general.architecture") == "qwen2"
    assert _field(r, "qwen2.attention.head_count_kv") == 2  # GQA: 4 heads share 2 KV heads
    tensors = {t.name: t for t in r.tensors}
    assert "blk.0.attn_q.bias" in tensors and "blk.0.attn_k.bias" in tensors  # QKV bias
    assert "output.weight" not in tensors  # tied embeddings
    assert tensors["blk.0.attn_k.weight"].shape.tolist() == [64, 32]
    assert _field(r, "general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_tiny_qwen2_answers_through_llama_server(x86_engine, tiny_q4, server_log: Path
                                                 ) -> None:
    port = free_port()
    args = server_args(Runtime(context_length=512), str(tiny_q4), port=port, threads=2)
    with LlamaServer(x86_engine.tool("llama-server"), args, server_log, port=port) as srv:
        d = srv.post("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
            "temperature": 0})
    # random weights: the text is noise, but eight tokens of it came back
    assert d["usage"]["completion_tokens"] == 8
    assert d["choices"][0]["message"]["content"]


def test_synthetic_qwen_0_5b_q4_k_m_has_the_published_size(qwen05_q4, gguf_reader) -> None:
    # the published Qwen2.5-0.5B-Instruct Q4_K_M GGUF is about 398 MB
    assert qwen05_q4.stat().st_size == pytest.approx(398e6, rel=0.05)
    # and the catalog predicts every tensor's type: the data bytes match exactly
    data = sum(int(t.n_bytes) for t in gguf_reader(qwen05_q4).tensors)
    assert data == LLAMA.weight_bytes(catalog.get_model("qwen2.5-0.5b-instruct"), "Q4_K_M")
    # and the planner reads the same shape from the file itself (a replaced model)
    shape = LLAMA.shape_of(qwen05_q4, "Q4_K_M")
    planned = from_catalog("qwen2.5-0.5b-instruct", "Q4_K_M", LLAMA)
    assert shape.weights == planned.weights and shape.matrices == planned.matrices
    assert (shape.arch.n_layer, shape.arch.n_embd, shape.arch.n_head, shape.arch.n_head_kv,
            shape.arch.n_ff, shape.arch.n_vocab, shape.arch.tied_embeddings) == (
        24, 896, 14, 2, 4864, 151936, True)


def test_planner_matches_what_llama_server_allocates(x86_engine, qwen05_q4,
                                                     server_log: Path) -> None:
    rt = Runtime(context_length=4096, parallel=1)
    port = free_port()
    args = server_args(rt, str(qwen05_q4), port=port, threads=2)
    with LlamaServer(x86_engine.tool("llama-server"), [*args, "-lv", "4"], server_log,
                     port=port) as srv:
        report = srv.report()
    plan = planner.plan(PlanInput(
        model=LLAMA.shape_of(qwen05_q4, "Q4_K_M"), engine=LLAMA,
        context_length=4096, parallel=1, kv_cache_type="f16", flash_attn="auto",
        ubatch_size=512, ram=4 * GiB, reserved=320 * MiB, memory_max=None,
        unified_gpu=False, repack_types=repacked_types(frozenset({"avx2"}))))
    assert report.n_ctx == 4096
    assert plan.weights == pytest.approx(report.model, rel=0.10), report.raw
    if "AVX2 = 1" in srv.log_text():  # the x86-64-v3 backend repacks Q4_K
        assert plan.repacked == pytest.approx(report.repack, rel=0.10), report.raw
    assert plan.kv_total == pytest.approx(report.kv, rel=0.10), report.raw
    assert plan.compute == pytest.approx(report.compute, rel=0.10), report.raw


def test_smollm2_answers_a_simple_question_correctly(x86_engine, smollm2_gguf,
                                                     server_log: Path) -> None:
    port = free_port()
    args = server_args(Runtime(context_length=2048), str(smollm2_gguf), port=port, threads=2)
    with LlamaServer(x86_engine.tool("llama-server"), args, server_log, port=port) as srv:
        reply = srv.chat("What is the capital of France? Answer in one sentence.",
                         max_tokens=24)
    assert "paris" in reply.lower(), reply


def test_quantizing_again_is_a_cache_hit(qwen05_q4, artifact_cache, x86_engine,
                                         llama_source) -> None:
    from conftest import _quantized

    assert _quantized("qwen2.5-0.5b-instruct", "Q4_K_M", artifact_cache,
                      x86_engine) == qwen05_q4


def test_synthetic_qwen_0_5b_streams_visible_text(x86_engine, qwen05_q4, gguf_reader,
                                                  server_log: Path) -> None:
    # every id of its 151,936 is a printable piece (not [PAD]): whatever the random
    # weights pick is text
    r = gguf_reader(qwen05_q4)
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert len(types) == 151936 and types.count(1) > 0.99 * len(types)  # 1: NORMAL
    port = free_port()
    args = server_args(Runtime(context_length=1024), str(qwen05_q4), port=port, threads=2)
    with LlamaServer(x86_engine.tool("llama-server"), args, server_log, port=port) as srv:
        for temperature in (0, 0.8):
            text = _streamed_text(srv.url, {
                "messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": 16, "temperature": temperature, "seed": 1, "stream": True})
            assert len(text.strip()) >= 16 and text.isprintable(), repr(text)


def _streamed_text(url: str, body: dict) -> str:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for line in resp:
            data = line.strip()[5:].strip() if line.startswith(b"data:") else b""
            if data and data != b"[DONE]":
                for choice in json.loads(data)["choices"]:
                    text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


@pytest.fixture(scope="module")
def soak():
    """benchmarks/soak.py, whose harness the soak test shares."""
    bench = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, bench)
    import soak

    yield soak
    sys.path.remove(bench)


def test_engine_memory_plateaus_within_its_plan(x86_engine, qwen05_q4, soak,
                                                server_log: Path) -> None:
    """40 distinct conversations against the engine as a device runs it (its settings as
    LLAMA_ARG_* variables), planned for a device small enough that the prompt cache
    fills: llama-server's RSS levels off, at or under the plan's figure for it."""
    plan = soak.soak_plan(qwen05_q4, ram=1296 * MiB, ctx=4096, parallel=1)
    assert 8 * MiB <= plan.prompt_cache <= 64 * MiB  # fills within the run
    port = free_port()
    env = {**os.environ, **soak.planned_env(plan, qwen05_q4, port, threads=2)}
    r = soak.soak(x86_engine.tool("llama-server"), [], server_log, conversations=40,
                  words=100, port=port, env=env)
    # the server took the planned ceiling (llama.cpp's own, 8 GiB, would never fill) ...
    assert r.evictions > 0, "the prompt cache never filled"
    # ... and stayed within the plan: over the second half, once the cache is full, a
    # quarter of what an unbounded cache would add (each of those 20 conversations' KV,
    # f16, 12 KiB per token for this shape); what remains is the allocator's, a few MiB
    one_conversation = r.prompt_tokens / 40 * kv_bytes_per_token(plan.input.model.arch, "f16")
    assert r.growth() < 0.25 * 20 * one_conversation, (r.after, one_conversation)
    assert r.peak <= soak.engine_figure(plan), (r.peak, soak.engine_figure(plan))
