"""Harnesses for the test suite and the benchmarks: the engine and the gateway as local
processes on this machine. The appliance never runs these; `builder` does not import
them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..cache import Cache
    from ..engines import EngineArtifact


def engine_for(profile: str, cache: Cache) -> EngineArtifact:
    """The engine of a built-in profile, built on this machine (or from the cache)."""
    from .. import engines
    from ..profiles import ProfileStore
    from ..targets import TARGETS

    p = ProfileStore().load(profile).concrete()
    art = engines.get(p.engine.kind).build(p, TARGETS[p.target].platform(p), cache)
    assert art is not None, f"{profile}: its engine is built on the device"
    return art
