"""Raspberry Pi 5 (BCM2712, 4x Cortex-A76): Debian arm64, llama.cpp cross-built.

The A76 has dotprod and fp16 arithmetic but no i8mm or SVE, so the build names that
ISA (GGML_CPU_ARM_ARCH) rather than a generic armv8-a; cross-compiled with Debian's
aarch64-linux-gnu toolchain and linked statically against ggml and llama.
"""

from __future__ import annotations

from ..recipes import LLAMA_CPP_COMMON, LlamaCppRecipe
from ..schema import Profile
from . import Target

CROSS = "aarch64-linux-gnu"


def llama_cpp_recipe(p: Profile) -> LlamaCppRecipe:
    arm_arch = p.engine.llama_cpp.arm_arch or "armv8.2-a+dotprod+fp16"
    return LlamaCppRecipe(
        target="raspberry-pi5", arch="arm64",
        cmake_args=(*LLAMA_CPP_COMMON, "-DBUILD_SHARED_LIBS=OFF",
                    "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
                    f"-DCMAKE_C_COMPILER={CROSS}-gcc", f"-DCMAKE_CXX_COMPILER={CROSS}-g++",
                    f"-DGGML_CPU_ARM_ARCH={arm_arch}", *p.engine.llama_cpp.cmake_args),
        compilers=(f"{CROSS}-gcc", f"{CROSS}-g++"),
    )


TARGET = Target(
    name="raspberry-pi5",
    description="Raspberry Pi 5, Debian arm64, llama.cpp (armv8.2-a+dotprod+fp16)",
    arches=("arm64",),
    engines=("llama.cpp",),
    os_families=("debian",),
    why_not="the Pi 5 has no CUDA GPU",
    llama_cpp_recipe=llama_cpp_recipe,
    cpu_repack_types=("Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"),  # NEON + dotprod
)
