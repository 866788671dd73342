"""NVIDIA Jetson Orin (T234: Cortex-A78AE CPUs, an Ampere GPU sm_87 sharing LPDDR5 with
them): L4T / JetPack, TensorRT-LLM or llama.cpp with CUDA, both built on the device
(CUDA and TensorRT come with the device's JetPack, and TensorRT engines are tied to
the GPU and the TensorRT version).

A build takes NVIDIA's BSP and sample rootfs (you supply them: jetson.bsp,
jetson.sample_rootfs, or --l4t-bsp/--l4t-rootfs), makes the rootfs the quick-start way
(l4t.py), applies the roles, then runs NVIDIA's `l4t_initrd_flash.sh --no-flash`
for the module's devkit board: the delivery is that flash package. `builder flash`
finds boards in recovery mode (USB vendor 0955), refuses a module the profile is not
for, and runs `l4t_initrd_flash.sh --flash-only` from the package.

Two Jetson Linux lines: R36 (JetPack 6, Ubuntu 22.04, CUDA 12) and R39.2 (JetPack 7.2
for Orin, Ubuntu 24.04, CUDA 13.2), chosen by jetson.l4t_release; what differs between
them is data (l4t.L4T_RELEASES).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ... import doctor
from ...cache import sha256_file
from ...contracts import (
    ARM64_TOOLS,
    Delivery,
    FlashMethod,
    Platform,
    Target,
    Tool,
    VendorInput,
)
from ...errors import BuilderError, display_path
from ...progress import step
from ...rootfs import Rootfs, role_packages
from ...run import ToolError, run
from ...schema import AptUrl, DebPackage, PinnedFile, Profile, TargetSettings, _Section
from ...units import GiB
from . import l4t
from .l4t import JETSON_REPO, L4T_RELEASES

if TYPE_CHECKING:
    from ...contracts import BuildContext


@dataclass(frozen=True)
class Module:
    """A Jetson Orin module: its devkit board config, the USB product id it shows in
    recovery mode, its RAM, CPU cores, the ids offline flash generation takes (board id,
    module SKUs, FAB, and the chip SKU each SKU is flashed with) and its nvpmodel power
    modes (id, name), without and with JetPack 6.2's Super board config (and R39.2's
    Super modes where they differ from R36's)."""

    board: str  # Linux_for_Tegra/<board>.conf
    usb_product: str  # vendor 0955 in recovery mode
    ram: int
    cpu_cores: int
    board_id: str
    chip_skus: dict[str, str]  # module SKU (BOARDSKU) -> CHIP_SKU; the first is the default
    fab: str
    qspi: bool  # boots from QSPI (Orin NX/Nano): -p "-c .../flash_t234_qspi.xml"
    power_modes: tuple[tuple[int, str], ...]
    super_modes: tuple[tuple[int, str], ...] = ()  # empty: no Super board config
    r39_super_modes: tuple[tuple[int, str], ...] | None = None  # None: R36's

    @property
    def skus(self) -> tuple[str, ...]:
        return tuple(self.chip_skus)

    def modes(self, super_board: bool, release: str) -> tuple[tuple[int, str], ...]:
        if not super_board:
            return self.power_modes
        if self.r39_super_modes is not None and L4T_RELEASES[release].line.major >= 39:
            return self.r39_super_modes
        return self.super_modes


