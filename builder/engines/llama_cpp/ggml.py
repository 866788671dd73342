"""llama.cpp's weight formats and how big they are: ggml block types, the file types
(quantizations) llama-quantize makes, which block type each tensor gets, and a GGUF
file's own shape read from its header.

GGML block layouts (elements per block, bytes per block) are ggml's type traits
(ggml/src/ggml.c `type_traits`, ggml-common.h block structs). Which block type each
tensor gets for a given llama.cpp file type follows `llama_tensor_get_type` in
src/llama-quant.cpp; see `gguf_tensor_type`.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    Quantization("Q4_0", GGML_TYPES["Q4_0"].bpw,
                 "4-bit, 32-weight blocks; re-laid out at load for ARM dotprod/i8mm and "
                 "AVX2 cores"),
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
    is_output = t.name == "output.weight" or (
        model.tied_embeddings and t.name == "token_embd.weight"
    )
    if is_output:
        # Output (or the tied embedding that serves as output) gets Q6_K, or Q8_0
        # when its rows do not split into 256-blocks.
        return "Q8_0" if t.ne0 % QK_K else "Q6_K"
    if quant == "Q4_0":
        # every other matrix: Q4_0; a row that does not split into its 32-blocks has no
        # smaller block to fall back to and stays F16 (tensor_type_fallback)
        return "F16" if t.ne0 % GGML_TYPES["Q4_0"].block_size else "Q4_0"
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}[quant]
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


# --- a GGUF file's header ------------------------------------------------------------
# Read here rather than with gguf's GGUFReader (ggml-org's gguf package, whose constants
# this uses): the reader makes a numpy view of every element of every array, and a
# Qwen2.5 tokenizer has 151k tokens and as many merges, which took 6-13 s per file on a
# 2-core machine, paid by every build and plan of a model file. Only the counts of those
# arrays are needed. The layout (little-endian GGUF v2/v3): magic, version, tensor count,
# key/value count, the key/value pairs, then per tensor its name, dimensions, type and
# offset (ggml/src/gguf.cpp `gguf_init_from_file_impl`; gguf-py gguf_reader.py).

@dataclass(frozen=True)
class Array:
    """A GGUF array value, not read: its count, and its first element if it is a number."""

    count: int
    first: int | float | None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    type_name: str
    n_bytes: int


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
GGML_MAX_DIMS = 4  # ggml/include/ggml.h


def read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """The key/value pairs (arrays as Array) and the tensor table of a GGUF file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"GGUF":
            raise ValueError("no GGUF magic")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (a big-endian file, or too new)")
        pos = 24

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", m, pos)
            pos += 8 + n
            if pos > len(m):
                raise ValueError("a string runs past the end of the file")
            return m[pos - n:pos].decode("utf-8", "replace")

        def value(vtype: int) -> Any:
            nonlocal pos
            if vtype == _STRING:
                return string()
            if vtype == _ARRAY:
                etype, count = struct.unpack_from("<IQ", m, pos)
                pos += 12
                if etype == _STRING:
                    for _ in range(count):  # lengths only
                        (n,) = struct.unpack_from("<Q", m, pos)
                        pos += 8 + n
                    return Array(count, None)
                if etype not in _SCALARS:
                    raise ValueError(f"array of value type {etype}")
                size = struct.calcsize(_SCALARS[etype])
                first = struct.unpack_from(_SCALARS[etype], m, pos)[0] if count else None
                pos += size * count
                return Array(count, first)
            fmt = _SCALARS[vtype]
            (v,) = struct.unpack_from(fmt, m, pos)
            pos += struct.calcsize(fmt)
            return v

        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", m, pos)
            pos += 4
            kv[key] = value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", m, pos)
            if not 1 <= n_dims <= GGML_MAX_DIMS:  # as gguf.cpp refuses it
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            dims = struct.unpack_from(f"<{n_dims}Q", m, pos + 4)
            ttype, _offset = struct.unpack_from("<IQ", m, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            qtype = GGMLQuantizationType(ttype)
            block, size = GGML_QUANT_SIZES[qtype]
            elements = math.prod(dims)
            tensors.append(TensorInfo(name, tuple(dims), qtype.name,
                                      elements // block * size))
    return kv, tensors


def from_gguf(path: Path) -> ModelShape:
    """Architecture and tensor sizes from a GGUF file's header (nothing else is read)."""
    try:
        kv, tensors = read_header(path)
    except (ValueError, OSError, IndexError, KeyError, struct.error) as e:
        raise BuilderError(f"{display_path(path)}: not a readable GGUF file ({e})") from None

    arch_name = kv.get("general.architecture")
    if not isinstance(arch_name, str) or not arch_name:
        raise BuilderError(f"{display_path(path)}: GGUF without general.architecture")

    def num(key: str, default: int | None = None) -> int:
        value = kv.get(f"{arch_name}.{key}", default)
        if isinstance(value, Array):  # a per-layer value: the first layer's
            value = value.first
        if not isinstance(value, int) or isinstance(value, bool):
            raise BuilderError(f"{display_path(path)}: GGUF has no {arch_name}.{key}; "
                               "the planner cannot size this model")
        return value

    by_name = {t.name: t for t in tensors}
    n_embd = num("embedding_length")
    n_head = num("attention.head_count")
    tokens = kv.get("tokenizer.ggml.tokens")
    embd = by_name.get("token_embd.weight")
    n_vocab = (tokens.count if isinstance(tokens, Array) else
               embd.dims[1] if embd is not None and len(embd.dims) > 1 else 0)
    arch = ModelArch(
        id=path.stem, hf_repo="", n_layer=num("block_count"), n_embd=n_embd, n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head), n_ff=num("feed_forward_length"),
        n_vocab=n_vocab, tied_embeddings="output.weight" not in by_name,
        max_context=num("context_length"), published_params=arch_name)
    rows = [(t.name, len(t.dims) >= 2 and t.dims[1] > 1, t.type_name, t.n_bytes)
            for t in tensors]
    types = sorted({typ for name, m, typ, _ in rows if m and name != "token_embd.weight"})
    return ModelShape(id=path.stem, arch=arch, quant="+".join(types) or "F32",
                      weights=sum(b for *_, b in rows), matrices=matrices(rows),
                      origin=display_path(path))
