"""The Raspberry Pi boot layout, as pi-gen makes it: an MBR; a FAT32 `bootfs` (type
0x0c) holding config.txt, cmdline.txt, the kernel, DTBs and overlays; an ext4 `rootfs`
(0x83, 4 KiB blocks) found by PARTUUID=<disk id>-02; partitions 8 MiB aligned. The disk
id, filesystem UUID and FAT volume id derive from the seed, like every other id; the disk
id is the image's: each medium gives itself a new one at its first boot, cmdline.txt
and fstab following (the base role's edge-llm-disk-ids).

The boot files are what Raspberry Pi's raspi-firmware hooks put in the rootfs's
/boot/firmware when the kernel package was installed; in the image they live on the
FAT partition only (the rootfs keeps /boot/firmware as its mount point).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ...errors import BuilderError
from ...image import (
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
from ...progress import step
from ...units import MiB, format_size
from . import eeprom

ALIGN = 8 * MiB  # pi-gen's alignment since 2025 (erase blocks of SD cards)
BOOT_TYPE, ROOT_TYPE = "c", "83"  # W95 FAT32 (LBA), Linux
# What a medium's first boot rewrites when it gives itself its own disk id (the base
# role's edge-llm-disk-ids): the boot partition's number and the file naming the root.
BOOT_PARTITION, CMDLINE_TXT = 1, "cmdline.txt"


@dataclass(frozen=True)
class RpiLayout:
    kernel_image: str  # the name the firmware loads: kernel_2712.img, kernel8.img
    config_txt: str  # the whole file
    cmdline: str  # cmdline.txt after root=PARTUUID=...
    boot_size: int = 512 * MiB
    boot_label: str = "bootfs"
    root_label: str = "rootfs"
    compress: str = "xz"  # the compressed copy: image.COMPRESSORS
    eeprom_boot_order: str | None = None  # put an EEPROM update with it on bootfs (eeprom.py)


@dataclass(frozen=True)
class RpiIds:
    disk: str  # 8 hex digits: the MBR disk id, PARTUUIDs are <disk>-01 and <disk>-02
    root_fs_uuid: str
    root_hash_seed: str
    boot_volid: str

    @property
    def boot_partuuid(self) -> str:
        return f"{self.disk}-01"

    @property
    def root_partuuid(self) -> str:
        return f"{self.disk}-02"

    @classmethod
    def from_seed(cls, seed: str) -> RpiIds:
        i = Ids(seed)
        return cls(disk=i.hex("mbr-disk-id", 8), root_fs_uuid=i.uuid("root-fs"),
                   root_hash_seed=i.uuid("root-hash-seed"), boot_volid=i.hex("boot-volid", 8))


@dataclass(frozen=True)
class DiskPlan:
    boot_offset: int
    boot_size: int
    root_offset: int
    root_size: int
    root_inodes: int
    disk_size: int


# --- pure ---------------------------------------------------------------------------------

def plan_disk(usage: Usage, layout: RpiLayout) -> DiskPlan:
    if layout.boot_size % ALIGN or layout.boot_size < 64 * MiB:
        raise BuilderError(f"the boot partition must be a multiple of 8MiB and at least "
                           f"64MiB, got {format_size(layout.boot_size)}")
    rsize, inodes = root_size(usage)
    rsize = -(-rsize // ALIGN) * ALIGN
    boot_offset = ALIGN
    root_offset = boot_offset + layout.boot_size
    return DiskPlan(boot_offset=boot_offset, boot_size=layout.boot_size,
                    root_offset=root_offset, root_size=rsize, root_inodes=inodes,
                    disk_size=root_offset + rsize)


def sfdisk_script(plan: DiskPlan, ids: RpiIds) -> str:
    return "\n".join([
        "label: dos",
        f"label-id: 0x{ids.disk}",
        "unit: sectors",
        "sector-size: 512",
        f"start={plan.boot_offset // SECTOR}, size={plan.boot_size // SECTOR}, "
        f"type={BOOT_TYPE}, bootable",
        f"start={plan.root_offset // SECTOR}, size={plan.root_size // SECTOR}, "
        f"type={ROOT_TYPE}",
        "",
    ])


def cmdline_txt(ids: RpiIds, layout: RpiLayout) -> str:
    return f"root=PARTUUID={ids.root_partuuid} {layout.cmdline}".strip() + "\n"


def fstab(ids: RpiIds) -> str:
    return ("# edge-llm appliance (Raspberry Pi layout): by PARTUUID, as pi-gen writes it\n"
            "proc            /proc           proc    defaults          0       0\n"
            f"PARTUUID={ids.boot_partuuid}  /boot/firmware  vfat    defaults,noatime  0  2\n"
            f"PARTUUID={ids.root_partuuid}  /               ext4    defaults,noatime  0  1\n")


# --- building -------------------------------------------------------------------------------

def boot_files(rootfs: Path, layout: RpiLayout) -> Path:
    """The rootfs's /boot/firmware, checked for what the firmware loads."""
    fw = rootfs / "boot/firmware"
    if not (fw / layout.kernel_image).is_file():
        raise BuilderError(
            f"no {layout.kernel_image} in the rootfs's /boot/firmware: the kernel package "
            "(linux-image-rpi-2712 or -v8) and Raspberry Pi's raspi-firmware put it there; "
            "check the pi5.apt repository has them")
    if not list(fw.glob("bcm2712*.dtb")):
        raise BuilderError("no bcm2712 device tree in the rootfs's /boot/firmware: "
                           "Raspberry Pi's kernel package ships it")
    return fw


