"""x86-64 gateways and industrial PCs: Debian rootfs, UEFI disk image, llama.cpp on CPU."""

from . import Target

TARGET = Target(
    name="x86-gateway",
    description="x86-64 gateway / industrial PC, UEFI, llama.cpp on CPU",
    arches=("amd64",),
    engines=("llama.cpp",),
    os_families=("debian",),
    why_not="x86 gateways have no NVIDIA GPU in this target",
)
