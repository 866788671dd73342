"""The catalog against the models' published configs and GGUF files."""

from __future__ import annotations

import pytest

from builder import resolve
from builder.engines.llama_cpp.ggml import GGML_TYPES, gguf_tensor_type
from builder.model.catalog import MODELS, Tensor, get_model
from builder.plugins import ENGINES

LLAMA, TRT = resolve.engine_named("llama.cpp"), resolve.engine_named("tensorrt-llm")

# Hand-copied from each model's config.json on the hub:
# (layers, hidden, heads, kv heads, head dim, ffn, vocab, tied, max ctx)
PUBLISHED = {
    "qwen2.5-0.5b-instruct": (24, 896, 14, 2, 64, 4864, 151936, True, 32768),
    "qwen2.5-1.5b-instruct": (28, 1536, 12, 2, 128, 8960, 151936, True, 32768),
    "qwen2.5-3b-instruct": (36, 2048, 16, 2, 128, 11008, 151936, True, 32768),
    "qwen2.5-7b-instruct": (28, 3584, 28, 4, 128, 18944, 152064, False, 32768),
}


@pytest.mark.parametrize("model_id", PUBLISHED)
def test_architecture_numbers_match_the_published_config(model_id: str) -> None:
    m = get_model(model_id)
    got = (m.n_layer, m.n_embd, m.n_head, m.n_head_kv, m.head_dim, m.n_ff, m.n_vocab,
           m.tied_embeddings, m.max_context)
    assert got == PUBLISHED[model_id]


@pytest.mark.parametrize(("model_id", "params"), [
    ("qwen2.5-0.5b-instruct", 0.49e9), ("qwen2.5-1.5b-instruct", 1.54e9),
    ("qwen2.5-3b-instruct", 3.09e9), ("qwen2.5-7b-instruct", 7.61e9)])
def test_parameter_count_from_the_tensors_matches_the_model_card(model_id: str,
                                                                 params: float) -> None:
    assert get_model(model_id).n_params == pytest.approx(params, abs=0.01e9)


def test_qwen_0_5b_parameter_count_by_hand() -> None:
    # embedding 151936*896; per layer q,o 896^2 (+q bias 896), k,v 896*128 (+128 bias),
    # MLP 3*896*4864, two norms 2*896; final norm 896; output tied.
    per_layer = 2 * 896 * 896 + 896 + 2 * (896 * 128 + 128) + 3 * 896 * 4864 + 2 * 896
    assert get_model("qwen2.5-0.5b-instruct").n_params == 151936 * 896 + 24 * per_layer + 896


def test_block_sizes_are_ggmls() -> None:
    # bits per weight of each block type, from ggml-common.h block structs
    bpw = {name: t.bpw for name, t in GGML_TYPES.items()}
    assert bpw["Q4_K"] == 4.5 and bpw["Q5_K"] == 5.5 and bpw["Q6_K"] == 6.5625
    assert bpw["Q8_0"] == 8.5 and bpw["Q5_0"] == 5.5 and bpw["Q5_1"] == 6.0
    assert bpw["F16"] == 16


@pytest.mark.parametrize(("model_id", "tensor", "quant", "expected"), [
    # 896-wide rows do not split into 256-blocks: k-quants fall back
    ("qwen2.5-0.5b-instruct", Tensor("blk.3.attn_q.weight", 896, 896, 3), "Q4_K_M", "Q5_0"),
    ("qwen2.5-0.5b-instruct", Tensor("blk.3.ffn_down.weight", 4864, 896, 3), "Q4_K_M",
     "Q4_K"),
    ("qwen2.5-0.5b-instruct", Tensor("blk.0.ffn_down.weight", 4864, 896, 0), "Q4_K_M",
     "Q6_K"),
    ("qwen2.5-0.5b-instruct", Tensor("blk.5.attn_v.weight", 896, 128, 5), "Q4_K_M", "Q8_0"),
    ("qwen2.5-0.5b-instruct", Tensor("token_embd.weight", 896, 151936), "Q4_K_M", "Q8_0"),
    ("qwen2.5-0.5b-instruct", Tensor("blk.4.attn_q.weight", 896, 896, 4), "Q5_K_M", "Q5_1"),
    ("qwen2.5-7b-instruct", Tensor("output.weight", 3584, 152064), "Q4_K_M", "Q6_K"),
    ("qwen2.5-7b-instruct", Tensor("token_embd.weight", 3584, 152064), "Q4_K_M", "Q4_K"),
    ("qwen2.5-7b-instruct", Tensor("blk.4.attn_v.weight", 3584, 512, 4), "Q4_K_M", "Q4_K"),
    ("qwen2.5-7b-instruct", Tensor("blk.5.attn_v.weight", 3584, 512, 5), "Q5_K_M", "Q6_K"),
    # Q4_0: every matrix Q4_0 but the output (or the tied embedding serving as it)
    ("qwen2.5-0.5b-instruct", Tensor("blk.5.attn_v.weight", 896, 128, 5), "Q4_0", "Q4_0"),
    ("qwen2.5-0.5b-instruct", Tensor("token_embd.weight", 896, 151936), "Q4_0", "Q8_0"),
    ("qwen2.5-1.5b-instruct", Tensor("token_embd.weight", 1536, 151936), "Q4_0", "Q6_K"),
    ("qwen2.5-7b-instruct", Tensor("token_embd.weight", 3584, 152064), "Q4_0", "Q4_0"),
    ("qwen2.5-7b-instruct", Tensor("output.weight", 3584, 152064), "Q4_0", "Q6_K"),
    ("qwen2.5-7b-instruct", Tensor("blk.5.attn_norm.weight", 3584), "Q4_K_M", "F32"),
    ("qwen2.5-7b-instruct", Tensor("output.weight", 3584, 152064), "F16", "F16"),
])
def test_tensor_types_follow_llama_quantize(model_id: str, tensor: Tensor, quant: str,
                                            expected: str) -> None:
    assert gguf_tensor_type(get_model(model_id), tensor, quant) == expected


