"""Stand-in artifacts for tests of what a build renders: a build context as the steps
leave it, with fixed names and hashes instead of built engines, models and releases."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from builder import resolve
from builder.contracts import BuildContext, Device
from builder.fleet import release
from builder.model.pipeline import ModelArtifact
from builder.profiles import ProfileStore
from builder.schema import Profile

RELEASE_ID = "r0123456789ab"


def device(name: str) -> Device:
    """A built-in profile, resolved."""
    rp = ProfileStore().load(name)
    return resolve.resolve(rp, rp.concrete())


def device_of(p: Profile, name: str) -> Device:
    """Profile `p` (made in a test, not read from a file) resolved as device `name`."""
    here = Path.cwd() / f"{name}.yaml"
    source = SimpleNamespace(name=name, path=here, chain=[here],
                             dir_of=lambda *loc: here.parent)
    return resolve.resolve(source, p)  # type: ignore[arg-type]


def build_context(name: str) -> BuildContext:
    """A build context of profile `name` as the steps leave it, with stand-in artifacts."""
    ctx = BuildContext(device=device(name), cache=None, out_root=Path("/out"),  # type: ignore[arg-type]
                       authorized_keys=["ssh-ed25519 AAAATEST builder"])
    fmt = ctx.engine.model_format
    ctx.model = ModelArtifact(Path(f"/cache/models/m/out/model-{ctx.p.model.quant}"
                                   + (".gguf" if fmt == "gguf" else "")),
                              "ab" * 32, ctx.p.model.quant, fmt)
    ctx.engine_artifact = SimpleNamespace(entry=SimpleNamespace(  # type: ignore[assignment]
        out=Path("/cache/engines/k/out"), key="k"))
    ctx.gateway = SimpleNamespace(out=Path("/cache/gateway/g/out"),  # type: ignore[assignment]
                                  key="g")
    ctx.release_id = RELEASE_ID
    ctx.bundle = release.Bundle(Path(f"/out/releases/{RELEASE_ID}"))
    ctx.signers = ['edge-llm-release namespaces="edge-llm-release" ssh-ed25519 AAAATEST']
    return ctx
