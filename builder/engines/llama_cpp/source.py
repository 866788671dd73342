"""The llama.cpp source tree: pinned, hash-checked, cached.

Default: the tree vendored in the llama-cpp-python sdist on PyPI (vendor/llama.cpp,
with tools/server, tools/quantize, convert_hf_to_gguf.py and gguf-py), fetched with pip
and checked against the pinned sha256. Also a local directory or tarball, or a git URL
and ref for users who mirror llama.cpp.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ...cache import Cache, sha256_file
from ...errors import BuilderError, display_path
from ...run import run
from .settings import LlamaCppSource

_SKIP_DIRS = {".git", "build", "__pycache__", ".venv"}


@dataclass(frozen=True)
class SourceTree:
    path: Path
    id: str  # sha256 (sdist, tarball or tree) or git commit: the cache key of the source
    description: str


def llama_cpp(spec: LlamaCppSource, cache: Cache, *, base_dir: Path | None = None,
              field: str = "engine.llama_cpp.source") -> SourceTree:
    if spec.kind == "pypi-sdist":
        return _pypi_sdist(spec, cache, field)
    if spec.kind == "path":
        if not spec.path:
            raise BuilderError(f"{field}.path: required when kind is 'path'")
        p = Path(spec.path).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if p.is_dir():
            return _directory(p, field)
        if p.is_file():
            return _tarball(p, spec.sha256, cache, field)
        raise BuilderError(f"{field}.path: {display_path(p)} does not exist")
    return _git(spec, cache, field)


def _pypi_sdist(spec: LlamaCppSource, cache: Cache, field: str) -> SourceTree:
    if "==" not in spec.package:
        raise BuilderError(f"{field}.package: pin a version, e.g. llama-cpp-python==0.3.36")
    if not spec.sha256:
        raise BuilderError(f"{field}.sha256: required for a PyPI sdist (pip download "
                           f"prints it; `sha256sum` the .tar.gz)")
    sha = spec.sha256

    def fetch(out: Path, log_file: Path) -> dict:
        dl = out.parent / "download"
        dl.mkdir()
        req = out.parent / "requirements.txt"
        req.write_text(f"{spec.package} --hash=sha256:{sha}\n")
        try:
            run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 "--require-hashes", "-r", req, "-d", dl, "--disable-pip-version-check"],
                what=f"fetching {spec.package} from PyPI", log_file=log_file)
        except BuilderError as e:
            if "THESE PACKAGES DO NOT MATCH THE HASHES" in log_file.read_text():
                raise BuilderError(f"{field}.sha256: {spec.package} from PyPI does not match "
                                   f"the pinned sha256 {sha[:12]}...; check the pin") from None
            raise e
        tarballs = list(dl.glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise BuilderError(f"{field}.package: pip did not fetch one sdist for "
                               f"{spec.package} (got {[t.name for t in tarballs]})")
        got = sha256_file(tarballs[0])
        if got != sha:
            raise BuilderError(f"{field}.sha256: {tarballs[0].name} has sha256 {got}, "
                               f"expected {sha}")
        _extract(tarballs[0], out, member_dir="vendor/llama.cpp")
        for leftover in (dl, req):
            _remove(leftover)
        return {"sdist": tarballs[0].name}

    entry = cache.get_or_build("sources", {"pypi": spec.package, "sha256": sha}, fetch,
                               label=f"llama.cpp from {spec.package}")
    return SourceTree(entry.out, sha, f"llama.cpp vendored in {spec.package}")


def _tarball(path: Path, pinned: str | None, cache: Cache, field: str) -> SourceTree:
    got = sha256_file(path)
    if pinned and got != pinned:
        raise BuilderError(f"{field}.sha256: {display_path(path)} has sha256 {got}, "
                           f"expected {pinned}")

    def extract(out: Path, log_file: Path) -> None:
        _extract(path, out, member_dir=None)

    entry = cache.get_or_build("sources", {"tarball_sha256": got}, extract,
                               label=f"llama.cpp from {path.name}")
    return SourceTree(entry.out, got, f"llama.cpp from {display_path(path)}")


def _directory(path: Path, field: str) -> SourceTree:
    if not (path / "CMakeLists.txt").is_file():
        raise BuilderError(f"{field}.path: {display_path(path)} has no CMakeLists.txt; point "
                           f"it at the top of a llama.cpp tree")
    return SourceTree(path.resolve(), tree_sha256(path), f"llama.cpp at {display_path(path)}")


def _git(spec: LlamaCppSource, cache: Cache, field: str) -> SourceTree:
    if not spec.url or not spec.ref:
        raise BuilderError(f"{field}: kind 'git' needs url and ref (a tag or commit)")

    def clone(out: Path, log_file: Path) -> dict:
        run(["git", "init", "-q", out], what="git init", log_file=log_file)
        run(["git", "-C", out, "fetch", "--depth", "1", spec.url, spec.ref],
            what=f"fetching {spec.url} {spec.ref}", log_file=log_file)
        run(["git", "-C", out, "checkout", "-q", "FETCH_HEAD"], what="git checkout",
            log_file=log_file)
        commit = run(["git", "-C", out, "rev-parse", "HEAD"], what="git rev-parse").strip()
        _remove(out / ".git")
        return {"commit": commit}

    entry = cache.get_or_build("sources", {"git": spec.url, "ref": spec.ref}, clone,
                               label=f"llama.cpp {spec.ref}")
    return SourceTree(entry.out, entry.manifest["commit"],
                      f"llama.cpp {spec.url}@{entry.manifest['commit'][:12]}")


def tree_sha256(root: Path) -> str:
    """Hash of a source tree: every file's relative path and bytes, in a stable order."""
    h = hashlib.sha256()
    for p in sorted(_walk(root)):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _walk(root: Path):
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink():
            if p.name not in _SKIP_DIRS and not p.name.startswith("build"):
                yield from _walk(p)
        elif p.is_file():
            yield p


def _extract(tarball: Path, out: Path, member_dir: str | None) -> None:
    """Extract (a subdirectory of) a tarball whose members share one top directory."""
    with tarfile.open(tarball) as tf:
        members = tf.getmembers()
        top = members[0].name.split("/")[0]
        prefix = f"{top}/{member_dir}/" if member_dir else f"{top}/"
        picked = []
        for m in members:
            if m.name.startswith(prefix):
                m.name = m.name[len(prefix):]
                if m.name:
                    picked.append(m)
        if not picked:
            raise BuilderError(f"{tarball.name}: no {member_dir or 'files'} inside")
        tf.extractall(out, members=picked, filter="data")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
