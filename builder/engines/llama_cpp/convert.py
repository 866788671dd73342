"""The GGUF file a llama.cpp release carries, made with llama.cpp's own tools: a
Hugging Face checkpoint converted to F16 with the pinned source's convert_hf_to_gguf.py,
then quantized with llama-quantize built for this machine; each step a cache entry
keyed by its inputs. A GGUF file given as the model is taken as it is."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...cache import Cache, Entry
from ...errors import BuilderError
from ...model.pipeline import Fetched, ModelArtifact
from ...progress import step
from ...run import run
from . import source as sources
from .settings import LlamaCppSource
from .source import SourceTree

# what convert_hf_to_gguf.py imports (its requirements-convert_hf_to_gguf.txt)
CONVERT_MODULES = ("torch", "numpy", "sentencepiece", "transformers", "safetensors")


# --- convert --------------------------------------------------------------------------

def convert(fetched: Fetched, source: SourceTree, cache: Cache) -> Entry:
    """HF safetensors -> F16 GGUF with the pinned llama.cpp's convert_hf_to_gguf.py."""
    if fetched.kind == "gguf":
        raise BuilderError(f"{fetched.origin}: already a GGUF file; nothing to convert")
    if fetched.kind != "hf":
        raise BuilderError(f"{fetched.origin}: an {fetched.kind.upper()} directory; llama.cpp "
                           "takes a GGUF file or a Hugging Face checkpoint directory")
    missing = [m for m in CONVERT_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise BuilderError(f"converting needs {', '.join(missing)}: run "
                           f"`pip install -e '.[convert]'` (scripts/setup does)")
    inputs = {"op": "convert", "files": fetched.files, "converter": source.id,
              "outtype": "f16"}

    def do_convert(out: Path, log_file: Path) -> None:
        with step("converting to GGUF (llama.cpp convert_hf_to_gguf.py)") as line:
            run([sys.executable, source.path / "convert_hf_to_gguf.py", fetched.path,
                 "--outfile", out / "model-F16.gguf", "--outtype", "f16"],
                what="convert_hf_to_gguf.py", log_file=log_file, on_line=line,
                env={"PYTHONPATH": str(source.path / "gguf-py"),
                     "NO_LOCAL_GGUF": ""})

    return cache.get_or_build("models", inputs, do_convert,
                              label=f"convert {fetched.origin} to F16 GGUF")


def gguf_of(entry: Entry) -> Path:
    return next(entry.out.glob("*.gguf"))


# --- quantize -------------------------------------------------------------------------

def quantize(f16: Path, f16_sha256: str, quant: str, quantizer: Path, quantizer_id: str,
             cache: Cache, *, threads: int | None = None) -> Entry:
    inputs = {"op": "quantize", "input": f16_sha256, "quant": quant,
              "quantizer": quantizer_id}

    def do_quantize(out: Path, log_file: Path) -> None:
        with step(f"quantizing to {quant} (llama-quantize)") as line:
            run([quantizer, f16, out / f"model-{quant}.gguf", quant,
                 str(threads or os.cpu_count() or 2)],
                what=f"llama-quantize {quant}", log_file=log_file, on_line=line)

    return cache.get_or_build("models", inputs, do_quantize, label=f"quantize {quant}")


def gguf_pipeline(quant: str, source: LlamaCppSource, fetched: Fetched, cache: Cache,
                  quantizer: Callable[[], Any], *,
                  source_base: Path | None = None) -> ModelArtifact:
    """The GGUF a llama.cpp release carries: a given GGUF as is, else convert with the
    pinned llama.cpp's converter and quantize with `quantizer()`'s llama-quantize."""
    if fetched.kind == "gguf":
        return ModelArtifact(fetched.path, fetched.gguf_sha256, "as provided", "gguf")
    src = sources.llama_cpp(source, cache, base_dir=source_base)
    f16, f16_sha = output_sha(convert(fetched, src, cache))
    if quant == "F16":
        return ModelArtifact(f16, f16_sha, "F16", "gguf")
    tools = quantizer()
    entry = quantize(f16, f16_sha, quant, tools.tool("llama-quantize"),
                     tools.entry.key, cache)
    path, sha = output_sha(entry)
    return ModelArtifact(path, sha, quant, "gguf")


def output_sha(entry: Entry) -> tuple[Path, str]:
    path = gguf_of(entry)
    return path, entry.manifest["outputs"][path.name]["sha256"]