def make_image(rootfs: Path, out_dir: Path, layout: RpiLayout, *, name: str,
               disk_size: int | None, seed: str, log_file: Path | None = None
               ) -> ImageResult:
    """out_dir/<name> (+ .bmap, .xz or .zst) from the tree at `rootfs`: the FAT takes its
    /boot/firmware (then emptied: the mount point stays), /etc/fstab is written by
    PARTUUID. Built in a temporary directory and renamed into place."""
    fw = boot_files(rootfs, layout)
    ids = RpiIds.from_seed(seed)
    epoch = source_date_epoch()
    with staging(out_dir) as tmp:
        boot = tmp / "boot-files"
        shutil.copytree(fw, boot, symlinks=False)
        if layout.eeprom_boot_order:  # first: a refusal leaves the rootfs tree untouched
            eeprom.stage_update(rootfs, boot, boot_order=layout.eeprom_boot_order,
                                epoch=epoch, log_file=log_file)
        for entry in fw.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (boot / "config.txt").write_text(layout.config_txt)
        (boot / "cmdline.txt").write_text(cmdline_txt(ids, layout))
        (rootfs / "etc/fstab").write_text(fstab(ids))
        plan = plan_disk(measure(rootfs), layout)
        check_disk(plan.disk_size, disk_size)
        files = [(p, p.name) for p in sorted(boot.iterdir())]
        with step(f"building the Raspberry Pi image ({format_size(plan.disk_size)})"
                  ) as on_line:
            mkfs_ext4(rootfs, tmp / "root.img", size=plan.root_size, inodes=plan.root_inodes,
                      label=layout.root_label, fs_uuid=ids.root_fs_uuid,
                      hash_seed=ids.root_hash_seed, log_file=log_file, on_line=on_line,
                      epoch=epoch)
            fat_image(tmp / "boot.img", size=plan.boot_size, label=layout.boot_label,
                      volid=ids.boot_volid, files=files, log_file=log_file,
                      on_line=on_line, epoch=epoch)
            assemble(tmp / name, plan.disk_size, sfdisk_script(plan, ids),
                     [(tmp / "boot.img", plan.boot_offset),
                      (tmp / "root.img", plan.root_offset)], log_file)
        return publish(tmp, out_dir, name, root_partuuid=ids.root_partuuid,
                       kernel_version=layout.kernel_image, log_file=log_file,
                       compress=layout.compress)
