"""How close a quantization stays to the unquantized model, measured on this machine by
the profile's engine (Engine.quality: llama.cpp's llama-perplexity): the text it reads
and the settings `builder model quality` and a build's `model.max_kl_divergence` share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cache import Cache
from ..contracts import Device, Engine
from ..errors import BuilderError
from .pipeline import Fetched

# Debian's base-files ships it on every host: an English text that needs no download
# (GPL-3: 35 KB, about 8,000 Qwen2.5 tokens)
CORPUS = Path("/usr/share/common-licenses/GPL-3")
CTX = 512  # tokens per chunk; the second half of each is scored
CHUNKS = 4  # 1,020 scored tokens: the reference's distributions take n_vocab * 2 bytes each
SYNTHETIC = "synthetic (random weights)"  # the origin `--synthetic` results are listed under


def measure(d: Device, fetched: Fetched, cache: Cache, quants: list[str], *,
            corpus: Path = CORPUS, ctx: int = CTX, chunks: int = CHUNKS
            ) -> list[dict[str, Any]]:
    found = d.engine.quality(d.profile, fetched, quants, cache, corpus=corpus, ctx=ctx,
                             chunks=chunks, source_base=d.engine_base_dir)
    if found is None:
        raise BuilderError(f"{d.name}: {d.profile.engine.kind} has no quality measurement "
                           "here (llama.cpp has one: llama-perplexity)")
    return found


def measurable(engine: Engine) -> bool:
    """Whether `engine` measures quality here (it gives Engine.quality)."""
    return type(engine).quality is not Engine.quality


def measured(cache: Cache) -> list[dict[str, Any]]:
    """Every quantization measured on this machine and kept in `cache` (by `builder model
    quality` or a build's `model.max_kl_divergence`), for `builder models list`: the
    engine, catalog model, origin of the weights, text, quant, file size and statistics.
    A kept file that does not hold them, typed, is left out; of the same file measured
    again (another build of the tools), the newest."""
    found: dict[tuple, tuple[float, dict[str, Any]]] = {}
    for f in cache.outputs("quality", "quality.json"):
        try:
            r, when = json.loads(f.read_text()), f.stat().st_mtime
        except (OSError, ValueError):
            continue
        if _listable(r):
            same = (r["engine"], r["model"], r["origin"], json.dumps(r["text"], sort_keys=True),
                    r["quant"], r.get("model_sha256"))
            if same not in found or found[same][0] < when:
                found[same] = (when, r)
    return sorted((r for _, r in found.values()),
                  key=lambda r: (r["model"], r["origin"], r["text"]["ctx"],
                                 r["text"]["chunks"], r["bytes"], r["quant"]))


def _listable(r: Any) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return (isinstance(r, dict)
            and all(isinstance(r.get(k), str) for k in ("model", "origin", "quant", "engine"))
            and isinstance(r.get("model_sha256", ""), str)
            and all(number(r.get(k)) for k in ("kld_mean", "top1_percent", "bytes", "tokens"))
            and isinstance(r.get("text"), dict)
            and all(type(r["text"].get(k)) is int for k in ("ctx", "chunks"))
            and isinstance(r["text"].get("corpus"), str))
