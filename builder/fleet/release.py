"""A release: what one device serves, as a signed, self-describing directory tree.

    out/releases/<id>/tree/      the engine's files (bin/ for llama.cpp),
                                 lib/edge_llm_gateway/ (gateway), engine.env,
                                 gateway.json, systemd/engine.conf and gateway.conf
                                 (each unit's part a release decides: command,
                                 readiness check, credentials, resources),
                                 answers.json (verify.min_agreement's reference
                                 answers, when the profile sets it),
                                 release.json (every file's and directory's sha256 or
                                 mode, the model's), release.json.sig (ssh-keygen -Y sign)
    out/releases/<id>/bundle.json  where the model is on this machine; the profile and
                                   plan the release was made from

The tree is installed as <engine_root>/releases/<id>/ and the model in the device's
content-addressed model directory (device/layout.py) by the `release` role: into an
image's rootfs by `builder build`, onto live devices by `builder deploy`. The device
checks the signature and every hash itself (device/release_tool.py, edge-llm-release)
before switching `current` to it.

The id is a hash of everything that changes what a device runs (engine build, model,
gateway code, profile): the same inputs give the same id on any build host, and any
setting that differs gives another.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..cache import key_of
from ..contracts import Device, ReleaseInputs
from ..device.layout import DEFAULT as LAYOUT
from ..device.layout import RELEASE_FORMAT, RELEASE_MANIFEST, RELEASE_SIGNATURE
from ..errors import BuilderError, display_path
from ..sshkey import sign
from . import trust
from .trust import listing


def recipe_key(d: Device) -> str:
    """What names an engine the device builds itself: its recipe."""
    return key_of("device-engine", d.engine.recipe(d.profile, d.platform).to_json())


@dataclass(frozen=True)
class Bundle:
    dir: Path

    @property
    def tree(self) -> Path:
        return self.dir / "tree"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.tree / RELEASE_MANIFEST).read_text())

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


def gateway_config(i: ReleaseInputs, release_id: str) -> dict[str, Any]:
    p = i.profile
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
        **i.engine.gateway_settings(LAYOUT),
        "appliance": {"profile": i.profile_name, "target": p.target,
                      "release_id": release_id, "model_sha256": i.model.sha256,
                      "quant": i.model.quant, "engine": p.engine.kind,
                      "engine_version": i.engine.version(p),
                      "builder_version": __version__},
    }


def engine_unit_conf(i: ReleaseInputs) -> str:
    """The engine unit's per-release part, a drop-in read through current/: the command
    and readiness check of the release's engine, and its resources."""
    p, e = i.profile, i.engine
    timeout = e.start_timeout(p)
    ready = f"http://127.0.0.1:{p.service.engine_port}{e.probe.ready}"
    lines = ["# edge-llm release: the engine's command and resources (a drop-in linked "
             "through current/)",
             "[Service]",
             "ExecStartPre=",  # nothing runs before the engine, privileged or not
             "ExecStart=",
             f"ExecStart={e.exec_start(i, LAYOUT)}",
             f"ExecStartPost={LAYOUT.tool('edge-llm-wait-ready')} {ready} {timeout}",
             f"TimeoutStartSec={timeout}",
             f"MemoryMax={i.plan.memory_max}"]
    if p.service.cpu_affinity:
        lines.append("CPUAffinity=" + " ".join(map(str, p.service.cpu_affinity)))
    if p.runtime.mlock:
        lines.append("LimitMEMLOCK=infinity")  # MemoryMax still bounds it
    return "\n".join(lines) + "\n"


