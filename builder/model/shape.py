"""What the planner needs to know of a model: its architecture and the bytes of each
weight tensor, wherever the model comes from.

- a catalog model at a quantization: computed tensor by tensor (catalog.py);
- a GGUF file (a replaced model, `--model-file`, `--model-source`): read from the file's
  own header and tensor table with ggml-org's gguf package, so the plan describes the
  file that is built, not the profile's catalog entry;
- a Hugging Face directory: its config.json, at the profile's quantization.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuilderError, display_path
from . import catalog
from .catalog import ModelArch

if TYPE_CHECKING:
    from ..schema import Profile
    from .pipeline import Fetched


@dataclass(frozen=True)
class ModelShape:
    id: str  # catalog id, or the file's name
    arch: ModelArch
    quant: str  # as the engine spells it (Q4_K_M, int4_awq), or a GGUF file's type mix
    weights: int  # bytes of every weight tensor
    # bytes of the weight matrices by ggml type, without the token embedding (looked up
    # by row, never multiplied): what a CPU backend may re-lay out at load
    matrices: dict[str, int] = field(default_factory=dict)
    origin: str = "catalog"

    @property
    def in_catalog(self) -> bool:
        return self.origin == "catalog"

    def repacked(self, types: tuple[str, ...]) -> int:
        return sum(b for t, b in self.matrices.items() if t in types)


def _matrices(rows: list[tuple[str, bool, str, int]]) -> dict[str, int]:
    """(name, is_matrix, type, bytes) rows -> bytes per type of the repackable matrices."""
    out: dict[str, int] = defaultdict(int)
    for name, is_matrix, typ, nbytes in rows:
        if is_matrix and name != "token_embd.weight":
            out[typ] += nbytes
    return dict(out)


def from_catalog(model_id: str, quant: str) -> ModelShape:
    model = catalog.get_model(model_id)
    q = catalog.get_quant(quant, catalog.QUANTS[quant.lower()].engine)
    return of_arch(model, q.name)


def of_arch(model: ModelArch, quant: str, origin: str = "catalog") -> ModelShape:
    rows = catalog.tensor_types(model, quant)
    return ModelShape(id=model.id, arch=model, quant=quant, weights=sum(b for *_, b in rows),
                      matrices=_matrices([(t.name, t.is_matrix, typ, b)
                                          for t, typ, b in rows]),
                      origin=origin)


# --- a GGUF file --------------------------------------------------------------------------

def from_gguf(path: Path) -> ModelShape:
    """Architecture and tensor sizes from a GGUF file's header (nothing else is read)."""
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
                      weights=sum(b for *_, b in rows), matrices=_matrices(rows),
                      origin=display_path(path))


# --- a Hugging Face directory -------------------------------------------------------------

def from_hf_dir(path: Path, quant: str) -> ModelShape:
    """A Qwen2-like model from its config.json, at `quant` (what the pipeline makes)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        n_embd, n_head = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        arch = ModelArch(
            id=path.name, hf_repo="", n_layer=int(cfg["num_hidden_layers"]), n_embd=n_embd,
            n_head=n_head, n_head_kv=int(cfg.get("num_key_value_heads", n_head)),
            n_ff=int(cfg["intermediate_size"]), n_vocab=int(cfg["vocab_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_context=int(cfg.get("max_position_embeddings", 4096)),
            published_params=str(cfg.get("model_type", "")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BuilderError(f"{display_path(path / 'config.json')}: cannot read the model's "
                           f"shape ({e})") from None
    return of_arch(arch, quant, origin=display_path(path))


def of_fetched(p: Profile, fetched: Fetched) -> ModelShape:
    """The shape of a model given instead of the profile's (the file that is built)."""
    if fetched.kind == "gguf":
        return from_gguf(fetched.path)
    return from_hf_dir(fetched.path, p.model.quant)
