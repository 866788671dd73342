# Test fake: checkpoint helpers of the stand-in tensorrt_edgellm package (shipped as
# tensorrt_edgellm/_fake_checkpoint.py in the fake source tarball,
# tests/fakes/edgellm/fake_edgellm_source.py); stdlib only. What they mirror, lines of
# TensorRT-Edge-LLM 0.9.1 (7f061f2):
#   files        tensorrt_edgellm/checkpoint/loader.py:280-318: model.safetensors, else
#                model.safetensors.index.json, else pytorch_model.bin(.index.json), else
#                FileNotFoundError "No checkpoint files found in ..."
#   quantization tensorrt_edgellm/config.py:1663-1770 (_parse_quant: hf_quant_config.json
#                first, then config.json "quantization_config": quant_algo / awq / gptq),
#                1819-1836 (_algo_to_quant_type), 1883-1886 (_kv_norm)
#   Hub          tensorrt_edgellm/scripts/export.py:242-255 (_resolve_model_dir: a local
#                directory, else huggingface_hub.snapshot_download); the cache lookup and
#                errors of huggingface_hub 0.36 (_snapshot_download.py:150-245,
#                utils/_validators.py:150-170) as stored here; the real pins pull a 1.x
#                release (UNVERIFIED that its texts are the same). The fake never goes online
# The fake's own: tensors are described by safetensors headers only; their data is zeros
# (sparse), so a checkpoint's identity is its files' sha256 (checkpoint_sha256).
"""Checkpoint helpers of the stand-in tensorrt_edgellm package (test fake)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}
QUANT_FP16, QUANT_FP8, QUANT_MXFP8, QUANT_NVFP4 = "fp16", "fp8", "mxfp8", "nvfp4"
QUANT_INT4_AWQ, QUANT_INT4_AWQ_MODELOPT = "int4_awq", "int4_awq_modelopt"
QUANT_INT4_GPTQ, QUANT_INT8_SQ = "int4_gptq", "int8_sq"
INT4_TYPES = (QUANT_INT4_AWQ, QUANT_INT4_AWQ_MODELOPT, QUANT_INT4_GPTQ)


class HubError(Exception):
    """What huggingface_hub raises: (exception class path, message)."""

    def __init__(self, exc: str, msg: str) -> None:
        super().__init__(f"{exc}: {msg}")


# ------------------------------------------------------------------ safetensors

def read_header(path: Path) -> dict:
    """A .safetensors header: 8-byte little-endian length, then JSON."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 1 or n > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file")
        return json.loads(f.read(n))


def tensor_bytes(spec: dict) -> int:
    n = DTYPE_BYTES[spec["dtype"]]
    for d in spec["shape"]:
        n *= d
    return n


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]],
                      metadata: dict[str, str] | None = None) -> None:
    """PATH holding TENSORS (name -> (dtype, shape)), all zeros (a sparse tail)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = tensor_bytes({"dtype": dtype, "shape": shape})
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


# ------------------------------------------------------------------ checkpoints

def weight_files(model_dir: Path) -> list[Path]:
    """loader.py:280-318."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / s for s in shards]
    for name in ("pytorch_model.bin.index.json", "pytorch_model.bin"):
        if (model_dir / name).exists():
            return [model_dir / name]
    raise FileNotFoundError(
        f"No checkpoint files found in {str(model_dir)!r}. Expected 'model.safetensors', "
        "'model.safetensors.index.json', 'pytorch_model.bin', or "
        "'pytorch_model.bin.index.json'.")


def tensors(model_dir: Path) -> dict[str, dict]:
    """Every tensor of the checkpoint: name -> header entry (safetensors only)."""
    out: dict[str, dict] = {}
    for f in weight_files(model_dir):
        if f.suffix == ".safetensors":
            out.update({k: v for k, v in read_header(f).items() if k != "__metadata__"})
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(model_dir: Path) -> tuple[str, dict[str, str]]:
    """(one digest over config.json and the weight files, each file's sha256)."""
    files = {p.name: sha256_file(p) for p in [model_dir / "config.json", *weight_files(model_dir)]}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(), files


def algo_to_quant_type(algo: str) -> str:
    """config.py:1819-1836."""
    algo = algo.upper()
    if "FP8_PB" in algo or "MXFP8" in algo:
        return QUANT_MXFP8
    if "FP8" in algo:
        return QUANT_FP8
    if "FP4" in algo or "NVFP4" in algo:
        return QUANT_NVFP4
    if "W4A16" in algo and "AWQ" in algo:
        return QUANT_INT4_AWQ_MODELOPT
    if "AWQ" in algo or "INT4_AWQ" in algo:
        return QUANT_INT4_AWQ
    if "W8A8" in algo or "INT8" in algo:
        return QUANT_INT8_SQ
    return QUANT_FP16


def parse_quant(model_dir: Path, config: dict) -> tuple[str, str | None]:
    """(quant type, kv cache quant) as _parse_quant (config.py:1663-1770) decides."""
    sidecar = model_dir / "hf_quant_config.json"
    if sidecar.exists():
        q = json.loads(sidecar.read_text()).get("quantization", {})
        kv = (q.get("kv_cache_quant_algo") or "").strip().lower() or None
        return algo_to_quant_type(q.get("quant_algo") or ""), kv
    qc = config.get("quantization_config")
    if qc is None:
        return QUANT_FP16, None
    if "quant_algo" in qc:
        return algo_to_quant_type(qc.get("quant_algo") or ""), \
            ("fp8" if qc.get("kv_cache_scheme") else None)
    if qc.get("quant_method") == "awq":
        return QUANT_INT4_AWQ, None
    if qc.get("quant_method") == "gptq":
        return QUANT_INT4_GPTQ, None
    return QUANT_FP16, None


# ------------------------------------------------------------------ Hugging Face Hub

REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$")


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def snapshot(repo_id: str) -> Path:
    """huggingface_hub.snapshot_download(repo_id) without a network: the cached snapshot
    of revision main, or the error huggingface_hub raises."""
    if repo_id.count("/") > 1:
        raise HubError("huggingface_hub.errors.HFValidationError",
                       "Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
                       f"'{repo_id}'. Use `repo_type` argument if needed.")
    if not REPO_ID.match(repo_id):
        raise HubError("huggingface_hub.errors.HFValidationError",
                       "Repo id must use alphanumeric chars, '-', '_' or '.'. The name cannot "
                       "start or end with '-' or '.' and the maximum length is 96: "
                       f"'{repo_id}'.")
    if "--" in repo_id or ".." in repo_id:
        raise HubError("huggingface_hub.errors.HFValidationError",
                       f"Cannot have -- or .. in repo_id: '{repo_id}'.")
    folder = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = folder / "refs" / "main"
    if ref.is_file():
        snap = folder / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    if offline():
        raise HubError("huggingface_hub.errors.LocalEntryNotFoundError",
                       "Cannot find an appropriate cached snapshot folder for the specified "
                       "revision on the local disk and outgoing traffic has been disabled. To "
                       "enable repo look-ups and downloads online, set 'HF_HUB_OFFLINE=0' as "
                       "environment variable.")
    raise HubError("huggingface_hub.errors.LocalEntryNotFoundError",
                   "An error happened while trying to locate the files on the Hub and we cannot "
                   "find the appropriate snapshot folder for the specified revision on the local "
                   "disk. Please check your internet connection and try again.")
