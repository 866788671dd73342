"""`builder flash` for targets that deliver a disk image: bmaptool writes it to an SD
card, a USB stick or an SSD, checking every block's sha256 as it goes - and only after
the device has been checked: never the disk the host runs from, never a device with a
mounted partition, never one smaller than the image, never a fixed (non-removable) disk
unless asked, never something that is not a block device (a file only with --to-file).
What a device is comes from lsblk's JSON (a view tests build from fixtures). After
writing, the partition table is read back and the root's PARTUUID checked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BuilderError, display_path
from .progress import step
from .run import run
from .units import format_size

LSBLK = ["lsblk", "-J", "-b", "-o", "NAME,PATH,SIZE,RM,TYPE,TRAN,MODEL,SERIAL,MOUNTPOINTS"]
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var", "/home", "[SWAP]")


@dataclass(frozen=True)
class Disk:
    path: str
    size: int
    removable: bool  # RM=1, or on a USB or SD/MMC bus
    model: str
    serial: str
    mounts: tuple[str, ...]  # of the disk and every partition on it
    kind: str  # lsblk TYPE: disk, loop, ...

    def describe(self) -> str:
        what = " ".join(x for x in (self.model, f"serial {self.serial}" if self.serial
                                      else "") if x)
        return f"{self.path} ({format_size(self.size)}{', ' + what if what else ''})"


@dataclass
class BlockView:
    """The host's block devices as lsblk sees them."""

    disks: dict[str, Disk] = field(default_factory=dict)

    @classmethod
    def from_lsblk(cls, text: str) -> BlockView:
        view = cls()
        for dev in json.loads(text).get("blockdevices", []):
            mounts = _mounts(dev)
            tran = (dev.get("tran") or "").lower()
            view.disks[dev["path"]] = Disk(
                path=dev["path"], size=int(dev.get("size") or 0),
                removable=bool(dev.get("rm")) or tran in ("usb", "mmc"),
                model=(dev.get("model") or "").strip(), serial=(dev.get("serial") or "").strip(),
                mounts=tuple(mounts), kind=dev.get("type") or "disk")
        return view

    @classmethod
    def read(cls) -> BlockView:
        return cls.from_lsblk(run(LSBLK, what="listing block devices (lsblk)"))


def _mounts(node: dict[str, Any]) -> list[str]:
    """Where a device and everything on it (partitions, holders) is mounted."""
    found = [m for m in (node.get("mountpoints") or []) if m]
    for child in node.get("children") or []:
        found += _mounts(child)
    return found


def check_device(device: str, image_size: int, view: BlockView, *, force_fixed: bool,
                 is_block: Callable[[str], bool]) -> Disk:
    """The disk at `device`, if it is safe to overwrite with an image of `image_size`
    bytes; else one line saying why not."""
    if not is_block(device):
        raise BuilderError(f"--device {device}: not a block device (to write an image file, "
                           "use --to-file PATH)")
    real = os.path.realpath(device)
    disk = view.disks.get(device) or view.disks.get(real)
    if disk is None:
        raise BuilderError(f"--device {device}: not a whole disk lsblk knows (a partition? "
                           "name the disk, e.g. /dev/sdb, not /dev/sdb1)")
    system = [m for m in disk.mounts if m in SYSTEM_MOUNTS]
    if system:
        raise BuilderError(f"--device {device}: this machine runs from it ({system[0]} is on "
                           "it); pick the card or disk to write")
    if disk.mounts:
        raise BuilderError(f"--device {device}: {', '.join(disk.mounts)} mounted from it; "
                           f"unmount it first (umount {device}*)")
    if disk.size < image_size:
        raise BuilderError(f"--device {device}: {format_size(disk.size)} is smaller than the "
                           f"image ({format_size(image_size)})")
    if not disk.removable and not force_fixed:
        raise BuilderError(f"--device {device}: a fixed disk ({disk.describe()}); if you "
                           "really mean to overwrite it, add --force-fixed")
    return disk


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass(frozen=True)
class Request:
    """What `builder flash` was asked; each target takes the options it knows."""

    device: str | None = None
    to_file: Path | None = None
    yes: bool = False
    dry_run: bool = False
    force_fixed: bool = False
    massflash: int | None = None  # Jetson: boards flashed at once from one package
    no_package: bool = False  # Jetson: generate and flash in one run, no package
    confirm: Callable[[str], bool] = field(default=lambda _q: False, compare=False)
    say: Callable[[str], None] = field(default=print, compare=False)