AGX_MODES = ((0, "MAXN"), (1, "15W"), (2, "30W"), (3, "50W"))
# L4T r36 (tools/kernel_flash/README_initrd_flash.txt, l4t_initrd_flash.sh fill_devpaths;
# CHIP_SKU as NVIDIA's and its partners' offline flashing guides pass it: p3767.conf.common
# takes the BPMP firmware from it, TE980M-A1 for D3/D4 (Orin NX), TE950M-A1 for D5/D6
# (Orin Nano), and assumes D3 when it is unset; nvpmodel modes: Jetson Linux developer
# guide, "Supported Modes and Power Efficiency", JetPack 6.2)
MODULES: dict[str, Module] = {
    "agx-orin-64gb": Module("jetson-agx-orin-devkit", "7023", 64 * GiB, 12, "3701",
                            {"0005": "00:00:00:D0"}, "500", qspi=False,
                            power_modes=AGX_MODES),
    "agx-orin-32gb": Module("jetson-agx-orin-devkit", "7223", 32 * GiB, 8, "3701",
                            {"0004": "00:00:00:D2"}, "500", qspi=False,
                            power_modes=((0, "MAXN"), (1, "15W"), (2, "30W"), (3, "40W"))),
    "orin-nx-16gb": Module("jetson-orin-nano-devkit", "7323", 16 * GiB, 8, "3767",
                           {"0000": "00:00:00:D3"}, "300", qspi=True,
                           power_modes=((0, "MAXN"), (1, "10W"), (2, "15W"), (3, "25W")),
                           super_modes=((0, "MAXN_SUPER"), (1, "10W"), (2, "15W"),
                                        (3, "25W"), (4, "40W"))),
    "orin-nx-8gb": Module("jetson-orin-nano-devkit", "7423", 8 * GiB, 6, "3767",
                          {"0001": "00:00:00:D4"}, "300", qspi=True,
                          power_modes=((0, "MAXN"), (1, "10W"), (2, "15W"), (3, "20W")),
                          super_modes=((0, "MAXN_SUPER"), (1, "10W"), (2, "15W"),
                                       (3, "20W"), (4, "40W"))),
    # 0005 is the developer kit's module, 0003 the production one. R39.2's Super config
    # has no 7W mode: its power and performance page lists 15W, 25W and MAXN SUPER (ids
    # 0-2), as does a JetPack 7.2.1 devkit's nvpmodel (public notes, index ids
    # 71089108149, 68579880183); the other modules' R39.2 tables were not found, so they
    # keep R36's
    "orin-nano-8gb": Module("jetson-orin-nano-devkit", "7523", 8 * GiB, 6, "3767",
                            {"0003": "00:00:00:D6", "0005": "00:00:00:D5"}, "300", qspi=True,
                            power_modes=((0, "15W"), (1, "7W")),
                            super_modes=((0, "15W"), (1, "25W"), (2, "MAXN_SUPER"),
                                         (3, "7W")),
                            r39_super_modes=((0, "15W"), (1, "25W"), (2, "MAXN_SUPER"))),
    "orin-nano-4gb": Module("jetson-orin-nano-devkit", "7623", 4 * GiB, 6, "3767",
                            {"0004": "00:00:00:D6"}, "300", qspi=True,
                            power_modes=((0, "10W"), (1, "7W")),
                            super_modes=((0, "10W"), (1, "25W"), (2, "MAXN_SUPER"),
                                         (3, "7W"))),
}
# JetPack 6.2 (L4T 36.4.3) and later: R39.2 keeps it (a Seeed JetPack 7.2 guide flashes
# it with l4t_initrd_flash.sh; public notes, index id 62653419769)
SUPER_BOARD = "jetson-orin-nano-devkit-super"
SUPER_SINCE = (36, 4, 3)
MODULE_OF_PRODUCT = {m.usb_product: name for name, m in MODULES.items()}
NVIDIA_USB = "0955"
RUNNING_PRODUCT = "7020"  # a Jetson booted normally (not in recovery mode)
A78AE = "armv8.2-a+dotprod+fp16"
# What a CUDA process opens on L4T r36 (nvgpu, nvmap, host1x syncpoints, the render
# node): OE4T meta-tegra's devices.csv for the container runtime, plus /dev/nvhost-ctrl
# and the DRM render node JetPack 6 needs. systemd skips a listed node that is absent.
# R39.2 keeps nvgpu on Orin: meta-tegra's devices.csv for it (d5d93dc6) lists the same
# nvgpu nodes, and /dev/nvidia* for Thor's OpenRM driver, which Orin does not use.
GPU_DEVICES = (
    "/dev/nvmap", "/dev/host1x-fence", "/dev/nvhost-ctrl",
    *(f"/dev/nvhost-{n}-gpu" for n in ("ctrl", "as", "tsg", "sched", "nvsched", "ctxsw",
                                         "dbg", "prof", "prof-ctx", "prof-dev", "power")),
    "/dev/nvhost-gpu",
    *(f"/dev/nvgpu/igpu0/{n}" for n in ("ctrl", "as", "channel", "tsg", "sched", "nvsched",
                                          "ctxsw", "dbg", "prof", "prof-ctx", "prof-dev",
                                          "power")),
    "char-drm",
)
PACKAGE = "l4t-flash.tar.zst"
# What NVIDIA's BSP scripts need on the build (and flashing) host, checked by them before
# anything is made, --no-flash included (R36.2 tools/kernel_flash/
# l4t_initrd_flash_internal.sh:89-122: sshpass, abootimg but for --flash-only; exportfs
# in every mode, the USB network being usb0 by default (739; l4t_network_flash.func:
# 41-46); l4t_create_images_for_kernel_flash.sh:187-195 and flash.sh: xmllint;
# apply_binaries.sh: dpkg knowing qemu-user-static, /usr/bin/qemu-aarch64-static, and
# lbzip2 for its --target-overlay)
L4T_HOST_TOOLS = (
    Tool("bzip2", "bzip2", "NVIDIA's .tbz2 BSP and sample rootfs"),
    Tool("sshpass", "sshpass", "l4t_initrd_flash.sh's prerequisite check"),
    Tool("abootimg", "abootimg", "l4t_initrd_flash.sh (its flashing initrd)"),
    Tool("exportfs", "nfs-kernel-server", "l4t_initrd_flash.sh (NFS over the USB network)"),
    Tool("xmllint", "libxml2-utils", "the BSP's partition layouts"),
    Tool("lbzip2", "lbzip2", "the BSP's image packing"),
    Tool("/usr/bin/qemu-aarch64-static", "qemu-user-static",
         "apply_binaries.sh and l4t_create_default_user.sh (that path)"),
    # R38 and later: l4t_initrd_flash.sh's own check_prerequisite wants xmlstarlet in every
    # mode and zstd but for --flash-only (an R38/R39 tree, NVIDIA's copyright 2021-2026
    # with Thor's layouts: Seeed-Studio/Linux_for_Tegra 06119ad); R36 needs neither, but
    # one table per stage keeps `builder doctor` the same for both lines
    Tool("xmlstarlet", "xmlstarlet", "l4t_initrd_flash.sh's prerequisite check (R38+)"),
    Tool("zstd", "zstd", "l4t_initrd_flash.sh's prerequisite check (R38+)"),
)
# what `l4t_initrd_flash.sh --flash-only` checks (no abootimg: _internal.sh:99; no zstd)
L4T_FLASH_TOOLS = tuple(t for t in L4T_HOST_TOOLS
                        if t.command in ("sshpass", "exportfs", "xmlstarlet"))


