"""How close a quantization stays to the unquantized model, measured on this machine by
the profile's engine (Engine.quality: llama.cpp's llama-perplexity): the text it reads
and the settings `builder model quality` and a build's `model.max_kl_divergence` share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..cache import Cache
from ..contracts import Device
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


def measured(cache: Cache) -> list[dict[str, Any]]:
    """Every quantization measured on this machine and kept in `cache` (by `builder model
    quality` or a build's `model.max_kl_divergence`), for `builder models list`: the
    engine, catalog model, origin of the weights, quant, file size and statistics.
    Results kept before they named their model are left out."""
    found = []
    for e in cache.entries():
        f = e.out / "quality.json"
        if e.kind != "quality" or not f.is_file():
            continue
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and {"model", "origin", "quant", "kld_mean",
                                    "top1_percent"} <= r.keys():
            found.append(r)
    return sorted(found, key=lambda r: (r["model"], r["origin"], r.get("bytes", 0)))
