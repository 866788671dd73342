"""Targets: everything that differs per hardware family lives behind this seam.

A target module declares what the family can run (architectures, engines, OS bases)
and its engine recipe; rootfs base, boot layout and flash method join as their stages
land. Adding hardware means adding a module here and a profile, not editing stages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..catalog import Engine

if TYPE_CHECKING:
    from ..recipes import LlamaCppRecipe
    from ..schema import Profile


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arches: tuple[str, ...]
    engines: tuple[Engine, ...]
    os_families: tuple[str, ...]
    why_not: str  # said when a profile asks for an engine this target cannot run
    llama_cpp_recipe: Callable[[Profile], LlamaCppRecipe]
    # Weight types llama.cpp's CPU backend re-lays out in RAM on this CPU at load
    # (ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type): they cost twice.
    cpu_repack_types: tuple[str, ...] = ()
    # Packages the target's boot layout needs in the rootfs (kernel, bootloader).
    rootfs_packages: tuple[str, ...] = ()


def _load() -> dict[str, Target]:
    from . import jetson_orin, raspberry_pi5, x86_gateway

    return {m.TARGET.name: m.TARGET for m in (x86_gateway, raspberry_pi5, jetson_orin)}


TARGETS: dict[str, Target] = _load()
