"""A release: what one device serves, as a signed, self-describing directory tree.

    out/releases/<id>/tree/      bin/ (engine), lib/edge_llm_gateway/ (gateway),
                                 engine.env, gateway.json, systemd/engine.conf,
                                 release.json (every file's sha256 and mode, the model's),
                                 release.json.sig (ssh-keygen -Y sign, edge-llm-release)
    out/releases/<id>/bundle.json  where the model file is on this machine

The tree is installed as /opt/edge-llm/releases/<id>/ and the model as
/var/lib/edge-llm/models/<sha256>.gguf, by the `release` role: into an image's rootfs
by `builder build`, onto live devices by `builder deploy`. The device checks the
signature and every hash itself (roles/release/files/edge-llm-release) before
switching /opt/edge-llm/current to it.

The id is a hash of everything that changes what a device runs (engine build, model,
gateway code, profile): the same inputs give the same id on any build host, and any
setting that differs gives another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .cache import sha256_file
from .errors import BuilderError, display_path
from .llama_server import server_env
from .schema import Profile
from .sshkey import sign

MODEL_DIR = "/var/lib/edge-llm/models"
FORMAT = 1


@dataclass(frozen=True)
class Inputs:
    """Everything a release is made of (all resolved artifacts)."""

    profile_name: str
    profile: Profile
    engine_dir: Path  # holds bin/
    engine_key: str
    gateway_dir: Path  # the gateway package
    gateway_key: str
    model_path: Path
    model_sha256: str
    model_quant: str
    model_id: str  # what clients name (the engine's alias)
    memory_max: int  # engine MemoryMax, bytes (from the plan)

    @property
    def release_id(self) -> str:
        blob = json.dumps({"engine": self.engine_key, "model": self.model_sha256,
                           "gateway": self.gateway_key, "model_id": self.model_id,
                           "profile": self.profile.model_dump(mode="json")}, sort_keys=True)
        return "r" + hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Bundle:
    dir: Path

    @property
    def tree(self) -> Path:
        return self.dir / "tree"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.tree / "release.json").read_text())

    @property
    def release_id(self) -> str:
        return self.manifest["release_id"]

    @property
    def model_path(self) -> Path:
        return Path(json.loads((self.dir / "bundle.json").read_text())["model_path"])

    @property
    def tree_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.tree.rglob("*")
                   if f.is_file() and not f.is_symlink())


def engine_env(i: Inputs) -> dict[str, str]:
    p = i.profile
    env = server_env(p.runtime, f"{MODEL_DIR}/{i.model_sha256}.gguf",
                     port=p.service.engine_port, threads=p.device.cpu_cores, alias=i.model_id)
    env.pop("LLAMA_ARG_HOST")  # the unit pins 127.0.0.1 on the command line
    return env


def gateway_config(i: Inputs, release_id: str) -> dict[str, Any]:
    p = i.profile
    src = p.engine.llama_cpp.source
    engine_version = {"pypi-sdist": src.package, "path": "local source tree",
                      "git": f"{src.url}@{src.ref}"}.get(src.kind, src.kind)
    return {
        "model_id": i.model_id,
        "listen_host": p.service.bind_address,
        "listen_port": p.service.port,
        "engine_url": f"http://127.0.0.1:{p.service.engine_port}",
        "slots": p.runtime.parallel,
        "max_queue": p.service.max_queue,
        "max_tokens": p.service.max_tokens,
        "max_request_bytes": p.service.max_request_bytes,
        "api_auth": p.service.api_auth,
        "appliance": {"profile": i.profile_name, "target": p.target,
                      "release_id": release_id, "model_sha256": i.model_sha256,
                      "quant": i.model_quant, "engine": p.engine.kind,
                      "engine_version": engine_version, "builder_version": __version__},
    }


def engine_unit_conf(i: Inputs) -> str:
    """The engine unit's per-release resources, a drop-in read through current/."""
    p = i.profile
    lines = ["# edge-llm release: engine resources (a drop-in linked through current/)",
             "[Service]", f"MemoryMax={i.memory_max}"]
    if p.service.cpu_affinity:
        lines.append("CPUAffinity=" + " ".join(map(str, p.service.cpu_affinity)))
    if p.runtime.mlock:
        lines.append("LimitMEMLOCK=infinity")  # MemoryMax still bounds it
    return "\n".join(lines) + "\n"


