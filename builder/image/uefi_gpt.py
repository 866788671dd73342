"""The UEFI GPT layout (x86 gateways): an EFI system partition with systemd-boot, one
loader entry, the kernel and the initrd; a root partition of the Discoverable
Partitions type for the architecture, found by PARTUUID. The ids (disk and partition
GUIDs, filesystem UUID, FAT volume id, ext4 hash seed) derive from the seed: the disk and
partition GUIDs are the image's, each medium gives itself new ones at its first boot
(the base role's edge-llm-disk-ids, which rewrites the loader entry)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuilderError
from ..progress import step
from ..units import MiB, format_size
from . import (
    SECTOR,
    Ids,
    ImageResult,
    Usage,
    assemble,
    check_disk,
    fat_image,
    measure,
    mkfs_ext4,
    publish,
    root_size,
    source_date_epoch,
    staging,
)

ALIGN = 1 * MiB  # partitions start on MiB boundaries; also room for the primary GPT
GPT_TAIL = 1 * MiB  # room for the backup GPT (33 sectors), kept MiB-aligned
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# The Discoverable Partitions Specification's root partition types: systemd-gpt-auto
# and systemd-repart recognise them without an fstab.
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
ROOT_ARM64_TYPE = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"
# What a medium's first boot rewrites when it gives itself its own ids (the base role's
# edge-llm-disk-ids): the ESP's number and the loader entry holding root=PARTUUID=.
ESP_PARTITION = 1
LOADER_ENTRY = "loader/entries/edge.conf"


@dataclass(frozen=True)
class UefiLayout:
    root_type: str  # GPT type of the root partition (ROOT_*_TYPE)
    efi_loader: str  # systemd-boot in the rootfs, e.g. usr/lib/systemd/boot/efi/...x64.efi
    efi_name: str  # its name on the ESP, the removable-media path: BOOTX64.EFI
    kernel_cmdline: str  # after root=PARTUUID=... rw
    esp_size: int = 256 * MiB
    root_label: str = "edge-root"
    esp_label: str = "EDGE-ESP"


@dataclass(frozen=True)
class GptIds:
    disk: str
    esp_partuuid: str
    root_partuuid: str
    root_fs_uuid: str
    root_hash_seed: str
    esp_volid: str  # 8 hex digits, FAT volume serial

    @classmethod
    def from_seed(cls, seed: str) -> GptIds:
        i = Ids(seed)
        return cls(disk=i.uuid("disk"), esp_partuuid=i.uuid("esp"),
                   root_partuuid=i.uuid("root"), root_fs_uuid=i.uuid("root-fs"),
                   root_hash_seed=i.uuid("root-hash-seed"), esp_volid=i.hex("esp-volid", 8))


@dataclass(frozen=True)
class DiskPlan:
    """Byte offsets and sizes of the partitions; all MiB-aligned."""

    esp_offset: int
    esp_size: int
    root_offset: int
    root_size: int
    root_inodes: int
    disk_size: int


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path
    version: str
    efi: Path  # systemd-boot

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in (self.kernel, self.initrd, self.efi))


# --- pure: sizes, layout, text of the files written ----------------------------------

def plan_disk(usage: Usage, layout: UefiLayout) -> DiskPlan:
    if layout.esp_size % MiB or layout.esp_size < 64 * MiB:
        raise BuilderError(f"ESP size must be a whole number of MiB and at least 64MiB, "
                           f"got {format_size(layout.esp_size)}")
    rsize, inodes = root_size(usage)
    esp_offset = ALIGN
    root_offset = esp_offset + layout.esp_size
    return DiskPlan(esp_offset=esp_offset, esp_size=layout.esp_size,
                    root_offset=root_offset, root_size=rsize, root_inodes=inodes,
                    disk_size=root_offset + rsize + GPT_TAIL)


def check_fits(plan: DiskPlan, disk_size: int | None, boot_size: int = 0) -> None:
    if boot_size + 1 * MiB > plan.esp_size * 0.9:  # FAT and directories take the rest
        raise BuilderError(f"ESP too small: kernel, initrd and systemd-boot take "
                           f"{format_size(boot_size)} of {format_size(plan.esp_size)}")
    check_disk(plan.disk_size, disk_size)


def sfdisk_script(plan: DiskPlan, ids: GptIds, layout: UefiLayout) -> str:
    """sfdisk input for the GPT: fixed GUIDs, sector units, nothing left to defaults."""
    def part(offset: int, size: int, ptype: str, puuid: str, name: str) -> str:
        return (f"start={offset // SECTOR}, size={size // SECTOR}, type={ptype}, "
                f'uuid={puuid}, name="{name}"')

    return "\n".join([
        "label: gpt",
        f"label-id: {ids.disk.upper()}",
        "unit: sectors",
        "sector-size: 512",
        f"first-lba: {ALIGN // SECTOR}",
        part(plan.esp_offset, plan.esp_size, ESP_TYPE, ids.esp_partuuid.upper(), "esp"),
        part(plan.root_offset, plan.root_size, layout.root_type,
             ids.root_partuuid.upper(), "root"),
        "",
    ])


def loader_conf() -> str:
    return "default edge.conf\ntimeout 0\neditor no\n"


def boot_entry(root_partuuid: str, cmdline: str) -> str:
    return ("title edge-llm appliance\n"
            "linux /vmlinuz\n"
            "initrd /initrd.img\n"
            f"options {kernel_cmdline(root_partuuid, cmdline)}\n")


def kernel_cmdline(root_partuuid: str, extra: str) -> str:
    return f"root=PARTUUID={root_partuuid} rw {extra}".strip()


def _version_key(version: str) -> list[int | str]:
    # "6.1.0-10-cloud-amd64" after "6.1.0-9-cloud-amd64": compare digit runs as numbers
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def pick_kernel(names: list[str]) -> str | None:
    """The newest kernel version among /boot file names (vmlinuz-VERSION)."""
    versions = [n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-")]
    return max(versions, key=_version_key) if versions else None


# --- observing the rootfs --------------------------------------------------------------

def boot_files(rootfs: Path, layout: UefiLayout) -> BootFiles:
    boot = rootfs / "boot"
    names = sorted(p.name for p in boot.iterdir()) if boot.is_dir() else []
    version = pick_kernel(names)
    if version is None:
        raise BuilderError(f"no kernel in {boot}: install a kernel package "
                           f"(linux-image-amd64) in the rootfs")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.is_file():
        raise BuilderError(f"no initramfs for kernel {version} in {boot}: install "
                           f"initramfs-tools in the rootfs")
    efi = rootfs / layout.efi_loader
    if not efi.is_file():
        raise BuilderError(f"no systemd-boot in the rootfs ({layout.efi_loader}): install "
                           f"systemd-boot-efi in the rootfs")
    return BootFiles(kernel=boot / f"vmlinuz-{version}", initrd=initrd, version=version,
                     efi=efi)


# --- building ----------------------------------------------------------------------------

def make_image(rootfs: Path, out_dir: Path, layout: UefiLayout, *, disk_size: int | None,
               seed: str, log_file: Path | None = None) -> ImageResult:
    """Build image.raw (+ image.bmap, image.raw.zst) in `out_dir` from the tree at `rootfs`,
    in a temporary directory renamed into place."""
    if not rootfs.is_dir():
        raise BuilderError(f"rootfs {rootfs} is not a directory")
    if "\n" in layout.kernel_cmdline:
        raise BuilderError("the kernel command line must be one line")
    boot = boot_files(rootfs, layout)
    ids = GptIds.from_seed(seed)
    plan = plan_disk(measure(rootfs), layout)
    check_fits(plan, disk_size, boot.size)
    epoch = source_date_epoch()
    with staging(out_dir) as tmp:
        conf, entry = tmp / "loader.conf", tmp / "edge.conf"
        conf.write_text(loader_conf())
        entry.write_text(boot_entry(ids.root_partuuid, layout.kernel_cmdline))
        if epoch is not None:  # mcopy -m keeps these mtimes; the rootfs's own files keep theirs
            for p in (conf, entry):
                os.utime(p, (epoch, epoch))
        with step(f"building the disk image ({format_size(plan.disk_size)})") as on_line:
            mkfs_ext4(rootfs, tmp / "root.img", size=plan.root_size, inodes=plan.root_inodes,
                      label=layout.root_label, fs_uuid=ids.root_fs_uuid,
                      hash_seed=ids.root_hash_seed, log_file=log_file, on_line=on_line,
                      epoch=epoch)
            fat_image(tmp / "esp.img", size=plan.esp_size, label=layout.esp_label,
                      volid=ids.esp_volid, log_file=log_file, on_line=on_line, epoch=epoch,
                      files=[(boot.efi, f"EFI/BOOT/{layout.efi_name}"),
                             (boot.kernel, "vmlinuz"), (boot.initrd, "initrd.img"),
                             (conf, "loader/loader.conf"), (entry, LOADER_ENTRY)])
            assemble(tmp / "image.raw", plan.disk_size, sfdisk_script(plan, ids, layout),
                     [(tmp / "esp.img", plan.esp_offset), (tmp / "root.img", plan.root_offset)],
                     log_file)
        return publish(tmp, out_dir, "image.raw", root_partuuid=ids.root_partuuid,
                       kernel_version=boot.version, log_file=log_file)
