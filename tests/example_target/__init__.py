"""An example target, outside the builder: everything a new hardware family supplies,
in one package (plus a profile). `tests/test_example_target.py` loads it through
EDGE_LLM_TARGETS and drives the real commands with it, which proves that adding a
family touches nothing else.

The "example board" comes in two architectures (amd64, arm64) and its vendor flashes a
root filesystem archive itself, from a flashing share: a build takes the Debian rootfs
(for amd64 the same one an x86 gateway gets, so the test shares that cached tree), the
vendor's firmware blob when given (--board-firmware), applies the board's own Ansible
role (roles/example_board) after the shared ones, and delivers the provisioned tree as
a .tar.zst that `builder flash` (and a lab's `flash: share`) copies to the share. In a
VM it would boot as a UEFI x86 machine (vm_machine), from a disk image the vendor's
tools make of the archive.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from builder.cache import sha256_file
from builder.contracts import (
    ARM64_TOOLS,
    Delivery,
    FlashMethod,
    Platform,
    Target,
    Tool,
    VendorInput,
)
from builder.errors import BuilderError, display_path
from builder.rootfs import Rootfs, debian
from builder.run import run
from builder.schema import Profile, TargetSettings

if TYPE_CHECKING:
    from builder.contracts import BuildContext
    from builder.vm import Machine

FIRMWARE = "boot/firmware/board.bin"  # where the board's boot ROM looks, in the rootfs
OVMF = Path("/usr/share/OVMF/OVMF_CODE.fd")


class ExampleSettings(TargetSettings):
    archive_name: str = Field("rootfs.tar.zst", description="Name of the delivered archive.",
                              pattern=r"^[A-Za-z0-9._-]+\.tar\.zst$")


class ExampleBoard(Target):
    name = "example-board"
    description = "An example board: x86-64 or arm64, a rootfs archive"
    section = "example"
    settings = ExampleSettings
    arches = ("amd64", "arm64")
    os_bases = ("debian",)
    storage_kinds = ("emmc",)
    vendor_inputs = (VendorInput("board_firmware", "board-firmware", "example-board: the "
                                 "board vendor's firmware blob, put into the archive's "
                                 f"/{FIRMWARE}."),)
    flash_methods = (FlashMethod("share", writes="rootfs-archive", writer=True,
                                 description="the rootfs archive copied to the board "
                                 "vendor's flashing share (writer: its directory)"),)
    roles_dir = Path(__file__).parent / "roles"
    roles = ("example_board",)

    def platform(self, p: Profile) -> Platform:
        if p.device.arch == "arm64":
            return Platform(arch="arm64", gnu_triplet="aarch64-linux-gnu",
                            arm_arch="armv8.2-a+dotprod", cpu_features=frozenset(
                                {"neon", "dotprod"}))
        return Platform(arch="amd64", gnu_triplet="x86_64-linux-gnu",
                        x86_levels=("x86-64-v2", "x86-64-v3"),
                        cpu_features=frozenset({"sse4.2", "avx2"}))

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("engine", *(("engine-arm64",) if p.device.arch == "arm64" else ()), "image")

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        return {"engine-arm64": ARM64_TOOLS}

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        kernel = "linux-image-arm64" if p.device.arch == "arm64" else "linux-image-amd64"
        return (kernel, "initramfs-tools", "systemd-boot-efi")

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        p, pl = ctx.p, ctx.device.platform
        return debian.build(debian.from_profile(p, pl.arch, pl.gnu_triplet,
                                                boot=self.rootfs_packages(p),
                                                runtime=ctx.engine.rootfs_packages(p)),
                            ctx.cache)

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        return {"example_board_archive_name": self.settings_of(ctx.p).archive_name}

    def assemble(self, ctx: BuildContext) -> Delivery:
        assert ctx.rootfs_dir and ctx.work
        info = {}
        firmware = ctx.vendor_inputs.get("board_firmware")
        if firmware is not None:
            if not firmware.is_file():
                raise BuilderError(f"--board-firmware {display_path(firmware)}: no such file")
            dest = ctx.rootfs_dir / FIRMWARE
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(firmware, dest)
            info["firmware_sha256"] = sha256_file(dest)
        out = ctx.work / "out"
        out.mkdir(exist_ok=True)
        archive = out / self.settings_of(ctx.p).archive_name
        run(["tar", "--numeric-owner", "--zstd", "-cf", archive, "-C", ctx.rootfs_dir, "."],
            what="archiving the rootfs", log_file=ctx.logs / "archive.log")
        return Delivery("rootfs-archive", {"archive": archive}, sha256=sha256_file(archive),
                        size=archive.stat().st_size, info=info)

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        return {"archive-name": self.settings_of(p).archive_name + "\n"}

    def flash(self, build_dir: Path, manifest: dict[str, Any], built: Profile | None,
              request: Any) -> str:
        """The archive into the flashing share (request.device, a directory), or to
        --to-file: written beside, checked against the build's sha256, then renamed."""
        d = manifest["delivery"]
        src = build_dir / d["files"]["archive"]
        if bool(request.device) == bool(request.to_file):
            raise BuilderError("say where: --device DIR (the flashing share) or --to-file PATH")
        if request.device and not Path(request.device).is_dir():
            raise BuilderError(f"--device {request.device}: the flashing share is not a "
                               "directory here (mounted?)")
        dest = request.to_file or Path(request.device) / src.name
        if request.to_file and (dest.exists() or dest.is_symlink()) and not request.force:
            raise BuilderError(f"--to-file {display_path(dest)}: already there; add --force "
                               "to replace it")
        if request.dry_run:
            request.say(f"would copy {display_path(src)} to {display_path(dest)}")
            return str(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != d["sha256"]:
            tmp.unlink()
            raise BuilderError(f"{display_path(src)}: not the archive the build made "
                               "(sha256 differs); build again")
        os.replace(tmp, dest)  # replaces a link at dest, never writes through it
        return str(dest)

    def vm_machine(self, build_dir: Path, manifest: dict[str, Any]) -> Machine:
        from builder.vm import Machine

        return Machine(qemu="qemu-system-x86_64", args=(
            "-machine", "q35", "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF}"),
            tcg_cpu="max", kvm=os.uname().machine == "x86_64", files=(OVMF,),
            package="ovmf")


TARGET = ExampleBoard()
