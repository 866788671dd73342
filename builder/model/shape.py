"""What the planner needs to know of a model: its architecture and the bytes of each
weight tensor, wherever the model comes from.

- a catalog model at a quantization: computed tensor by tensor, as its engine lays the
  weights out (engine.tensor_types);
- a model file given instead (`--model-file`, `--model-source`): its engine reads it
  (engine.shape_of: a GGUF file's own header and tensor table; a Hugging Face
  directory's config.json, here, at the profile's quantization).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import BuilderError, display_path
from . import catalog
from .catalog import ModelArch, Tensor


class WeightLayout(Protocol):
    """How an engine lays a model's weights out (contracts.Engine has it)."""

    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        ...


@dataclass(frozen=True)
class ModelShape:
    id: str  # catalog id, or the file's name
    arch: ModelArch
    quant: str  # as the engine spells it (Q4_K_M, int4_awq), or a GGUF file's type mix
    weights: int  # bytes of every weight tensor
    # bytes of the weight matrices by type, without the token embedding (looked up by
    # row, never multiplied): what a CPU backend may re-lay out at load
    matrices: dict[str, int] = field(default_factory=dict)
    origin: str = "catalog"

    @property
    def in_catalog(self) -> bool:
        return self.origin == "catalog"

    def repacked(self, types: tuple[str, ...]) -> int:
        return sum(b for t, b in self.matrices.items() if t in types)


def matrices(rows: list[tuple[str, bool, str, int]]) -> dict[str, int]:
    """(name, is_matrix, type, bytes) rows -> bytes per type of the repackable matrices."""
    out: dict[str, int] = defaultdict(int)
    for name, is_matrix, typ, nbytes in rows:
        if is_matrix and name != "token_embd.weight":
            out[typ] += nbytes
    return dict(out)


def from_catalog(model_id: str, quant: str, engine: WeightLayout) -> ModelShape:
    return of_arch(catalog.get_model(model_id), quant, engine)


def of_arch(model: ModelArch, quant: str, engine: WeightLayout,
            origin: str = "catalog") -> ModelShape:
    rows = engine.tensor_types(model, quant)
    return ModelShape(id=model.id, arch=model, quant=quant, weights=sum(b for *_, b in rows),
                      matrices=matrices([(t.name, t.is_matrix, typ, b)
                                         for t, typ, b in rows]),
                      origin=origin)


def from_hf_dir(path: Path, quant: str, engine: WeightLayout) -> ModelShape:
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
    return of_arch(arch, quant, engine, origin=display_path(path))
