"""Harnesses for the test suite and the benchmarks: the engine and the gateway as local
processes on this machine. The appliance never runs these; `builder` does not import
them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.cache import Cache
    from builder.contracts import EngineArtifact


def kept_stand_in(cache: Cache, name: str, sources: list[Path],
                  make: Callable[[Path], object]) -> Path:
    """A stand-in repository made by `make(dir)`, kept in the artifact cache while the
    files under `sources` (the stand-in's code and payloads) are the same: its signing key
    and path are in the cache key of the rootfs built from it, so a new one each session
    would be a new rootfs each session. Two sessions making it at once keep the first."""
    import hashlib
    import shutil

    files = sorted((f.relative_to(s.parent), f) for s in sources
                   for f in ([s] if s.is_file() else s.rglob("*"))
                   if f.is_file() and "__pycache__" not in f.parts)
    digest = hashlib.sha256()
    for rel, f in files:  # the layout too: a payload moved is another stand-in
        digest.update(str(rel).encode() + b"\0" + f.read_bytes())
    kept = cache.dir("stand-ins") / f"{name}-{digest.hexdigest()[:16]}"
    if not (kept / ".complete").is_file():
        work = kept.with_name(f".{kept.name}.{os.getpid()}")
        shutil.rmtree(work, ignore_errors=True)
        make(work)
        (work / ".complete").touch()
        try:
            os.replace(work, kept)
        except OSError:  # another session kept it first (a directory is not replaced)
            shutil.rmtree(work, ignore_errors=True)
            if not (kept / ".complete").is_file():
                raise
    return kept


def engine_for(profile: str, cache: Cache) -> EngineArtifact:
    """The engine of a built-in profile, built on this machine (or from the cache)."""
    from builder import resolve
    from builder.profiles import ProfileStore

    rp = ProfileStore().load(profile)
    d = resolve.resolve(rp, rp.concrete())
    art = d.engine.build(d.profile, d.platform, cache)
    assert art is not None, f"{profile}: its engine is built on the device"
    return art


def synthetic_gguf(model_id: str, cache: Cache, engine: EngineArtifact,
                   quant: str = "Q4_K_M") -> Path:
    """Random weights in a catalog model's exact shape (synth.py), converted with
    llama.cpp's converter and quantized with `engine`'s llama-quantize (all cached)."""
    from builder.engines.llama_cpp import convert as gguf
    from builder.engines.llama_cpp import source as sources
    from builder.model import pipeline as model_pipeline
    from builder.model import synth
    from builder.profiles import ProfileStore

    p = ProfileStore().load("x86-gateway").concrete()
    source = sources.llama_cpp(p.engine.llama_cpp.source, cache)
    hf = synth.cached(model_id, cache)
    fetched = model_pipeline.fetch(p.model.source, cache, model_file=hf.out)
    conv = gguf.convert(fetched, source, cache)
    f16 = gguf.gguf_of(conv)
    q = gguf.quantize(f16, conv.manifest["outputs"][f16.name]["sha256"], quant,
                      engine.tool("llama-quantize"), engine.entry.key, cache)
    return gguf.gguf_of(q)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (PEM, openssl): (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key