@dataclass(frozen=True)
class Image:
    """What a disk-image build delivered (manifest.json: delivery)."""

    raw: Path
    bmap: Path
    compressed: Path
    size: int
    root_partuuid: str

    @classmethod
    def of_build(cls, build_dir: Path, manifest: dict[str, Any]) -> Image:
        d = manifest.get("delivery") or {}
        if d.get("kind") != "disk-image":
            raise BuilderError(f"{display_path(build_dir)}: this build delivers "
                               f"{d.get('kind') or 'nothing'}, not a disk image")
        f = d["files"]
        img = cls(raw=build_dir / f["image"], bmap=build_dir / f["bmap"],
                  compressed=build_dir / f["compressed"], size=int(d["bytes"]),
                  root_partuuid=d["root_partuuid"])
        for p in (img.bmap, img.compressed):
            if not p.is_file():
                raise BuilderError(f"{display_path(p)} is missing; build again")
        return img

    def copy_command(self, dest: str) -> list[str]:
        # the compressed copy: bmaptool unpacks it while writing and checks each mapped
        # range against the bmap's sha256
        return ["bmaptool", "copy", "--bmap", str(self.bmap), str(self.compressed), dest]


def partuuids(target: str) -> list[str]:
    table = json.loads(run(["sfdisk", "--json", target], what="reading the partition table "
                           "back (sfdisk)"))["partitiontable"]
    label_id = table.get("id", "").lower().removeprefix("0x")
    out = []
    for i, part in enumerate(table.get("partitions", []), start=1):
        out.append((part.get("uuid") or f"{label_id}-{i:02d}").lower())
    return out


def flash(image: Image, r: Request, *, view: BlockView | None = None,
          is_block: Callable[[str], bool] = _is_block) -> str:
    """Write `image` to r.device (checked) or r.to_file; returns where it went."""
    device, to_file, say = r.device, r.to_file, r.say
    if r.massflash or r.no_package:
        raise BuilderError("--massflash and --no-package are for Jetson flash packages; a "
                           "disk image is written with --device or --to-file")
    if bool(device) == bool(to_file):
        raise BuilderError("say where: --device /dev/sdX (a card or disk) or --to-file PATH")
    if to_file is not None:
        if to_file.exists() and is_block(str(to_file)):
            raise BuilderError(f"--to-file {to_file}: a block device; use --device for that")
        dest = str(to_file)
        what = f"the file {display_path(to_file)}"
    else:
        assert device is not None
        disk = check_device(device, image.size, view or BlockView.read(),
                            force_fixed=r.force_fixed, is_block=is_block)
        dest, what = device, disk.describe()
    cmd = image.copy_command(dest)
    if r.dry_run:
        say(f"would write {image.compressed.name} ({format_size(image.size)}) to {what}:")
        say("  " + " ".join(cmd))
        say(f"  then read the partition table back and check root PARTUUID "
            f"{image.root_partuuid}")
        return dest
    if device and not r.yes and not r.confirm(f"Write {image.compressed.name} to {what}? "
                                               "Everything on it is lost"):
        raise BuilderError("not written: no confirmation (add --yes to skip the question)")
    with step(f"writing {image.compressed.name} to {dest} (bmaptool, checksums checked)"
              ) as line:
        run(cmd, what=f"writing the image to {dest} (bmaptool copy)", on_line=line)
    if device:  # the kernel reads the new table; udev makes its partitions' links
        subprocess.run(["blockdev", "--rereadpt", device], capture_output=True)
        subprocess.run(["udevadm", "settle"], capture_output=True)
    found = partuuids(dest)
    if image.root_partuuid.lower() not in found:
        raise BuilderError(f"{dest}: written, but reading it back shows partitions "
                           f"{', '.join(found) or 'none'}, not root PARTUUID "
                           f"{image.root_partuuid}; the medium may be faulty")
    return dest
