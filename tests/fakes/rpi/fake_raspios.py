"""A synthetic Raspberry Pi OS Lite (bookworm, arm64) image, built without loop devices.

`make_raspios_image(rootfs_tar, dest)` writes `<date>-raspios-bookworm-arm64-lite.img`
(sparse) and, with compress=True, `.img.xz` beside it, shaped like the real
2024-11-19-raspios-bookworm-arm64-lite.img:

* MBR ("dos") label, disk identifier 0x8a438930;
* p1 at sector 8192 (4 MiB; pi-gen aligned to 4 MiB then, 8 MiB from 2025), 1048576
  sectors (512 MiB), type 0x0c, FAT32 labelled "bootfs" (mkdosfs -F 32 -s 4);
* p2 right after it (sector 1056768), type 0x83, ext4 labelled "rootfs", sized like pi-gen
  does (du of the tree + 20 % + 200 MiB, rounded up to 4 MiB) unless root_margin_mib says;
* bootfs: config.txt (pi-gen's, verbatim), cmdline.txt with root=PARTUUID=8a438930-02 and
  the real image's other arguments, issue.txt, kernel_2712.img, kernel8.img,
  initramfs_2712, initramfs8, bcm27*.dtb, overlays/ (README, *.dtbo, overlay_map.dtb),
  and placeholder bootcode.bin/start*.elf/fixup*.dat;
* rootfs: the given tarball (a Debian arm64 rootfs from mmdebstrap stands in for Raspberry
  Pi OS's userland; anything works) plus the Raspberry Pi OS markers: /etc/rpi-issue,
  /etc/fstab by PARTUUID, /etc/hostname, /etc/apt/sources.list.d/raspi.list, the empty
  /boot/firmware mount point, /boot/{config,cmdline}.txt "moved" stubs, the kernels in
  /boot, /usr/lib/linux-image-*/ and /lib/modules/<version>/ (6.6.51+rpt-rpi-2712 and
  -rpi-v8, what the 2024-11-19 image shipped) and a placeholder
  /usr/lib/raspberrypi-sys-mods/firstboot (cmdline.txt's init=).

Everything the image contains besides the tarball is FAKE. Tools: tar, du, mkfs.ext4
(e2fsprogs), mkfs.vfat (dosfstools), mcopy (mtools), sfdisk (fdisk), dd; as non-root,
fakeroot keeps the tarball's owners. The .xz is written by _xz.py (a standard one-stream,
multi-block .xz, CRC32 check), which skips the image's holes instead of running xz.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..apt_repo import run
from . import _payloads as P
from ._xz import write_xz

SECTOR = 512
MIB = 1024 * 1024

IMAGE_DATE = "2024-11-19"
DISK_ID = 0x8A438930  # fdisk -l 2024-11-19-raspios-bookworm-arm64-lite.img
IMAGE_KERNEL_ABI = "6.6.51+rpt"  # that image's kernels: 1:6.6.51-1+rpt3
PI_GEN_COMMIT = "891df1e21ed2b6099a2e6a13e26c91dea44b34d4"  # tag 2024-11-19-raspios-bookworm-arm64


@dataclass(frozen=True)
class RaspiosLayout:
    """The partition layout of the real 2024-11-19 Raspberry Pi OS Lite arm64 image."""

    disk_id: int = DISK_ID
    align: int = 4 * MIB
    boot_start: int = 8192  # sectors
    boot_sectors: int = 1048576  # 512 MiB
    boot_type: str = "c"  # W95 FAT32 (LBA)
    boot_label: str = "bootfs"
    root_type: str = "83"
    root_label: str = "rootfs"

    @property
    def root_start(self) -> int:
        return self.boot_start + self.boot_sectors  # 1056768

    def partuuid(self, n: int, disk_id: int | None = None) -> str:
        return f"{(self.disk_id if disk_id is None else disk_id):08x}-{n:02d}"


LAYOUT = RaspiosLayout()

# pi-gen stage1/00-boot-files/files/config.txt at tag 2024-11-19-raspios-bookworm-arm64,
# verbatim. pi-gen: Copyright (c) 2015 Raspberry Pi (Trading) Ltd., BSD-3-Clause.
CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Additional overlays and parameters are documented
# /boot/firmware/overlays/README

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""

# stage1's cmdline.txt plus stage2's 07-resize-init.diff, PARTUUID filled in at export.
CMDLINE_TXT = (
    "console=serial0,115200 console=tty1 root=PARTUUID={root} rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
)

FSTAB = (
    "proc            /proc           proc    defaults          0       0\n"
    "PARTUUID={boot}  /boot/firmware  vfat    defaults          0       2\n"
    "PARTUUID={root}  /               ext4    defaults,noatime  0       1\n"
)

MOVED_STUB = "DO NOT EDIT THIS FILE\n\nThe file you are looking for has moved to {path}\n"

FIRSTBOOT = """\
#!/bin/sh
# FAKE /usr/lib/raspberrypi-sys-mods/firstboot (edge-llm builder tests). The real one
# (raspberrypi-sys-mods) runs once as init=: it removes itself from cmdline.txt,
# regenerates the SSH host keys, applies /boot/firmware/custom.toml, gives the disk a new
# random identifier (fixing fstab and cmdline.txt) and reboots; the initramfs grows the
# root partition and file system before it runs.
echo "FAKE raspberrypi-sys-mods firstboot: nothing to do" >&2
exec /sbin/init "$@"
"""


def rpi_issue(date: str) -> str:
    return (
        f"Raspberry Pi reference {date}\n"
        f"Generated using pi-gen, https://github.com/RPi-Distro/pi-gen, {PI_GEN_COMMIT}, "
        "stage2\n"
    )


# --------------------------------------------------------------------------- contents


def _boot_files(disk_id: int, date: str, abi: str) -> dict[str, bytes]:
    files = {n: P.firmware_blob(n) for n in P.FIRMWARE_BLOBS}
    files["config.txt"] = CONFIG_TXT.encode()
    files["cmdline.txt"] = CMDLINE_TXT.format(root=LAYOUT.partuuid(2, disk_id)).encode()
    files["issue.txt"] = rpi_issue(date).encode()
    for flavour in P.FLAVOURS:
        version = P.kernel_version(flavour, abi)
        kernel_name, initramfs_name = P.FLAVOUR_INFO[flavour][:2]
        files[kernel_name] = P.kernel_image(version, flavour)
        files[initramfs_name] = P.initramfs(version)
    files |= P.dtb_files()
    files |= {f"overlays/{n}": b for n, b in P.overlay_files().items()}
    return files


def _write_root_overlay(path: Path, disk_id: int, date: str, abi: str, usrmerged: bool) -> None:
    """The Raspberry Pi OS markers, as a tar (owned by root) to lay over the tree."""
    with tarfile.open(path, mode="w") as tar:
        _fill_root_overlay(tar, disk_id, date, abi, usrmerged)


def _fill_root_overlay(
    tar: tarfile.TarFile, disk_id: int, date: str, abi: str, usrmerged: bool
) -> None:
    mtime = 1732000000  # 2024-11-19

    def add_dir(path: str) -> None:
        info = tarfile.TarInfo(f"./{path}")
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
        tar.addfile(info)

    def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                add_dir(d)
        info = tarfile.TarInfo(f"./{path}")
        info.size, info.mode, info.mtime = len(data), mode, mtime
        tar.addfile(info, io.BytesIO(data))

    seen: set[str] = set()
    boot, root = LAYOUT.partuuid(1, disk_id), LAYOUT.partuuid(2, disk_id)
    add_file("etc/rpi-issue", rpi_issue(date).encode())
    add_file("etc/fstab", FSTAB.format(boot=boot, root=root).encode())
    add_file("etc/hostname", b"raspberrypi\n")
    add_file("etc/apt/sources.list.d/raspi.list",
             b"deb http://archive.raspberrypi.com/debian/ bookworm main\n"
             b"# Uncomment line below then 'apt-get update' to enable 'apt-get source'\n"
             b"#deb-src http://archive.raspberrypi.com/debian/ bookworm main\n")
    add_file("usr/lib/raspberrypi-sys-mods/firstboot", FIRSTBOOT.encode(), 0o755)
    add_dir("boot")
    seen.add("boot")
    add_dir("boot/firmware")
    seen.add("boot/firmware")
    for name in ("config.txt", "cmdline.txt"):
        add_file(f"boot/{name}", MOVED_STUB.format(path=f"/boot/firmware/{name}").encode())
    modules = "usr/lib/modules" if usrmerged else "lib/modules"
    for flavour in P.FLAVOURS:
        version = P.kernel_version(flavour, abi)
        add_file(f"boot/vmlinuz-{version}", P.kernel_image(version, flavour))
        add_file(f"boot/initrd.img-{version}", P.initramfs(version))
        add_file(f"boot/config-{version}", P.kernel_config(version, flavour).encode())
        add_file(f"boot/System.map-{version}", P.system_map(version).encode())
        for name, data in P.dtb_files().items():
            add_file(f"usr/lib/linux-image-{version}/broadcom/{name}", data)
        for name, data in P.overlay_files().items():
            add_file(f"usr/lib/linux-image-{version}/overlays/{name}", data)
        for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo",
                     "modules.dep"):
            add_file(f"{modules}/{version}/{name}", b"")
        add_dir(f"{modules}/{version}/kernel")


# --------------------------------------------------------------------------- building


class _Root:
    """Runs commands as root, or under one persistent fakeroot session when not root."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.fake = os.geteuid() != 0
        if self.fake and not shutil.which("fakeroot"):
            raise RuntimeError("not root and no fakeroot: cannot keep the tarball's owners")

    def run(self, cmd: list[str], **kw) -> None:
        if self.fake:
            prefix = ["fakeroot", "-s", str(self.state)]
            if self.state.exists():
                prefix += ["-i", str(self.state)]
            cmd = [*prefix, "--", *cmd]
        run(cmd, **kw)


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def make_raspios_image(
    rootfs_tar: Path,
    dest: Path,
    *,
    compress: bool = True,
    date: str = IMAGE_DATE,
    disk_id: int = DISK_ID,
    kernel_abi: str = IMAGE_KERNEL_ABI,
    root_margin_mib: int | None = None,
    xz_level: int = 6,
) -> Path:
    """Build the synthetic image in `dest`; returns the .img.xz (compress) or the .img.

    The .img is kept (sparse) in both cases. root_margin_mib replaces pi-gen's
    "20 % + 200 MiB" free space in the root file system (tests use a few MiB).
    """
    rootfs_tar = Path(rootfs_tar).resolve()
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    name = f"{date}-raspios-bookworm-arm64-lite"
    img = dest / f"{name}.img"
    work = dest / f".{name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        # --- root file system tree: the tarball, then the Raspberry Pi OS markers
        rootdir = work / "rootfs"
        rootdir.mkdir()
        as_root = _Root(work / "fakeroot.state")
        as_root.run(["tar", "-x", "-p", "--numeric-owner", "-f", str(rootfs_tar),
                     "-C", str(rootdir), "--anchored", "--exclude=./dev/*", "--exclude=dev/*"])
        overlay = work / "overlay.tar"
        usrmerged = (rootdir / "lib").is_symlink()
        _write_root_overlay(overlay, disk_id, date, kernel_abi, usrmerged)
        as_root.run(["tar", "-x", "-p", "--numeric-owner", "--keep-directory-symlink",
                     "-f", str(overlay), "-C", str(rootdir)])
        used = int(run(["du", "-s", "-x", "--apparent-size", "--block-size=1",
                        "--exclude=./var/cache/apt/archives", "--exclude=./boot/firmware",
                        "."], cwd=rootdir).stdout.split()[0])
        margin = (used // 5 + 200 * MIB) if root_margin_mib is None else root_margin_mib * MIB
        root_bytes = _align(used + margin, LAYOUT.align)

        # --- partitions as separate images, no loop devices
        root_img = work / "root.img"
        fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"edge-llm-fake-raspios-{disk_id:08x}"))
        as_root.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", LAYOUT.root_label,
                     "-O", "^huge_file,^64bit", "-U", fs_uuid, "-E", "root_owner=0:0",
                     "-d", str(rootdir), str(root_img), f"{root_bytes // 1024}k"])

        boot_img = work / "boot.img"
        volid = hashlib.sha256(f"bootfs-{disk_id:08x}".encode()).hexdigest()[:8]
        run(["mkfs.vfat", "-C", "-F", "32", "-s", "4", "-n", LAYOUT.boot_label, "-i", volid,
             str(boot_img), str(LAYOUT.boot_sectors * SECTOR // 1024)])
        bootdir = work / "bootfs"
        for rel, data in _boot_files(disk_id, date, kernel_abi).items():
            path = bootdir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        run(["mcopy", "-i", str(boot_img), "-s", "-m",
             *sorted(str(p) for p in bootdir.iterdir()), "::/"], env=env)

        # --- the disk: sparse file, MBR by sfdisk, partitions by dd
        total = LAYOUT.root_start * SECTOR + root_bytes
        img.unlink(missing_ok=True)
        with open(img, "wb") as f:
            f.truncate(total)
        script = (
            "label: dos\n"
            f"label-id: 0x{disk_id:08x}\n"
            "unit: sectors\n"
            "sector-size: 512\n\n"
            f"start={LAYOUT.boot_start}, size={LAYOUT.boot_sectors}, type={LAYOUT.boot_type}\n"
            f"start={LAYOUT.root_start}, size={root_bytes // SECTOR}, type={LAYOUT.root_type}\n"
        )
        run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(img)], input=script)
        for part, start in ((boot_img, LAYOUT.boot_start), (root_img, LAYOUT.root_start)):
            run(["dd", f"if={part}", f"of={img}", "bs=1M", f"seek={start * SECTOR}",
                 "oflag=seek_bytes", "conv=notrunc,sparse", "status=none"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if not compress:
        return img
    return write_xz(img, img.with_name(img.name + ".xz"), preset=xz_level)