def test_qwen_0_5b_q4_k_m_weight_bytes_by_hand() -> None:
    # Layers 0,1,2,5,8,...,20,21,22,23 (use_more_bits) carry attn_v in Q8_0 (Q6_K fallback)
    # and ffn_down in Q6_K; the other 12 attn_v in Q5_0 and ffn_down in Q4_K. q,k,o,gate,up
    # are Q5_0 everywhere; the tied embedding is Q8_0; norms and biases F32.
    q50, q80, q4k, q6k = 22 / 32, 34 / 32, 144 / 256, 210 / 256
    common = (896 * 896 * 2 + 896 * 128 + 896 * 4864 * 2) * q50 + (896 * 3 + 128 * 2) * 4
    more = common + 896 * 128 * q80 + 4864 * 896 * q6k
    less = common + 896 * 128 * q50 + 4864 * 896 * q4k
    expected = 151936 * 896 * q80 + 12 * more + 12 * less + 896 * 4
    assert LLAMA.weight_bytes(get_model("qwen2.5-0.5b-instruct"), "Q4_K_M") == expected


@pytest.mark.parametrize(("model_id", "quant", "published_file_bytes"), [
    # Sizes of published GGUF files, which also hold ~5-7 MB of tokenizer metadata.
    ("qwen2.5-0.5b-instruct", "Q4_K_M", 398e6),
    ("qwen2.5-1.5b-instruct", "Q4_K_M", 986e6),
    ("qwen2.5-3b-instruct", "Q4_K_M", 1.93e9),
    ("qwen2.5-7b-instruct", "Q4_K_M", 4.68e9),
    ("qwen2.5-7b-instruct", "Q8_0", 8.10e9),
])
def test_weight_bytes_match_published_gguf_files(model_id: str, quant: str,
                                                 published_file_bytes: float) -> None:
    assert LLAMA.weight_bytes(get_model(model_id), quant) == pytest.approx(
        published_file_bytes, rel=0.02)


@pytest.mark.parametrize("spelling", ["Q4_K_M", "q4_k_m", "Q4_k_M"])
def test_quant_names_are_accepted_in_any_case(spelling: str) -> None:
    assert LLAMA.quant(spelling).name == "Q4_K_M"
    assert TRT.quant(spelling.replace("Q4_K_M", "INT4_AWQ").replace("q4_k_m", "Int4_Awq")
                     .replace("Q4_k_M", "int4_AWQ")).name == "int4_awq"


def test_a_quant_of_the_other_engine_is_refused_with_the_choices(workdir, cli) -> None:
    (workdir / "awq.yaml").write_text("extends: x86-gateway\nmodel:\n  quant: int4_awq\n")
    r = cli("profiles", "validate", str(workdir / "awq.yaml"))
    assert r.code == 2 and "model.quant: 'int4_awq' is not a llama.cpp quantization; " \
        "choose one of Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16" in r.err, r.err


def test_every_model_offers_every_quant_of_every_engine() -> None:
    for m in MODELS.values():
        for e in ENGINES.values():
            for q in e.quants:
                assert e.weight_bytes(m, q.name) > 0
