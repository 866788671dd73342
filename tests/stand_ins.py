"""Stand-in artifacts for tests of what a build renders: a build context as the steps
leave it, with fixed names and hashes instead of built engines, models and releases."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from builder import build as build_mod
from builder import planner
from builder.fleet import release
from builder.model.pipeline import ModelArtifact
from builder.profiles import ProfileStore

RELEASE_ID = "r0123456789ab"


def build_context(name: str) -> build_mod.BuildContext:
    """A build context of profile `name` as the steps leave it, with stand-in artifacts."""
    rp = ProfileStore().load(name)
    ctx = build_mod.BuildContext(rp=rp, cache=None, out_root=Path("/out"),  # type: ignore[arg-type]
                                 authorized_keys=["ssh-ed25519 AAAATEST builder"])
    ctx.plan = planner.plan(planner.PlanInput.from_profile(ctx.p))
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
