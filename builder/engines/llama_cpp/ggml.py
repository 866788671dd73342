"""llama.cpp's weight formats and how big they are: ggml block types, the file types
(quantizations) llama-quantize makes, which block type each tensor gets, and a GGUF
file's own shape read from its header.

GGML block layouts (elements per block, bytes per block) are ggml's type traits
(ggml/src/ggml.c `type_traits`, ggml-common.h block structs). Which block type each
tensor gets for a given llama.cpp file type follows `llama_tensor_get_type` in
src/llama-quant.cpp; see `gguf_tensor_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...contracts import Quantization
from ...errors import BuilderError, display_path
from ...model.catalog import ModelArch, Tensor
from ...model.shape import ModelShape, matrices


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

# llama.cpp file types (tools/quantize/quantize.cpp QUANT_OPTIONS)
QUANTS = (
    Quantization("Q4_K_M", GGML_TYPES["Q4_K"].bpw,
                 "4-bit k-quant; attn_v and half of ffn_down in Q6_K"),
    Quantization("Q5_K_M", GGML_TYPES["Q5_K"].bpw,
                 "5-bit k-quant; attn_v and half of ffn_down in Q6_K"),
    Quantization("Q6_K", GGML_TYPES["Q6_K"].bpw, "6-bit k-quant"),
    Quantization("Q8_0", GGML_TYPES["Q8_0"].bpw, "8-bit, near lossless"),
    Quantization("F16", 16.0, "unquantized half precision"),
)


def _use_more_bits(i: int, n: int) -> bool:
    # llama-quant.cpp use_more_bits(): first and last eighth, and every third between.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def gguf_tensor_type(model: ModelArch, t: Tensor, quant: str) -> str:
    """The ggml type llama-quantize gives tensor `t` for file type `quant`."""
    if not t.is_matrix:
        return "F32"  # norms and biases stay F32
    if quant in ("F16", "Q8_0"):
        return quant
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}[quant]
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
    if (quant in ("Q4_K_M", "Q5_K_M") and t.layer is not None
            and kind in ("attn_v", "ffn_down") and _use_more_bits(t.layer, model.n_layer)):
        chosen = "Q6_K"
    if chosen in _K_FALLBACK and t.ne0 % QK_K:
        chosen = _K_FALLBACK[chosen]
    return chosen


def tensor_types(model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
    """Each tensor of the GGUF file llama-quantize makes at `quant`, with its type and
    bytes."""
    out = []
    for t in model.tensors():
        typ = gguf_tensor_type(model, t, quant)
        out.append((t, typ, GGML_TYPES[typ].nbytes(t.n)))
    return out


def from_gguf(path: Path) -> ModelShape:
    """Architecture and tensor sizes from a GGUF file's header (nothing else is read),
    with ggml-org's gguf package."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError) as e:
        raise BuilderError(f"{display_path(path)}: not a readable GGUF file ({e})") from None

    def field_(key: str, default: object = None) -> object:
        f = r.get_field(key)
        return default if f is None else f.contents()

    arch_name = str(field_("general.architecture", ""))
    if not arch_name:
        raise BuilderError(f"{display_path(path)}: GGUF without general.architecture")

    def num(key: str, default: int | None = None) -> int:
        value = field_(f"{arch_name}.{key}", default)
        if value is None:
            raise BuilderError(f"{display_path(path)}: GGUF has no {arch_name}.{key}; "
                               "the planner cannot size this model")
        return int(value[0] if isinstance(value, list) else value)

    tensors = {t.name: t for t in r.tensors}
    n_embd = num("embedding_length")
    n_head = num("attention.head_count")
    tokens = field_("tokenizer.ggml.tokens")
    embd = tensors.get("token_embd.weight")
    n_vocab = (len(tokens) if isinstance(tokens, list) else
               int(embd.shape[1]) if embd is not None else 0)
    arch = ModelArch(
        id=path.stem, hf_repo="", n_layer=num("block_count"), n_embd=n_embd, n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head), n_ff=num("feed_forward_length"),
        n_vocab=n_vocab, tied_embeddings="output.weight" not in tensors,
        max_context=num("context_length"), published_params=arch_name)
    rows = [(t.name, len(t.shape) >= 2 and int(t.shape[1]) > 1, t.tensor_type.name,
             int(t.n_bytes)) for t in r.tensors]
    types = sorted({typ for name, m, typ, _ in rows if m and name != "token_embd.weight"})
    return ModelShape(id=path.stem, arch=arch, quant="+".join(types) or "F32",
                      weights=sum(b for *_, b in rows), matrices=matrices(rows),
                      origin=display_path(path))
