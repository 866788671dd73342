"""Targets: everything that differs per hardware family lives behind this seam.

A target module declares what the family can run (architectures, engines, OS bases)
and, as later stages arrive, its engine recipe, rootfs base, boot layout and flash
method. Adding hardware means adding a module here and a profile, not editing stages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import Engine


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arches: tuple[str, ...]
    engines: tuple[Engine, ...]
    os_families: tuple[str, ...]
    why_not: str  # said when a profile asks for an engine this target cannot run


def _load() -> dict[str, Target]:
    from . import jetson_orin, raspberry_pi5, x86_gateway

    return {m.TARGET.name: m.TARGET for m in (x86_gateway, raspberry_pi5, jetson_orin)}


TARGETS: dict[str, Target] = _load()
