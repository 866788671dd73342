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
from ...schema import Profile, TargetSettings, _Section
from ...units import GiB
from . import l4t

if TYPE_CHECKING:
    from ...contracts import BuildContext


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
    qspi: bool  # boots from QSPI (Orin NX/Nano): -p "-c .../flash_t234_qspi.xml"


# L4T r36 (tools/kernel_flash/README_initrd_flash.txt, l4t_initrd_flash.sh fill_devpaths)
MODULES: dict[str, Module] = {
    "agx-orin-64gb": Module("jetson-agx-orin-devkit", "7023", 64 * GiB, 12, "3701", "0005",
                            "500", qspi=False),
    "agx-orin-32gb": Module("jetson-agx-orin-devkit", "7223", 32 * GiB, 8, "3701", "0004",
                            "TS4", qspi=False),
    "orin-nx-16gb": Module("jetson-orin-nano-devkit", "7323", 16 * GiB, 8, "3767", "0000",
                           "300", qspi=True),
    "orin-nx-8gb": Module("jetson-orin-nano-devkit", "7423", 8 * GiB, 6, "3767", "0001",
                          "300", qspi=True),
    "orin-nano-8gb": Module("jetson-orin-nano-devkit", "7523", 8 * GiB, 6, "3767", "0003",
                            "300", qspi=True),
    "orin-nano-4gb": Module("jetson-orin-nano-devkit", "7623", 4 * GiB, 6, "3767", "0004",
                            "300", qspi=True),
}
MODULE_OF_PRODUCT = {m.usb_product: name for name, m in MODULES.items()}
NVIDIA_USB = "0955"
RUNNING_PRODUCT = "7020"  # a Jetson booted normally (not in recovery mode)
# Jetson Linux releases this builder knows, and the JetPack each belongs to.
L4T_RELEASES = {"36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2"}
A78AE = "armv8.2-a+dotprod+fp16"
# What a CUDA process opens on L4T r36 (nvgpu, nvmap, host1x syncpoints, the render
# node): OE4T meta-tegra's devices.csv for the container runtime, plus /dev/nvhost-ctrl
# and the DRM render node JetPack 6 needs. systemd skips a listed node that is absent.
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
Loc = tuple[str | int, ...]
INITRD_FLASH = "./tools/kernel_flash/l4t_initrd_flash.sh"


