"""NVIDIA Jetson Orin (T234: Cortex-A78AE CPUs, an Ampere GPU sm_87 sharing LPDDR5 with
them): L4T / JetPack, TensorRT-LLM or llama.cpp with CUDA, both built on the device
(CUDA and TensorRT come with the device's JetPack, and TensorRT engines are tied to
the GPU and the TensorRT version)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ...hardware import Platform
from ...schema import Profile, TargetSettings
from ...units import GiB
from ..base import Loc, NotSupported, Target

if TYPE_CHECKING:
    from ...build import BuildContext
    from ...rootfs import Rootfs


@dataclass(frozen=True)
class Module:
    """A Jetson Orin module: its devkit board config, the USB product id it shows in
    recovery mode, its RAM, CPU cores and the ids offline flash generation takes."""

    board: str  # Linux_for_Tegra/<board>.conf
    usb_product: str  # vendor 0955 in recovery mode
    ram: int
    cpu_cores: int
    board_id: str
    board_sku: str
    fab: str


# L4T r36 (tools/kernel_flash/README_initrd_flash.txt, l4t_initrd_flash.sh fill_devpaths)
MODULES: dict[str, Module] = {
    "agx-orin-64gb": Module("jetson-agx-orin-devkit", "7023", 64 * GiB, 12, "3701", "0005",
                            "500"),
    "agx-orin-32gb": Module("jetson-agx-orin-devkit", "7223", 32 * GiB, 8, "3701", "0004",
                            "TS4"),
    "orin-nx-16gb": Module("jetson-orin-nano-devkit", "7323", 16 * GiB, 8, "3767", "0000",
                           "300"),
    "orin-nx-8gb": Module("jetson-orin-nano-devkit", "7423", 8 * GiB, 6, "3767", "0001",
                          "300"),
    "orin-nano-8gb": Module("jetson-orin-nano-devkit", "7523", 8 * GiB, 6, "3767", "0003",
                            "300"),
    "orin-nano-4gb": Module("jetson-orin-nano-devkit", "7623", 4 * GiB, 6, "3767", "0004",
                            "300"),
}
# Jetson Linux releases this builder knows, and the JetPack each belongs to.
L4T_RELEASES = {"36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2"}
A78AE = "armv8.2-a+dotprod+fp16"
# GPU device nodes of the nvgpu driver on L4T r36, and the memory allocator's.
GPU_DEVICES = ("/dev/nvmap", "/dev/nvhost-ctrl", "/dev/nvhost-ctrl-gpu", "/dev/nvhost-gpu",
               "/dev/nvhost-as-gpu", "/dev/nvhost-tsg-gpu", "/dev/nvhost-sched-gpu",
               "/dev/nvhost-prof-gpu", "/dev/nvhost-dbg-gpu", "/dev/nvhost-ctxsw-gpu",
               "/dev/nvhost-power-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/nvgpu/igpu0/as",
               "/dev/nvgpu/igpu0/channel", "/dev/nvgpu/igpu0/tsg", "/dev/nvgpu/igpu0/sched",
               "/dev/nvgpu/igpu0/prof", "/dev/nvgpu/igpu0/dbg", "/dev/nvgpu/igpu0/ctxsw",
               "/dev/nvgpu/igpu0/power")


class JetsonSettings(TargetSettings):
    module: Literal[tuple(MODULES)] = Field(  # type: ignore[valid-type]
        ..., description="The Orin module: decides the board config flashed, the USB id "
        "of the board in recovery mode and the memory (device.ram must match it).")
    l4t_release: Literal[tuple(L4T_RELEASES)] = Field(  # type: ignore[valid-type]
        "36.4.3", description="Jetson Linux (L4T) release of the BSP and sample rootfs "
        "(36.4.0 is JetPack 6.1, 36.4.3 JetPack 6.2); the BSP you supply must be this one.")

    @property
    def jetpack(self) -> str:
        return L4T_RELEASES[self.l4t_release]


class JetsonOrin(Target):
    name = "jetson-orin"
    description = "NVIDIA Jetson Orin, L4T/JetPack, TensorRT-LLM or llama.cpp (CUDA sm_87)"
    section = "jetson"
    settings = JetsonSettings
    arches = ("arm64",)
    engines = ("tensorrt-llm", "llama.cpp")
    os_bases = ("l4t",)
    storage_kinds = ("emmc", "nvme")
    why_not = ""

    def platform(self, p: Profile) -> Platform:
        cc = p.device.accelerator.compute_capability or "8.7"
        return Platform(arch="arm64", gnu_triplet="aarch64-linux-gnu", arm_arch=A78AE,
                        cuda_arch=cc.replace(".", ""), gpu_devices=GPU_DEVICES,
                        cpu_features=frozenset({"neon", "dotprod", "fp16"}),
                        build_on_device=True)

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        s = self.settings_of(p)
        m = MODULES[s.module]
        out: list[tuple[Loc, str]] = []
        if p.device.ram != m.ram:
            out.append((("device", "ram"), f"the {s.module} module has {m.ram // GiB}GiB, "
                        f"not {p.device.ram / GiB:g}GiB"))
        if p.device.accelerator.kind != "cuda":
            out.append((("device", "accelerator", "kind"), "an Orin has a CUDA GPU: cuda"))
        return out

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("image",)

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        raise NotSupported("jetson-orin: the L4T image (NVIDIA's BSP and sample rootfs, "
                           "the flash package) is not built yet; `builder release` makes "
                           "a release for Orin devices")


TARGET = JetsonOrin()
