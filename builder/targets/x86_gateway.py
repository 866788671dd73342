"""x86-64 gateways and industrial PCs: Debian rootfs, UEFI disk image, llama.cpp on CPU.

One engine build must run on every gateway CPU, from an SSE4.2-only Atom to an AVX2
Core: the CPU backend is built once per x86-64 level and loaded at run time by
ggml's backend loader (GGML_BACKEND_DL), which picks the best one the CPU supports.
"""

from __future__ import annotations

from ..recipes import LLAMA_CPP_COMMON, LlamaCppRecipe, Variant, x86_flags
from ..schema import Profile
from . import Target


def llama_cpp_recipe(p: Profile) -> LlamaCppRecipe:
    levels = p.engine.llama_cpp.cpu_variants
    return LlamaCppRecipe(
        target="x86-gateway", arch="amd64",
        cmake_args=(*LLAMA_CPP_COMMON, "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON",
                    "-DCMAKE_BUILD_RPATH=$ORIGIN", *p.engine.llama_cpp.cmake_args),
        variants=tuple(Variant(level, x86_flags(level)) for level in levels),
    )


TARGET = Target(
    name="x86-gateway",
    description="x86-64 gateway / industrial PC, UEFI, llama.cpp on CPU",
    arches=("amd64",),
    engines=("llama.cpp",),
    os_families=("debian",),
    why_not="x86 gateways have no NVIDIA GPU in this target",
    llama_cpp_recipe=llama_cpp_recipe,
    cpu_repack_types=("Q4_0", "Q4_K", "IQ4_NL"),  # AVX2 (x86-64-v3 backend)
    # UEFI: Debian's generic kernel (gateway NICs and storage, virtio too), systemd-boot.
    rootfs_packages=("linux-image-amd64", "initramfs-tools", "systemd-boot-efi"),
)