def jetpack_packages(release: str, stack: tuple[str, ...]) -> tuple[str, ...]:
    table = L4T_RELEASES[release].packages
    return tuple(dict.fromkeys(name for need in stack for name in table[need]))


Loc = tuple[str | int, ...]
INITRD_FLASH = "./tools/kernel_flash/l4t_initrd_flash.sh"


def release_tuple(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in release.split("."))


class JetPackApt(_Section):
    url: AptUrl = Field(JETSON_REPO, description="NVIDIA's Jetson apt repository, whose "
                     "common/ repository and the BSP's (t234/ for L4T 36, som/ for 39; "
                     "suite r<L4T major.minor>) hold JetPack's CUDA, cuDNN and TensorRT: "
                     "NVIDIA's, a lab mirror, or a local directory laid out the same (path "
                     "or file://).")
    keyring: str | None = Field(
        None, description="The OpenPGP key that signs it (jetson-ota-public.asc), relative "
        "to the profile file; default: the one NVIDIA's BSP puts into the rootfs "
        "(/etc/apt/trusted.gpg.d/jetson-ota-public.asc).")
    packages: list[DebPackage] = Field(
        default_factory=list, description="More packages from it (e.g. nvidia-vpi, or "
        "nvidia-jetpack for all of JetPack); what the engine needs (CUDA runtime, cuDNN, "
        "TensorRT, the CUDA toolkit where llama.cpp is built on the device) is installed "
        "anyway.")
    device_url: AptUrl | None = Field(
        None, description="The repository the device's own apt uses (updates); default: "
        "url when it is http(s), else NVIDIA's.")


