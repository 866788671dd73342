"""TensorRT Edge-LLM as an engine plug-in (builder/engines/tensorrt_edge_llm): its profile
section and checks, its memory model, and the release it makes for the device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stand_ins import device

from builder.engines.tensorrt_edge_llm import ENGINE, kv_capacity, tensor_bytes
from builder.errors import ProfileError
from builder.model.catalog import get_model
from builder.profiles import ProfileStore

SHIPPED = ("orin-nano-8gb-edgellm", "orin-agx-64gb-edgellm")


def write(tmp: Path, name: str, text: str) -> Path:
    (tmp / f"{name}.yaml").write_text(text)
    return tmp


def refusal(tmp: Path, name: str) -> str:
    """The one line loading profile `name` fails with."""
    with pytest.raises(ProfileError) as e:
        ProfileStore([tmp]).load(name)
    return str(e.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_profiles_plan_to_fit_and_their_engine_build_fits(name: str) -> None:
    d = device(name)
    assert d.engine is ENGINE and d.platform.gpu == "cuda"
    assert d.plan.verdict.value == "fits", d.plan.reason
    assert d.plan.build is not None and d.plan.build.ok, d.plan.build
    m = get_model(d.profile.model.id)
    t = d.profile.engine.tensorrt_edge_llm
    # llm_build sizes the KV cache: capacity tokens of fp16 K and V for each sequence
    assert d.plan.kv_total == m.n_layer * 2 * m.n_embd_kv * 2 * kv_capacity(d.profile) \
        * t.max_batch_size


def test_weights_follow_edge_llms_layouts() -> None:
    m = get_model("qwen2.5-1.5b-instruct")
    fp16 = ENGINE.weight_bytes(m, "fp16")
    awq = ENGINE.weight_bytes(m, "int4_awq")
    # the embedding table stays fp16 and, tied, lm_head is the engine's own fp16 copy
    table = m.n_vocab * m.n_embd * 2
    assert fp16 == m.n_params * 2 + table
    linear = sum(t.n for t in m.tensors() if t.is_matrix and t.name != "token_embd.weight")
    vectors = sum(t.n for t in m.tensors() if not t.is_matrix)
    assert awq == 2 * table + linear // 2 + linear // 128 * 2 + vectors * 2
    ffn = next(t for t in m.tensors() if t.name == "blk.0.ffn_up.weight")
    assert tensor_bytes(ffn, "int4_awq") == ffn.n // 2 + ffn.n // 128 * 2
    assert tensor_bytes(ffn, "int4_gptq") > tensor_bytes(ffn, "int4_awq")


@pytest.mark.parametrize("extra, field, says", [
    ("runtime: {parallel: 2}\n", "runtime.parallel", "one request at a time"),
    ("engine: {tensorrt_edge_llm: {max_input_len: 4096}}\n",
     "engine.tensorrt_edge_llm.max_input_len", "no room for an answer"),
    # the exporter only warns when there are no INT4 FFN weights to move out
    ("model: {quant: fp16}\n", "engine.tensorrt_edge_llm.externalize_weights",
     "model.quant fp16 has none"),
    # FP8 and FP4 are Edge-LLM precisions Orin cannot run (installation.md:184-185)
    ("model: {quant: fp8}\n", "model.quant", "int4_awq, int4_gptq, int8_sq, fp16"),
    ("engine: {tensorrt_edge_llm: {externalize_weights: [nvfp4]}}\n",
     "engine.tensorrt_edge_llm.externalize_weights", "int4_ffn"),
])
def test_profile_mistakes_are_named_by_field(tmp_path: Path, extra: str, field: str,
                                             says: str) -> None:
    write(tmp_path, "mine", "extends: orin-nano-8gb-edgellm\n" + extra)
    line = refusal(tmp_path, "mine")
    assert f"{field}" in line and says in line and "\n" not in line, line


def test_the_release_tells_the_device_what_to_build_and_serve(tmp_path: Path) -> None:
    from stand_ins import build_context

    from builder.device.layout import DEFAULT as LAYOUT

    ctx = build_context("orin-nano-8gb-edgellm")
    from builder.contracts import ReleaseInputs

    i = ReleaseInputs(device=ctx.device, engine_dir=None, engine_key="k",
                      gateway_dir=tmp_path, gateway_key="g", model=ctx.model,
                      model_id="qwen2.5-1.5b-instruct")
    ENGINE.release_files(i, tmp_path)
    s = json.loads((tmp_path / "engine/build.json").read_text())
    assert s["tool"] == "edge-llm-edgellm" and s["version"] == "0.9.1"
    [build] = s["steps"]
    assert build[:5] == ["llm_build", "--onnxDir", "ONNX", "--engineDir", "ENGINE"]
    flags = dict(zip(build[5::2], build[6::2], strict=True))
    assert flags == {"--maxInputLen": "2048", "--maxKVCacheCapacity": "4096",
                     "--maxBatchSize": "1"}
    assert ENGINE.exec_start(i, LAYOUT) == \
        f"{LAYOUT.tool('edge-llm-edgellm')} serve {LAYOUT.current}/engine/build.json"
    # the plugin the device's build and serve set (never the runtime's CWD fallback)
    from builder.device.edgellm import PLUGIN

    assert ENGINE.env(i, LAYOUT)["EDGELLM_PLUGIN_PATH"] == f"{s['checkout']}/{PLUGIN}"
    assert ENGINE.gateway_settings(LAYOUT)["engine_fields"] == ["top_k"]


def test_the_build_check_counts_only_the_weights_that_leave_the_engine() -> None:
    """int4_ffn takes the INT4 FFN matrices out of llm_build's engine: its peak drops by
    them, not by all the weights."""
    from builder.engines.tensorrt_edge_llm import externalized

    m = get_model("qwen2.5-1.5b-instruct")
    ffn = externalized(m, "int4_awq", ["int4_ffn"])
    assert 0 < ffn < ENGINE.weight_bytes(m, "int4_awq") / 2
    assert externalized(m, "int8_sq", ["int4_ffn"]) == 0
    d = device("orin-nano-8gb-edgellm")
    assert d.plan.build.peak == 2 * ENGINE.weight_bytes(m, "int4_awq") - ffn + 2**30
