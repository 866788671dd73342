"""Raspberry Pi 5 (BCM2712, 4x Cortex-A76): Debian arm64, llama.cpp cross-built."""

from . import Target

TARGET = Target(
    name="raspberry-pi5",
    description="Raspberry Pi 5, Debian arm64, llama.cpp (armv8.2-a+dotprod+fp16)",
    arches=("arm64",),
    engines=("llama.cpp",),
    os_families=("debian",),
    why_not="the Pi 5 has no CUDA GPU",
)
