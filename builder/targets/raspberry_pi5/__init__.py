"""Raspberry Pi 5 (BCM2712, 4x Cortex-A76 at 2.4 GHz): Debian arm64, llama.cpp
cross-built for the A76 (dotprod and fp16 arithmetic, no i8mm or SVE, so the build
names that ISA rather than a generic armv8-a)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hardware import Platform
from ...schema import Profile, TargetSettings
from ..base import NotSupported, Target

if TYPE_CHECKING:
    from ...build import BuildContext
    from ...rootfs import Rootfs

A76 = "armv8.2-a+dotprod+fp16"


class Pi5Settings(TargetSettings):
    pass


class RaspberryPi5(Target):
    name = "raspberry-pi5"
    description = "Raspberry Pi 5, Debian arm64, llama.cpp (armv8.2-a+dotprod+fp16)"
    section = "pi5"
    settings = Pi5Settings
    arches = ("arm64",)
    engines = ("llama.cpp",)
    os_bases = ("debian",)
    storage_kinds = ("sd", "nvme", "usb")
    why_not = "the Pi 5 has no CUDA GPU"

    def platform(self, p: Profile) -> Platform:
        return Platform(arch="arm64", gnu_triplet="aarch64-linux-gnu", arm_arch=A76,
                        cpu_features=frozenset({"neon", "dotprod", "fp16"}))

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("engine", "engine-arm64", "image")

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        raise NotSupported("raspberry-pi5: the Pi 5 image (Raspberry Pi's kernel and "
                           "firmware, the boot partition) is not built yet; `builder "
                           "release` makes a release for Pi 5 devices")


TARGET = RaspberryPi5()
