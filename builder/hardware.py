"""What an engine needs to know about the hardware it is built for, as data: the target
packages describe their hardware with a Platform, the engine modules read it. Neither
side names the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    arch: str  # Debian architecture of the binaries (amd64, arm64)
    gnu_triplet: str  # aarch64-linux-gnu, x86_64-linux-gnu: cross compilers, multiarch dirs
    # CPU: either x86-64 micro-architecture levels, one CPU backend built per level and the
    # best one the CPU supports loaded at run time (portable images), or one -march
    x86_levels: tuple[str, ...] = ()
    arm_arch: str | None = None  # e.g. armv8.2-a+dotprod+fp16 (Cortex-A76)
    cuda_arch: str | None = None  # CMAKE_CUDA_ARCHITECTURES, e.g. "87" (Orin)
    gpu_devices: tuple[str, ...] = ()  # device nodes (systemd DeviceAllow=) the GPU needs
    gpu_groups: tuple[str, ...] = ()  # groups that may open them (video, render)
    # SIMD features the engine's CPU kernels use (decide e.g. llama.cpp's weight repack)
    cpu_features: frozenset[str] = frozenset()
    # Where the engine is compiled: on the build host (natively or cross) or on the
    # device itself (CUDA and TensorRT come with the device's JetPack).
    build_on_device: bool = False