class Tarball(_Section):
    path: str | None = Field(None, description="Path on the build host, relative to the "
                             "profile file (or the --l4t-* flag).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="Its sha256; the build refuses other bytes.")


class JetsonSettings(TargetSettings):
    module: Literal[tuple(MODULES)] = Field(  # type: ignore[valid-type]
        ..., description="The Orin module: decides the devkit board config flashed, the USB "
        "id of the board in recovery mode and the memory (device.ram must match it).")
    l4t_release: Literal[tuple(L4T_RELEASES)] = Field(  # type: ignore[valid-type]
        "36.4.3", description="Jetson Linux (L4T) release of the BSP and sample rootfs "
        "(36.4.0 is JetPack 6.1, 36.4.3 JetPack 6.2); the BSP you supply must be this one.")
    bsp: Tarball = Field(default_factory=Tarball, description="NVIDIA's BSP, "
                         "Jetson_Linux_R<release>_aarch64.tbz2.")
    sample_rootfs: Tarball = Field(default_factory=Tarball, description="NVIDIA's sample "
                                   "rootfs, Tegra_Linux_Sample-Root-Filesystem_R<release>_"
                                   "aarch64.tbz2 (Ubuntu 22.04).")
    power_mode: int | None = Field(
        None, ge=0, description="nvpmodel mode set at every boot, then jetson_clocks "
        "(AGX Orin: 0 MAXN, 1 15W, 2 30W, 3 50W; Orin Nano Super: 0 15W, 1 25W, 2 "
        "MAXN_SUPER); none: the module's default, clocks not pinned.")
    massflash: int | None = Field(
        None, ge=2, le=20, description="Also make a massflash package for a bench of this "
        "many boards (`builder flash --massflash N`).")

    @property
    def jetpack(self) -> str:
        return L4T_RELEASES[self.l4t_release]


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
                    "(Jetson_Linux_R36.x_aarch64.tbz2) instead of jetson.bsp.path."),
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
                        build_on_device=True)

    def problems(self, p: Profile) -> list[tuple[Loc, str]]:
        s = self.settings_of(p)
        m = MODULES[s.module]
        out: list[tuple[Loc, str]] = []
        if p.device.ram != m.ram:
            out.append((("device", "ram"), f"the {s.module} module has {m.ram // GiB}GiB, "
                        f"not {p.device.ram / GiB:g}GiB"))
        if p.device.storage.kind == "emmc" and m.qspi:
            out.append((("device", "storage", "kind"), f"the {s.module} has no eMMC: nvme"))
        if p.swap.kind != "none":
            out.append((("swap", "kind"), "L4T's nvzramconfig already makes zram swap on a "
                        "Jetson: none"))
        return out

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("image", "engine-arm64")

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        return {"engine-arm64": ARM64_TOOLS,
                "image": (Tool("bzip2", "bzip2", "NVIDIA's .tbz2 BSP and sample rootfs"),)}

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
        return l4t.build(l4t.L4tSpec(
            bsp=bsp, sample_rootfs=sample, release=s.l4t_release, admin_user=p.os.admin_user,
            hostname=ctx.name, bsp_sha256=bsp_sha, rootfs_sha256=sample_sha,
            arch="arm64", qemu="aarch64",
            packages=[*role_packages(), *ctx.engine.rootfs_packages(p), *p.os.packages]),
            ctx.cache)

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        from ...planner import build_budget

        s = self.settings_of(ctx.p)
        return {"jetson_power_mode": -1 if s.power_mode is None else s.power_mode,
                "base_fstrim": ctx.p.device.storage.kind == "nvme",
                # the engine built on the board (edge-llm-engine-build.service): what it
                # may take, in memory (the planner's build budget) and in time
                "inference_build_memory_max": build_budget(ctx.p),
                "inference_build_timeout": ctx.engine.start_timeout(ctx.p)}

    # --- the flash package ---------------------------------------------------------------
    def flash_args(self, p: Profile) -> list[str]:
        """l4t_initrd_flash.sh's arguments for this module and boot medium (after
        --no-flash / before the board), as NVIDIA's quick start gives them."""
        m = MODULES[self.settings_of(p).module]
        args: list[str] = []
        if p.device.storage.kind == "nvme":
            args += ["--external-device", "nvme0n1p1", "-c",
                     "tools/kernel_flash/flash_l4t_t234_nvme.xml"]
            if m.qspi:
                args += ["-p", "-c bootloader/generic/cfg/flash_t234_qspi.xml"]
        args += ["--showlogs", "--network", "usb0", m.board, "internal"]
        return args

    def flash_env(self, p: Profile) -> dict[str, str]:
        """What offline generation (no board attached) is told about the module."""
        m = MODULES[self.settings_of(p).module]
        return {"BOARDID": m.board_id, "BOARDSKU": m.board_sku, "FAB": m.fab, "USER": "root"}

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
                  f"{MODULES[s.module].board})") as line:
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
        mfi = tree / f"mfi_{MODULES[s.module].board}.tar.gz"
        if s.massflash and mfi.is_file():
            os.replace(mfi, out / mfi.name)
            files["massflash"] = out / mfi.name
        return Delivery("flash-package", files, sha256=sha256_file(package),
                        size=package.stat().st_size,
                        info={"module": s.module, "board": MODULES[s.module].board,
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
                               f"or all of them with --massflash {len(boards)}")
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
    try:
        run(["tar", "--numeric-owner", "--zstd", "-xpf", package, "-C", work],
            what=f"unpacking {package.name}", log_file=log_file)
        tree = work / "Linux_for_Tegra"
        with step(f"flashing {boards} board(s) (l4t_initrd_flash.sh)") as line:
            try:
                text = run(flash_cmd, cwd=tree, env=env, log_file=log_file, on_line=line,
                           what="l4t_initrd_flash.sh")
            except ToolError:
                raise BuilderError(
                    f"flashing failed (l4t_initrd_flash.sh, step flash): "
                    f"{explain(log_file.read_text(errors='replace'))} "
                    f"(log: {display_path(log_file)})") from None
        for board_log in (tree / "initrdlog").glob("*.log"):
            (logs / f"{stamp}-{board_log.name}").write_text(board_log.read_text())
        if boards == 1 and "Flash is successful" not in text:
            raise BuilderError("l4t_initrd_flash.sh ended without 'Flash is successful' "
                               f"(log: {display_path(log_file)})")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    return f"{boards} board(s) in recovery mode (log: {display_path(log_file)})"


TARGET = JetsonOrin()