class JetsonSettings(TargetSettings):
    module: Literal[tuple(MODULES)] = Field(  # type: ignore[valid-type]
        ..., description="The Orin module: decides the devkit board config flashed, the USB "
        "id of the board in recovery mode and the memory (device.ram must match it).")
    module_sku: str | None = Field(
        None, pattern=r"^[0-9]{4}$", description="The module's SKU (BOARDSKU; the "
        "module's label, or `cat /proc/device-tree/...` on a running board): Orin Nano 8GB "
        "is 0003, or 0005 on the developer kit; default: the module's first.")
    chip_sku: str | None = Field(
        None, pattern=r"^00:00:00:D[0-9A-F]$", description="CHIP_SKU for offline flash "
        "generation (NVIDIA's offline flashing guides): it picks the boot firmware (Orin "
        "Nano D5/D6 TE950M, Orin NX D3/D4 TE980M); default: the module SKU's.")
    super_board: bool = Field(
        False, description="Flash JetPack 6.2's Super board config "
        "(jetson-orin-nano-devkit-super: higher clocks and the MAXN_SUPER power mode) on "
        "an Orin Nano or NX developer kit; needs l4t_release 36.4.3 or later.")
    l4t_release: Literal[tuple(L4T_RELEASES)] = Field(  # type: ignore[valid-type]
        "36.4.3", description="Jetson Linux (L4T) release of the BSP and sample rootfs "
        "(36.4.0 is JetPack 6.1, 36.4.3 JetPack 6.2: Ubuntu 22.04, CUDA 12.6; 39.2.0 is "
        "JetPack 7.2, 39.2.1 JetPack 7.2.1: Ubuntu 24.04, CUDA 13.2); the BSP you supply "
        "must be this one, and os.suite its Ubuntu's (jammy, noble).")
    bsp: PinnedFile = Field(default_factory=PinnedFile, description="NVIDIA's BSP, "
                         "Jetson_Linux_R<release>_aarch64.tbz2.")
    sample_rootfs: PinnedFile = Field(default_factory=PinnedFile, description="NVIDIA's sample "
                                   "rootfs, Tegra_Linux_Sample-Root-Filesystem_R<release>_"
                                   "aarch64.tbz2 (Ubuntu 22.04 for L4T 36, 24.04 for 39).")
    jetpack: JetPackApt = Field(default_factory=JetPackApt, description="Where JetPack's "
                                "runtime comes from (NVIDIA's apt repository): installed "
                                "into the image at build time, the device needs no "
                                "network.")
    power_mode: int | str | None = Field(
        None, description="nvpmodel mode set at every boot, then jetson_clocks: its id or "
        "name as the module's nvpmodel names it (AGX Orin 64GB: 0 MAXN, 1 15W, 2 30W, 3 "
        "50W; Orin Nano 8GB: 0 15W, 1 7W, with super_board 0 15W, 1 25W, 2 MAXN_SUPER, 3 "
        "7W); none: the module's default, clocks not pinned.")
    massflash: int | None = Field(
        None, ge=2, le=20, description="Also make a massflash package for a bench of this "
        "many boards (`builder flash --massflash N`).")

    @property
    def jetpack_version(self) -> str:
        return L4T_RELEASES[self.l4t_release].jetpack

    @property
    def release(self) -> l4t.L4tRelease:
        return L4T_RELEASES[self.l4t_release]

    @property
    def board(self) -> str:
        return SUPER_BOARD if self.super_board else MODULES[self.module].board

    @property
    def sku(self) -> str:
        return self.module_sku or MODULES[self.module].skus[0]

    @property
    def chip(self) -> str:
        return self.chip_sku or MODULES[self.module].chip_skus.get(
            self.sku, next(iter(MODULES[self.module].chip_skus.values())))

    def power_mode_id(self) -> int | None:
        """The power mode's nvpmodel id (a name looked up in the module's modes)."""
        if self.power_mode is None:
            return None
        for mode_id, name in MODULES[self.module].modes(self.super_board, self.l4t_release):
            if str(self.power_mode).upper() in (str(mode_id), name):
                return mode_id
        return None

    @property
    def apt_suite(self) -> str:
        major, minor = self.l4t_release.split(".")[:2]
        return f"r{major}.{minor}"