def gateway_unit_conf(i: ReleaseInputs) -> str:
    """The gateway unit's per-release part, a drop-in read through current/ like the
    engine's: its command (with the keys and the TLS files it is handed, as the release's
    gateway.json asks), the capability a port below 1024 needs, and its MemoryMax (the
    plan's gateway figure). The port, auth and TLS reach the device this one way: a
    deploy or a rollback brings them with the release."""
    s, layout = i.profile.service, i.device.layout
    cred = "${CREDENTIALS_DIRECTORY}"
    args = [f"--config {layout.current}/gateway.json"]
    lines = ["# edge-llm release: the gateway's command, credentials and resources (a "
             "drop-in linked through current/)", "[Service]"]
    if s.api_auth:
        args.append(f"--keys-file {cred}/api-keys")
        lines.append(f"LoadCredential=api-keys:{layout.api_keys}")
    if s.tls_cert and s.tls_key:
        args.append(f"--tls-cert {cred}/tls-cert --tls-key {cred}/tls-key")
        lines += [f"LoadCredential=tls-cert:{s.tls_cert}",
                  f"LoadCredential=tls-key:{s.tls_key}"]
    if s.port < 1024:  # the base unit has no capability and its own user namespace
        lines += ["CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                  "AmbientCapabilities=CAP_NET_BIND_SERVICE", "PrivateUsers=no"]
    lines += ["ExecStart=", f"ExecStart=/usr/bin/python3 -m edge_llm_gateway {' '.join(args)}",
              f"MemoryMax={i.plan.gateway_overhead}"]
    return "\n".join(lines) + "\n"


def env_file(env: dict[str, str], engine: str) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"# edge-llm release: {engine} settings\n" + "".join(
        f"{k}={quote(str(v))}\n" for k, v in env.items())


def copy_tree(src: Path, dest: Path) -> None:
    """A source tree into a release: no bytecode (the device compiles its own, from
    the verified sources)."""
    shutil.copytree(src, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def make(i: ReleaseInputs, out_root: Path, signing_key: Path,
         add: Callable[[Path], None] | None = None) -> Bundle:
    """out_root/<id>/, made once: a release id names its content, so an existing,
    complete bundle is reused (its signature stays the one it was made with). `add`
    writes more files into the tree, from what is in it, before it is listed and signed
    (the reference answers of verify.min_agreement)."""
    rid = i.release_id
    out_root = out_root.resolve()  # Ansible resolves a relative src against the role
    final = out_root / rid
    if (final / "tree" / RELEASE_SIGNATURE).is_file() and (final / "bundle.json").is_file():
        return Bundle(final)
    e, p = i.engine, i.profile
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".tmp-{rid}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tree = tmp / "tree"
    try:
        tree.mkdir(parents=True)
        e.release_files(i, tree)
        copy_tree(i.gateway_dir, tree / "lib" / "edge_llm_gateway")
        (tree / "engine.env").write_text(env_file(e.env(i, LAYOUT), e.kind))
        (tree / "gateway.json").write_text(json.dumps(gateway_config(i, rid), indent=2) + "\n")
        (tree / "systemd").mkdir()
        (tree / "systemd" / "engine.conf").write_text(engine_unit_conf(i))
        (tree / "systemd" / "gateway.conf").write_text(gateway_unit_conf(i))
        if add is not None:
            add(tree)
        for path in tree.rglob("*"):  # root-owned on the device; readable, never writable
            if not path.is_symlink():
                mode = stat.S_IMODE(path.stat().st_mode)
                path.chmod(0o755 if path.is_dir() or mode & 0o111 else 0o644)
        m = i.model
        manifest = {
            "format": RELEASE_FORMAT, "release_id": rid, "profile": i.profile_name,
            "target": p.target, "builder_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(
                int(os.environ.get("SOURCE_DATE_EPOCH", time.time())))),
            "engine": {"kind": p.engine.kind, "cache_key": i.engine_key,
                       "probe": {"ready": e.probe.ready, "alive": e.probe.alive},
                       "port": p.service.engine_port,
                       "watchdog_seconds": p.service.engine_watchdog,
                       # an engine the device builds at its first start: how long that
                       # may take, which a deploy's health gate must wait out
                       "build_seconds": e.start_timeout(p) if i.engine_dir is None
                       else None},
            "gateway": {"port": p.service.port, "tls": bool(p.service.tls_cert),
                        "api_auth": p.service.api_auth, "cache_key": i.gateway_key},
            "model": {"id": i.model_id, "sha256": m.sha256, "quant": m.quant,
                      "format": m.format, "bytes": m.bytes,
                      "path": f"{LAYOUT.model_dir}/{m.device_name}",
                      **({"files": m.files} if m.files else {}),
                      **({"quality": m.quality} if m.quality else {})},
            **listing(tree),
        }
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        # what every controller will check before using it: never sign what it refuses
        trust.Manifest.parse(data, f"release {rid} of {i.profile_name}")
        (tree / RELEASE_MANIFEST).write_bytes(data)
        sign(signing_key, tree / RELEASE_MANIFEST)
        # what this machine knows beside the signed tree: where the model is, and the
        # profile and plan it was made from (`builder verify --release` checks a device
        # against them)
        (tmp / "bundle.json").write_text(json.dumps(
            {"release_id": rid, "model_path": str(m.path),
             "profile": p.model_dump(mode="json"), "plan": i.plan.to_json()},
            indent=2) + "\n")
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
    if not (path / "tree" / RELEASE_MANIFEST).is_file():
        path = out_root / given
    if not (path / "tree" / RELEASE_MANIFEST).is_file():
        raise BuilderError(f"--release {given}: no release there (looked for "
                           f"{display_path(path / 'tree' / RELEASE_MANIFEST)}); "
                           "make one with `builder release --profile P`")
    return Bundle(path.resolve())
