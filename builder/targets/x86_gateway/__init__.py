"""x86-64 gateways and industrial PCs: a Debian rootfs, a UEFI GPT disk image with
systemd-boot, llama.cpp on the CPU.

One image must run on every gateway CPU of a fleet, from an SSE4.2-only Atom to an
AVX2 Core: the llama.cpp CPU backend is built once per x86-64 level and ggml's loader
picks the best one the CPU supports at run time (GGML_BACKEND_DL). Never the build
host's CPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ...contracts import SD_WRITER, Delivery, Platform, Target, Tool
from ...image import Usage, uefi_gpt
from ...rootfs import Rootfs, debian
from ...schema import Profile, TargetSettings
from ...units import MiB, Size

if TYPE_CHECKING:
    from ...contracts import BuildContext, Engine
    from ...vm import Machine

OVMF = Path("/usr/share/ovmf/OVMF.fd")
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"


class X86Settings(TargetSettings):
    cpu_levels: list[Literal["x86-64-v2", "x86-64-v3", "x86-64-v4"]] = Field(
        default_factory=lambda: ["x86-64-v2", "x86-64-v3"], min_length=1,
        description="CPU baselines of the fleet: llama.cpp's CPU backend is built once per "
        "x86-64 level and the best one a gateway's CPU supports is loaded at run time "
        "(v2: SSE4.2, Atom x6000E; v3: AVX2/FMA, Core and Ryzen; v4: AVX-512).")
    kernel_cmdline: str = Field(
        "console=tty0 console=ttyS0,115200n8 quiet",
        description="Kernel command line after root=PARTUUID=... rw (systemd-boot entry).")
    esp_size: Size = Field(256 * MiB, description="Size of the EFI system partition (kernel, "
                           "initrd, systemd-boot).")


class X86Gateway(Target):
    name = "x86-gateway"
    description = "x86-64 gateway / industrial PC, UEFI, llama.cpp on CPU"
    section = "x86"
    settings = X86Settings
    arches = ("amd64",)
    os_bases = ("debian",)
    storage_kinds = ("ssd", "nvme", "emmc", "usb")
    vm_stages = ("vm-x86",)
    flash_methods = (SD_WRITER,)

    def platform(self, p: Profile) -> Platform:
        levels = tuple(self.settings_of(p).cpu_levels)
        avx2 = any(level != "x86-64-v2" for level in levels)
        return Platform(arch="amd64", gnu_triplet="x86_64-linux-gnu", x86_levels=levels,
                        cpu_features=frozenset({"sse4.2", *(("avx2",) if avx2 else ())}))

    def host_stages(self, p: Profile) -> tuple[str, ...]:
        return ("engine", "image")

    def host_tools(self) -> dict[str, tuple[Tool, ...]]:
        return {"vm-x86": (Tool("qemu-system-x86_64", "qemu-system-x86", "boots the image"),
                           Tool("/usr/share/ovmf/OVMF.fd", "ovmf", "its UEFI firmware"))}

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        # Debian's generic kernel (gateway NICs and storage, virtio too), systemd-boot
        return ("linux-image-amd64", "initramfs-tools", "systemd-boot-efi")

    def debian_spec(self, p: Profile, engine: Engine) -> debian.DebianSpec:
        pl = self.platform(p)
        return debian.from_profile(p, pl.arch, pl.gnu_triplet, boot=self.rootfs_packages(p),
                                   runtime=engine.rootfs_packages(p))

    def rootfs(self, ctx: BuildContext) -> Rootfs:
        return debian.build(self.debian_spec(ctx.p, ctx.engine), ctx.cache)

    def role_vars(self, ctx: BuildContext) -> dict[str, Any]:
        return {"base_fstrim": ctx.p.device.storage.kind in ("ssd", "nvme"),
                # each medium gives itself new GPT ids at first boot, the entry following
                "base_renew_disk_ids": True,
                "base_boot_partition": uefi_gpt.ESP_PARTITION,
                "base_boot_cmdline": uefi_gpt.LOADER_ENTRY}

    def layout(self, p: Profile) -> uefi_gpt.UefiLayout:
        s = self.settings_of(p)
        return uefi_gpt.UefiLayout(root_type=uefi_gpt.ROOT_X86_64_TYPE,
                                   efi_loader=SYSTEMD_BOOT, efi_name="BOOTX64.EFI",
                                   kernel_cmdline=s.kernel_cmdline, esp_size=s.esp_size)

    def renderings(self, p: Profile, seed: str) -> dict[str, str]:
        layout = self.layout(p)
        ids = uefi_gpt.GptIds.from_seed(seed)
        example = uefi_gpt.plan_disk(Usage(bytes=1 << 30, inodes=40000), layout)
        return {"loader-entry.conf": uefi_gpt.boot_entry(ids.root_partuuid,
                                                         layout.kernel_cmdline),
                "partitions.sfdisk": uefi_gpt.sfdisk_script(example, ids, layout)}

    def assembly_inputs(self, ctx: BuildContext) -> dict[str, Any]:
        # make_image reads the tree, the layout, the disk size and the seed (the release
        # id, in the release's key) and SOURCE_DATE_EPOCH (build.image_inputs adds it)
        return {"layout": dataclasses.asdict(self.layout(ctx.p)),
                "disk_size": ctx.p.device.storage.size}

    def assemble(self, ctx: BuildContext) -> Delivery:
        assert ctx.rootfs_dir and ctx.work
        img = uefi_gpt.make_image(ctx.rootfs_dir, ctx.work / "out", self.layout(ctx.p),
                                  disk_size=ctx.p.device.storage.size, seed=ctx.release_id,
                                  log_file=ctx.logs / "image.log")
        return Delivery("disk-image", {"image": img.raw, "bmap": img.bmap,
                                       "compressed": img.zst},
                        sha256=img.sha256, size=img.size,
                        info={"layout": "uefi-gpt", "root_partuuid": img.root_partuuid,
                              "ids_change_at_first_boot": True,
                              "kernel": img.kernel_version})

    def flash(self, build_dir: Path, manifest: dict[str, Any], built: Profile | None,
              request: Any) -> str:
        from ...flash import Image, flash  # the disk image, with bmaptool (SD_WRITER)

        return flash(Image.of_build(build_dir, manifest), request)

    def vm_machine(self, build_dir: Path, manifest: dict[str, Any]) -> Machine:
        from ...vm import Machine

        # the build's CPU levels ({} for no build in particular: the defaults)
        levels = ((manifest.get("inputs", {}).get("profile") or {}).get(self.section)
                  or {}).get("cpu_levels") or X86Settings().cpu_levels
        return Machine(qemu="qemu-system-x86_64",
                       args=("-machine", "q35", "-bios", str(OVMF)),
                       tcg_cpu=TCG_CPU_V2 if "x86-64-v2" in levels else "max",
                       kvm=True, files=(OVMF,), package="ovmf")


# Under TCG the VM's CPU stops at x86-64-v2 when the engine has a v2 backend: QEMU
# emulates AVX2 (which the v3 backend and glibc's string functions then use) about ten
# times slower than SSE4.2. Measured in a TCG guest, SmolLM2-135M Q4_1, 2 threads:
# prompt 0.32 -> 3.44 tok/s, decode 0.25 -> 1.95 tok/s. With KVM it is the host's CPU.
TCG_CPU_V2 = "max,-avx,-avx2,-fma,-f16c,-bmi1,-bmi2,-avx-vnni,-vaes,-vpclmulqdq"

TARGET = X86Gateway()