class JetsonOrin(Target):
    name = "jetson-orin"
    description = "NVIDIA Jetson Orin, L4T/JetPack, TensorRT-LLM or llama.cpp (CUDA sm_87)"
    section = "jetson"
    settings = JetsonSettings
    arches = ("arm64",)
    os_bases = ("l4t",)
    storage_kinds = ("emmc", "nvme")
    accelerators = ("cuda",)
    vendor_inputs = (
        VendorInput("l4t_bsp", "l4t-bsp", "Jetson Linux BSP tarball "
                    "(Jetson_Linux_R<release>_aarch64.tbz2) instead of jetson.bsp.path."),
        VendorInput("l4t_rootfs", "l4t-rootfs", "Jetson Linux sample root filesystem "
                    "tarball (Tegra_Linux_Sample-Root-Filesystem_*.tbz2) instead of "
                    "jetson.sample_rootfs.path."),
    )
    flash_methods = (FlashMethod("jetson-recovery", writes="flash-package", writer=False,
                                 description="NVIDIA's l4t_initrd_flash.sh over USB, the "
                                 "board in recovery mode"),)
    roles_dir = Path(__file__).parent / "roles"
    roles = ("jetson",)

    def platform(self, p: Profile) -> Platform:
        cc = p.device.accelerator.compute_capability or "8.7"
        return Platform(arch="arm64", gnu_triplet="aarch64-linux-gnu", arm_arch=A78AE,
                        gpu="cuda", gpu_arch=cc.replace(".", ""), gpu_devices=GPU_DEVICES,
                        gpu_groups=("video", "render"),
                        cpu_features=frozenset({"neon", "dotprod", "fp16"}),
                        build_on_device=True, cuda=self.settings_of(p).release.cuda)

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        s = self.settings_of(p)
        m = MODULES[s.module]
        out: list[tuple[Loc, str]] = []
        line = s.release.line
        if p.os.suite != line.suite:  # the sample rootfs decides it; the profile says it
            out.append((("os", "suite"), f"L4T {s.l4t_release}'s sample rootfs is Ubuntu "
                        f"{line.ubuntu}: {line.suite}, not {p.os.suite}"))
        if p.device.ram != m.ram:
            out.append((("device", "ram"), f"the {s.module} module has {m.ram // GiB}GiB, "
                        f"not {p.device.ram / GiB:g}GiB"))
        if p.device.storage.kind == "emmc" and m.qspi:
            out.append((("device", "storage", "kind"), f"the {s.module} has no eMMC: nvme"))
        if p.swap.kind != "none":
            out.append((("swap", "kind"), "L4T's nvzramconfig already makes zram swap on a "
                        "Jetson: none"))
        if s.module_sku and s.module_sku not in m.skus:
            out.append((("jetson", "module_sku"), f"the {s.module} module is SKU "
                        f"{' or '.join(m.skus)}, not {s.module_sku}"))
        if s.super_board and not m.super_modes:
            out.append((("jetson", "super_board"), f"the {s.module} has no Super board "
                        "config (Orin Nano and Orin NX developer kits only): false"))
        elif s.super_board and release_tuple(s.l4t_release) < SUPER_SINCE:
            out.append((("jetson", "super_board"), "the Super board config came with "
                        f"JetPack 6.2: l4t_release 36.4.3 or later, not {s.l4t_release}"))
        if s.power_mode is not None and s.power_mode_id() is None:
            modes = ", ".join(f"{i} {n}" for i, n in m.modes(s.super_board, s.l4t_release))
            out.append((("jetson", "power_mode"), f"the {s.module}"
                        f"{' (Super board config)' if s.super_board else ''} has nvpmodel "
                        f"modes {modes}; not {s.power_mode}"))
        return out

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("image", "engine-arm64", "jetson")

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        # what NVIDIA's scripts check or use before they make anything: the test suite
        # runs their stand-ins, which check the same (tests/fakes/jetson)
        return {"engine-arm64": ARM64_TOOLS, "jetson": L4T_HOST_TOOLS,
                "jetson-flash": L4T_FLASH_TOOLS, "test": L4T_HOST_TOOLS}

    # --- the rootfs --------------------------------------------------------------------
    def _input(self, ctx: BuildContext, key: str, field: str, flag: str) -> tuple[Path,
                                                                                 str | None]:
        given = ctx.vendor_inputs.get(key)
        t = getattr(self.settings_of(ctx.p), field)
        if given is not None:
            return given, None
        if not t.path:
            raise BuilderError(f"{flag}: give NVIDIA's {field.replace('_', ' ')} tarball "
                               f"(or jetson.{field}.path in the profile); see docs/orin.md")
        base = ctx.device.source.dir_of("jetson", field, "path")
        return base / Path(t.path).expanduser(), t.sha256

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        p = ctx.p
        s = self.settings_of(p)
        bsp, bsp_sha = self._input(ctx, "l4t_bsp", "bsp", "--l4t-bsp")
        sample, sample_sha = self._input(ctx, "l4t_rootfs", "sample_rootfs", "--l4t-rootfs")
        jetpack = (*jetpack_packages(s.l4t_release,
                                     ctx.engine.gpu_stack(p, ctx.device.platform)),
                   *s.jetpack.packages)
        return l4t.build(l4t.L4tSpec(
            bsp=bsp, sample_rootfs=sample, release=s.l4t_release, admin_user=p.os.admin_user,
            hostname=ctx.name, bsp_sha256=bsp_sha, rootfs_sha256=sample_sha,
            arch="arm64", qemu="aarch64",
            packages=[*role_packages(), *ctx.engine.rootfs_packages(p), *p.os.packages],
            jetpack=self._jetpack(ctx), jetpack_packages=tuple(dict.fromkeys(jetpack)),
            software=ctx.engine.offline_install(ctx.device)), ctx.cache)

    def _jetpack(self, ctx: BuildContext) -> l4t.JetPackRepo:
        s = self.settings_of(ctx.p)
        a, suite, repos = s.jetpack, s.apt_suite, s.release.line.repos
        src = ctx.device.source
        url = a.url.rstrip("/")
        if "://" not in url:  # a local directory, relative to the profile file
            url = str((src.dir_of("jetson", "jetpack", "url") / Path(url).expanduser())
                      .resolve())
            missing = [r for r in repos
                       if not (Path(url) / r / "dists" / suite / "Release").is_file()]
            if missing:
                raise BuilderError(
                    f"{src.where(('jetson', 'jetpack', 'url'))}: jetson.jetpack.url: "
                    f"{display_path(Path(url))} has no {', '.join(missing)}/dists/"
                    f"{suite}/Release: mirror NVIDIA's {' and '.join(repos)} "
                    "repositories there, as repo.download.nvidia.com/jetson lays them out")
        device_url = a.device_url or (url if url.startswith("http") else JETSON_REPO)
        keyring = (src.dir_of("jetson", "jetpack", "keyring") / Path(a.keyring).expanduser()
                   if a.keyring else None)
        if keyring is not None and not keyring.is_file():
            raise BuilderError(f"{src.where(('jetson', 'jetpack', 'keyring'))}: "
                               f"jetson.jetpack.keyring: {display_path(keyring)} does not "
                               "exist")
        return l4t.JetPackRepo(url=url, device_url=device_url.rstrip("/"), suite=suite,
                               keyring=keyring, repos=repos)

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        from ...planner import build_budget

        s = self.settings_of(ctx.p)
        mode = s.power_mode_id()
        return {"jetson_power_mode": -1 if mode is None else mode,
                "base_fstrim": ctx.p.device.storage.kind == "nvme",
                # the engine built on the board (edge-llm-engine-build.service): what it
                # may take, in memory (the planner's build budget) and in time
                "inference_build_memory_max": build_budget(ctx.p),
                "inference_build_timeout": ctx.engine.start_timeout(ctx.p)}

    # --- the flash package ---------------------------------------------------------------
    def flash_args(self, p: Profile) -> list[str]:
        """l4t_initrd_flash.sh's arguments for this module and boot medium (after
        --no-flash / before the board), as NVIDIA's quick start gives them: an AGX Orin on
        NVMe is flashed `... jetson-agx-orin-devkit external` (R36's README_initrd_flash.txt
        and quick start; with `internal` the rootfs goes to its eMMC as well). R39.2 gets
        R36's: no R39.2 Linux_for_Tegra tree was readable to check them against; its
        quick start's table, as a public notes file copies it (index id 71463872784),
        keeps the board config names, the NVMe layout and `external` for an AGX on NVMe
        (docs/orin.md)."""
        s = self.settings_of(p)
        m = MODULES[s.module]
        args: list[str] = []
        rootdev = "internal"
        if p.device.storage.kind == "nvme":
            args += ["--external-device", "nvme0n1p1", "-c",
                     "tools/kernel_flash/flash_l4t_t234_nvme.xml"]
            if m.qspi:  # Orin NX/Nano: QSPI is the "internal" device, the rootfs on NVMe
                args += ["-p", "-c bootloader/generic/cfg/flash_t234_qspi.xml"]
            else:  # AGX: "internal" is its eMMC, which would get the rootfs too
                rootdev = "external"
        args += ["--showlogs", "--network", "usb0", s.board, rootdev]
        return args

    def flash_env(self, p: Profile) -> dict[str, str]:
        """What offline generation (no board attached) is told about the module, as
        NVIDIA's offline flashing guides set it: CHIP_SKU too, without which
        p3767.conf.common assumes an Orin NX chip (D3) and packs its boot firmware."""
        s = self.settings_of(p)
        m = MODULES[s.module]
        return {"BOARDID": m.board_id, "BOARDSKU": s.sku, "FAB": m.fab, "CHIP_SKU": s.chip,
                "USER": "root"}

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        s = self.settings_of(p)
        env = " ".join(f"{k}={v}" for k, v in self.flash_env(p).items())
        generate = [INITRD_FLASH, "--no-flash",
                    *(["--massflash", str(s.massflash)] if s.massflash else []),
                    *self.flash_args(p)]
        return {"l4t-flash.sh": f"# build (offline, no board): in Linux_for_Tegra\n"
                                f"{env} {shlex.join(generate)}\n"
                                f"# builder flash: from the package\n"
                                f"USER=root {shlex.join([INITRD_FLASH, '--flash-only'])}\n"}

    def assemble(self, ctx: BuildContext) -> Delivery:
        assert ctx.rootfs_dir and ctx.work
        p, s = ctx.p, self.settings_of(ctx.p)
        out = ctx.work / "out"
        out.mkdir(exist_ok=True)
        log_file = ctx.logs / "l4t-flash.log"
        bsp, _ = self._input(ctx, "l4t_bsp", "bsp", "--l4t-bsp")
        stage = ctx.work / "l4t"
        stage.mkdir()
        tree = l4t.unpack_bsp(bsp, stage, s.l4t_release, log_file)
        rootfs = tree / "rootfs"
        if rootfs.is_dir():  # the BSP's placeholder (a README): the appliance goes there
            shutil.rmtree(rootfs)
        os.replace(ctx.rootfs_dir, rootfs)  # the provisioned tree, same filesystem
        ctx.rootfs_dir = rootfs
        cmd = [INITRD_FLASH, "--no-flash",
               *(["--massflash", str(s.massflash)] if s.massflash else []),
               *self.flash_args(p)]
        with step(f"generating the flash package (l4t_initrd_flash.sh --no-flash, "
                  f"{s.board})") as line:
            text = run(cmd, cwd=tree, env=self.flash_env(p), log_file=log_file, on_line=line,
                       what="l4t_initrd_flash.sh --no-flash")
            if "Success" not in text:
                raise BuilderError("l4t_initrd_flash.sh --no-flash ended without 'Success' "
                                   f"(log: {display_path(log_file)})")
            package = out / PACKAGE
            run(["tar", "--numeric-owner", "--zstd", "-cpf", package, "-C", stage,
                 "Linux_for_Tegra"], what="packing the flash package", log_file=log_file)
        files = {"package": package}
        (out / "flashcmd.txt").write_text((tree / "bootloader/flashcmd.txt").read_text())
        files["flashcmd"] = out / "flashcmd.txt"
        mfi = tree / f"mfi_{s.board}.tar.gz"
        if s.massflash and mfi.is_file():
            os.replace(mfi, out / mfi.name)
            files["massflash"] = out / mfi.name
        return Delivery("flash-package", files, sha256=sha256_file(package),
                        size=package.stat().st_size,
                        info={"module": s.module, "board": s.board, "module_sku": s.sku,
                              "chip_sku": s.chip,
                              "usb_product": f"{NVIDIA_USB}:{MODULES[s.module].usb_product}",
                              "l4t_release": s.l4t_release, "massflash": s.massflash})

    # --- flashing ------------------------------------------------------------------------
    def flash(self, build_dir: Path, manifest: dict[str, Any], built: Profile | None,
              request: Any) -> str:
        d = manifest.get("delivery") or {}
        if d.get("kind") != "flash-package":
            raise BuilderError(f"{display_path(build_dir)}: no flash package in this build")
        if request.device or request.to_file or request.force_fixed:
            raise BuilderError("a Jetson is flashed over USB in recovery mode: no --device, "
                               "--to-file or --force-fixed")
        if built is None:
            raise BuilderError(f"{display_path(build_dir / 'manifest.json')}: names no "
                               "profile it was built from; build again")
        p = built
        module = d["module"]
        if not request.dry_run:  # NVIDIA's script checks them before it flashes
            doctor.require("jetson-flash")
        if request.no_package and (request.massflash or 1) > 1:
            # generating and flashing in one run takes one board: the real script refuses
            # more without --flash-only (l4t_initrd_flash.sh, R36)
            raise BuilderError("--no-package flashes one board at a time (NVIDIA's "
                               "l4t_initrd_flash.sh generates and flashes one); flash "
                               f"{request.massflash} from the package: --massflash "
                               f"{request.massflash} without --no-package")
        if request.massflash and request.massflash > (d.get("massflash") or 1):
            raise BuilderError(f"--massflash {request.massflash}: the package was made for "
                               f"{d.get('massflash') or 1} board(s); set jetson.massflash: "
                               f"{request.massflash} and build again")
        boards = recovery_boards(sysfs_root())
        want = MODULES[module].usb_product
        if not boards:
            running = [b for b in usb_devices(sysfs_root()) if b[1] == RUNNING_PRODUCT]
            raise BuilderError(
                "no Jetson in recovery mode" + (" (one is connected but booted normally)"
                                                if running else "")
                + f": hold REC (force recovery), press and release RESET, then release REC; "
                f"`lsusb` then shows {NVIDIA_USB}:{want}")
        wrong = [(port, prod) for port, prod in boards if prod != want]
        if wrong:
            port, prod = wrong[0]
            other = MODULE_OF_PRODUCT.get(prod, f"product {prod}")
            raise BuilderError(f"the board in recovery mode on USB {port} is a {other} "
                               f"({NVIDIA_USB}:{prod}); this build is for {module} "
                               f"({NVIDIA_USB}:{want}): flash it with its own profile")
        limit = request.massflash or 1
        if len(boards) > limit:
            raise BuilderError(f"{len(boards)} boards in recovery mode; flash one at a time, "
                               f"or all of them with --massflash {len(boards)}"
                               + (" (without --no-package)" if request.no_package else ""))
        generate = [*self.flash_args(p)] if request.no_package else None
        return flash_package(build_dir, d, request, len(boards), generate, self.flash_env(p))