def _env_file(env: dict[str, str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "# edge-llm release: llama-server settings (LLAMA_ARG_*)\n" + "".join(
        f"{k}={quote(str(v))}\n" for k, v in env.items())


def _copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _listing(tree: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    files, links = {}, {}
    for path in sorted(tree.rglob("*")):
        rel = str(path.relative_to(tree))
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/") or ".." in Path(target).parts:
                raise BuilderError(f"{path}: a link out of the release ({target})")
            links[rel] = target
        elif path.is_file():
            files[rel] = {"sha256": sha256_file(path),
                          "mode": f"{stat.S_IMODE(path.stat().st_mode):04o}"}
    return files, links


def make(i: Inputs, out_root: Path, signing_key: Path) -> Bundle:
    """out_root/<id>/, made once: a release id names its content, so an existing,
    complete bundle is reused (its signature stays the one it was made with)."""
    rid = i.release_id
    out_root = out_root.resolve()  # Ansible resolves a relative src against the role
    final = out_root / rid
    if (final / "tree" / "release.json.sig").is_file() and (final / "bundle.json").is_file():
        return Bundle(final)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{rid}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tree = tmp / "tree"
    try:
        tree.mkdir(parents=True)
        _copy_tree(i.engine_dir / "bin", tree / "bin")
        _copy_tree(i.gateway_dir, tree / "lib" / "edge_llm_gateway")
        (tree / "engine.env").write_text(_env_file(engine_env(i)))
        (tree / "gateway.json").write_text(json.dumps(gateway_config(i, rid), indent=2) + "\n")
        (tree / "systemd").mkdir()
        (tree / "systemd" / "engine.conf").write_text(engine_unit_conf(i))
        for path in tree.rglob("*"):  # root-owned on the device; readable, never writable
            if not path.is_symlink():
                mode = stat.S_IMODE(path.stat().st_mode)
                path.chmod(0o755 if path.is_dir() or mode & 0o111 else 0o644)
        files, links = _listing(tree)
        p = i.profile
        manifest = {
            "format": FORMAT, "release_id": rid, "profile": i.profile_name,
            "target": p.target, "builder_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))),
            "engine": {"kind": p.engine.kind, "cache_key": i.engine_key},
            "gateway": {"port": p.service.port, "tls": bool(p.service.tls_cert),
                        "api_auth": p.service.api_auth, "cache_key": i.gateway_key},
            "model": {"id": i.model_id, "sha256": i.model_sha256, "quant": i.model_quant,
                      "bytes": i.model_path.stat().st_size,
                      "path": f"{MODEL_DIR}/{i.model_sha256}.gguf"},
            "files": files, "links": links,
        }
        (tree / "release.json").write_text(json.dumps(manifest, indent=2) + "\n")
        sign(signing_key, tree / "release.json")
        (tmp / "bundle.json").write_text(json.dumps(
            {"release_id": rid, "model_path": str(i.model_path)}, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(final)


def find(out_root: Path, given: str) -> Bundle:
    """A release by path (out/releases/<id>) or by id under out_root."""
    path = Path(given)
    if not (path / "tree" / "release.json").is_file():
        path = out_root / given
    if not (path / "tree" / "release.json").is_file():
        raise BuilderError(f"--release {given}: no release there (looked for "
                           f"{display_path(path / 'tree' / 'release.json')}); "
                           "make one with `builder release --profile P`")
    return Bundle(path.resolve())
