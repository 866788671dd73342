"""Releases for the controller-side tests: made by the builder's own release.make (real
trees, real ssh-keygen signatures), and bundles crafted byte by byte the way a hostile
carrier would write them (a manifest of its choosing, signed with whatever key it
holds), so an import meets what the exporter itself would never write."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stand_ins import device_of

from builder.contracts import ReleaseInputs
from builder.fleet import bundle, release, trust
from builder.model.pipeline import ModelArtifact, tree_digest
from builder.profiles import ProfileStore
from builder.sshkey import allowed_signers_line, sign

MODEL_BYTES = 3 << 20  # big enough to be cut in the middle of, small enough to be quick


def make(work: Path, key: Path, *, hf: bool = False, out: Path | None = None,
         add: Callable[[Path], None] | None = None) -> release.Bundle:
    """A signed release in OUT/releases/<id> (OUT: `out`, else work/out), as `builder
    release` leaves it (`add`: release.make's, more files in its tree)."""
    p = ProfileStore().load("x86-gateway").concrete()
    eng = work / "engine"
    (eng / "bin").mkdir(parents=True)
    (eng / "bin/llama-server").write_bytes(b"#!engine\n" + os.urandom(4096))
    (eng / "bin/llama-server").chmod(0o755)
    (eng / "bin/libllama.so.0").write_bytes(b"lib")
    (eng / "bin/libllama.so").symlink_to("libllama.so.0")
    gw = work / "gateway"
    (gw / "static").mkdir(parents=True)
    (gw / "__init__.py").write_text('"""a gateway package"""\n')
    (gw / "static/chat.html").write_text("<html></html>\n")
    if hf:
        model = work / "checkpoint"
        (model / "sub").mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "qwen2"}\n')
        (model / "model.safetensors").write_bytes(os.urandom(MODEL_BYTES))
        (model / "sub/tokenizer.json").write_text("{}\n")
        files = {str(f.relative_to(model)): hashlib.sha256(f.read_bytes()).hexdigest()
                 for f in sorted(model.rglob("*")) if f.is_file()}
        art = ModelArtifact(model, tree_digest(files), "int4_awq", "hf", files)
    else:
        model = work / "model-Q4_K_M.gguf"
        model.write_bytes(b"GGUF" + os.urandom(MODEL_BYTES))
        art = ModelArtifact(model, hashlib.sha256(model.read_bytes()).hexdigest(), "Q4_K_M",
                            "gguf")
    i = ReleaseInputs(device=device_of(p, "x86-gateway"), engine_dir=eng,
                      engine_key="engine", gateway_dir=gw, gateway_key="gateway", model=art,
                      model_id="test-model")
    return release.make(i, (out or work / "out") / "releases", key, add)


def signed_in(out: Path) -> release.Bundle:
    """A signed release in OUT/releases that OUT trusts (its key kept beside OUT), a new
    one at each call: what a build leaves for the commands that read releases."""
    import tempfile

    from device_tree import keygen

    key = out.parent / f".{out.name}-signing"
    if not key.exists():
        keygen(key)
    b = make(Path(tempfile.mkdtemp(prefix="build-", dir=out.parent)), key, out=out)
    trust_key(out, key)
    return b


def trust_key(out_root: Path, key: Path) -> None:
    """OUT/allowed_signers trusts `key`, as after a release made here with it."""
    trust.record_signer(out_root, allowed_signers_line(Path(f"{key}.pub").read_text()))


def signers_file(path: Path, key: Path) -> Path:
    path.write_text(allowed_signers_line(Path(f"{key}.pub").read_text()) + "\n")
    return path


def resign(tree: Path, manifest: dict[str, Any], key: Path) -> None:
    """Write `manifest` as the tree's release.json and sign it with `key`."""
    (tree / "release.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sign(key, tree / "release.json")


def craft_bundle(dest: Path, b: release.Bundle, manifest: dict[str, Any], key: Path, *,
                 contents: dict[str, bytes] | None = None,
                 members: list[tarfile.TarInfo] | None = None,
                 omit: set[str] | None = None) -> Path:
    """A bundle file of release `b`'s bytes under `manifest` (signed with `key`): each
    file listed there carries `contents[rel]`, else the release's own file; each link
    and directory is laid as listed, whatever it says, but those in `omit`. `members`
    are extra raw tar entries appended as they are."""
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    scratch = dest.with_suffix(".manifest")
    scratch.write_bytes(data)
    sig = sign(key, scratch).read_bytes()
    contents = contents or {}

    def add(tf: tarfile.TarFile, name: str, blob: bytes | None, *, kind: str = "file",
            mode: int = 0o644, target: str = "") -> None:
        ti = tarfile.TarInfo(name)
        ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE,
                   "link": tarfile.SYMTYPE}[kind]
        ti.mode, ti.linkname = mode, target
        ti.size = len(blob) if blob is not None else 0
        tf.addfile(ti, io.BytesIO(blob) if blob is not None else None)

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tf:
        head = {"format": bundle.FORMAT, "release_id": manifest.get("release_id")}
        add(tf, bundle.HEADER, json.dumps(head).encode())
        add(tf, "tree/release.json", data)
        add(tf, "tree/release.json.sig", sig)
        for rel in sorted(manifest.get("dirs") or {}):
            add(tf, f"tree/{rel}", None, kind="dir", mode=0o755)
        for rel in sorted(manifest.get("files") or {}):
            if rel in (omit or ()):
                continue
            blob = contents.get(rel)
            if blob is None:
                blob = (b.tree / rel).read_bytes()
            add(tf, f"tree/{rel}", blob, mode=0o644)
        for rel, target in sorted((manifest.get("links") or {}).items()):
            add(tf, f"tree/{rel}", None, kind="link", target=str(target))
        name = Path(str(manifest["model"]["path"])).name
        add(tf, f"model/{name}", b.model_path.read_bytes())
        for ti in members or []:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isreg() else None)
    return dest


def listing_of(root: Path) -> dict[str, tuple[str, int, str]]:
    """Everything under `root` (kind, mode, content hash or link target), to compare
    before and after an operation that must not touch it."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            out[str(p)] = ("link", st.st_mode, os.readlink(p))
        elif p.is_dir():
            out[str(p)] = ("dir", st.st_mode, "")
        else:
            out[str(p)] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out