def sysfs_root() -> Path:
    return Path(os.environ.get("EDGE_LLM_SYSFS", "/sys"))


def usb_devices(sysfs: Path) -> list[tuple[str, str]]:
    """(port, product id) of every USB device of NVIDIA's, as the kernel lists them."""
    found = []
    for dev in sorted((sysfs / "bus/usb/devices").glob("*")):
        try:
            vendor = (dev / "idVendor").read_text().strip()
            product = (dev / "idProduct").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_USB:
            found.append((dev.name, product))
    return found


def recovery_boards(sysfs: Path) -> list[tuple[str, str]]:
    """Orin boards in recovery mode (APX): (port, product id)."""
    return [b for b in usb_devices(sysfs) if b[1] in MODULE_OF_PRODUCT]


# what l4t_initrd_flash.sh says when it fails, and what to do about it
KNOWN_FAILURES = (
    ("No devices to flash", "no board in recovery mode was found by the flash tool: check "
     "the USB cable (a data cable, the devkit's USB-C), recovery mode and `lsusb`"),
    ("Too many devices in RCM mode", "more boards in recovery mode than the package "
     "flashes at once: use --massflash N"),
    ("Error, too many devices in RCM mode", "generating and flashing in one run takes one "
     "board: flash several from the package with --massflash N"),
    ("not found! To install", "a host tool NVIDIA's script needs is missing: builder "
     "doctor --install --stage jetson"),
    ("Could not stat device /dev/nvme", "the board has no NVMe drive the flashing initrd "
     "can see: seat the SSD, or build for storage.kind emmc"),
    ("Device ping failed", "the board did not come up in the flashing initrd over USB: keep "
     "it on a direct USB port (no hub), stop udisks2 on this host, read the board's serial "
     "console log"),
    ("Waiting for target to boot-up", "the board did not come up in the flashing initrd "
     "over USB: keep it on a direct USB port (no hub), stop udisks2 on this host "
     "(systemctl stop udisks2), read the board's serial console log"),
    ("Waiting for device to expose ssh", "the flashing initrd came up but never answered "
     "SSH over USB networking: check the host's firewall for usb0 and NFS"),
)


def explain(output: str) -> str:
    for marker, advice in KNOWN_FAILURES:
        if marker in output:
            return advice
    return "read the log"


def flash_package(build_dir: Path, d: dict[str, Any], request: Any, boards: int,
                  generate: list[str] | None, env: dict[str, str]) -> str:
    """Run l4t_initrd_flash.sh from the build's package: --flash-only with the images it
    holds, or (`generate`: --no-package) the whole generate-and-flash in its tree."""
    package = build_dir / d["files"]["package"]
    stamp = time.strftime("%Y%m%dT%H%M%S")
    logs = build_dir / "flash-logs"
    logs.mkdir(exist_ok=True)
    log_file = logs / f"{stamp}.log"
    many = ["--massflash", str(request.massflash)] if request.massflash else []
    flash_cmd = ([INITRD_FLASH, *many, *generate] if generate is not None
                 else [INITRD_FLASH, "--flash-only", *many])
    if request.dry_run:
        request.say(f"would unpack {package.name} and, in its Linux_for_Tegra, run:")
        request.say(f"  {' '.join(f'{k}={v}' for k, v in env.items())} "
                    f"{shlex.join(flash_cmd)}")
        request.say(f"  (boards in recovery mode now: {boards}; log: {display_path(log_file)})")
        return "(dry run)"
    work = build_dir / f".flash-{os.getpid()}"
    subprocess.run(["rm", "-rf", str(work)], check=False)
    work.mkdir()
    # with --massflash N, N != 1, the script writes each board's output only to
    # initrdlog/flash_<usb port>_<instance>_<time>.log and ends with exit 0, or with
    # "Flash complete (WITH FAILURES)" and exit 1 (l4t_initrd_flash.sh, R36.2: 163-263)
    per_board = (request.massflash or 1) != 1
    try:
        run(["tar", "--numeric-owner", "--zstd", "-xpf", package, "-C", work],
            what=f"unpacking {package.name}", log_file=log_file)
        tree = work / "Linux_for_Tegra"
        failed: ToolError | None = None
        with step(f"flashing {boards} board(s) (l4t_initrd_flash.sh)") as line:
            try:
                text = run(flash_cmd, cwd=tree, env=env, log_file=log_file, on_line=line,
                           what="l4t_initrd_flash.sh")
            except ToolError as e:
                failed, text = e, ""
        board_logs = {}
        for board_log in sorted((tree / "initrdlog").glob("*.log")):
            kept = logs / f"{stamp}-{board_log.name}"
            kept.write_text(board_log.read_text(errors="replace"))
            board_logs[board_log.name] = kept
        bad = [name for name, kept in board_logs.items()
               if "Flash is successful" not in kept.read_text()] if per_board else []
        if failed is not None or (per_board and (bad or len(board_logs) != boards)):
            said = "\n".join(f.read_text(errors="replace")
                             for f in [log_file, *board_logs.values()])
            which = (f" on {', '.join(n.split('_')[1] for n in bad)}" if bad else "")
            raise BuilderError(
                f"flashing failed{which} (l4t_initrd_flash.sh, step flash): "
                f"{explain(said)} (log: {display_path(log_file)}"
                + (f", boards' logs: {display_path(logs)}/{stamp}-flash_*.log"
                   if board_logs else "") + ")")
        if not per_board and "Flash is successful" not in text:
            raise BuilderError("l4t_initrd_flash.sh ended without 'Flash is successful' "
                               f"(log: {display_path(log_file)})")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    return f"{boards} board(s) in recovery mode (log: {display_path(log_file)})"


TARGET = JetsonOrin()
