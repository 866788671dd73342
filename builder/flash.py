"""`builder flash` for targets that deliver a disk image: bmaptool writes it to an SD
card, a USB stick or an SSD, checking every block's sha256 as it goes - and only after
the device has been checked: never the disk the host runs from, never a device with a
mounted partition, never one smaller than the image, never a fixed (non-removable) disk
unless asked, never something that is not a block device (a file only with --to-file).
What a device is comes from lsblk's JSON (a view tests build from fixtures). After
writing, the partition table is read back and the root's PARTUUID checked.

What is checked is what is written: the device is opened once, by the node lsblk named,
after the question; the descriptor must be the device (major:minor) the checks were
about, and bmaptool and the read-back reach it through that descriptor
(/proc/self/fd/N), never through a path that could be re-pointed. --to-file writes a
new file beside the destination and renames it into place: an existing file (or a
link) is replaced only with --force, and never written through."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import doctor
from .errors import BuilderError, display_path
from .progress import step
from .run import run
from .units import format_size

LSBLK = ["lsblk", "-J", "-b", "-o",
         "NAME,PATH,MAJ:MIN,SIZE,RM,TYPE,TRAN,MODEL,SERIAL,MOUNTPOINTS"]
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/usr", "/var", "/home", "[SWAP]")
# linux/fs.h: drop the device's cached blocks (the read-back then reads the medium);
# read the partition table again (what `blockdev --rereadpt` does)
BLKFLSBUF, BLKRRPART = 0x1261, 0x125F


@dataclass(frozen=True)
class Disk:
    path: str
    size: int
    removable: bool  # RM=1, or on a USB or SD/MMC bus
    model: str
    serial: str
    mounts: tuple[str, ...]  # of the disk and every partition on it
    kind: str  # lsblk TYPE: disk, loop, ...
    rdev: int | None = None  # its major:minor (os.makedev), as lsblk saw it

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
                mounts=tuple(mounts), kind=dev.get("type") or "disk",
                rdev=_rdev(dev.get("maj:min")))
        return view

    @classmethod
    def read(cls) -> BlockView:
        return cls.from_lsblk(run(LSBLK, what="listing block devices (lsblk)"))


def _rdev(text: str | None) -> int | None:
    major, _, minor = (text or "").partition(":")
    return os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() \
        else None


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
        if not os.path.exists(device):
            raise BuilderError(f"--device {device}: does not exist (`lsblk -d -o NAME,SIZE,"
                               "MODEL,SERIAL` lists this machine's disks)")
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
    force: bool = False  # --to-file: replace what is at the path (never write through it)
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


def ask(question: str) -> bool:
    """The question on stderr, the answer from stdin. Standard input at its end (a
    script, CI) cannot answer: that is a one-line refusal naming --yes, not an
    interruption. The question is not shown when an answer or the end is already
    there on a stdin that is no terminal."""
    stdin = sys.stdin
    try:
        ready = stdin is not None and not stdin.isatty() \
            and bool(select.select([stdin], [], [], 0)[0])
    except (OSError, ValueError):  # no descriptor to wait on
        ready = False
    waiting = stdin is not None and not ready
    if waiting:
        print(f"{question} [y/N]: ", end="", file=sys.stderr, flush=True)
    answer = stdin.readline() if stdin is not None else ""
    if not answer:
        if waiting:
            print(file=sys.stderr)
        raise BuilderError("not written: standard input is closed, so nobody can answer "
                           "the question; add --yes to write without asking")
    return answer.strip().lower() in ("y", "yes")


def partuuids(target: str, pass_fds: tuple[int, ...] = ()) -> list[str]:
    """The partition ids of the table at `target`, as sfdisk reads it from the device
    or file itself (no udev): GPT partition UUIDs, or MBR <disk id>-<number>."""
    table = json.loads(run(["sfdisk", "--json", target], what="reading the partition table "
                           "back (sfdisk)", pass_fds=pass_fds))["partitiontable"]
    label_id = table.get("id", "").lower().removeprefix("0x")
    out = []
    for i, part in enumerate(table.get("partitions", []), start=1):
        out.append((part.get("uuid") or f"{label_id}-{i:02d}").lower())
    return out


def flash(image: Image, r: Request, *, view: BlockView | None = None,
          is_block: Callable[[str], bool] = _is_block) -> str:
    """Write `image` to r.device (checked) or r.to_file; returns where it went."""
    if r.massflash or r.no_package:
        raise BuilderError("--massflash and --no-package are for Jetson flash packages; a "
                           "disk image is written with --device or --to-file")
    if bool(r.device) == bool(r.to_file):
        raise BuilderError("say where: --device /dev/sdX (a card or disk) or --to-file PATH")
    if r.force and not r.to_file:
        raise BuilderError("--force replaces a file at --to-file PATH; a device is never "
                           "forced (a fixed disk takes --force-fixed)")
    doctor.require("flash")
    if r.to_file is not None:
        return _flash_file(image, r, r.to_file, is_block)
    assert r.device is not None
    return _flash_device(image, r, r.device, (lambda: view) if view else BlockView.read,
                         is_block)


def _flash_device(image: Image, r: Request, device: str, look: Callable[[], BlockView],
                  is_block: Callable[[str], bool]) -> str:
    disk = check_device(device, image.size, look(), force_fixed=r.force_fixed,
                        is_block=is_block)
    where = device if device == disk.path else f"{device} ({disk.path})"
    if r.dry_run:
        _say_plan(image, r, image.copy_command(disk.path), disk.describe(),
                  f"{disk.path} opened once after the question, and only if it is still "
                  "the device checked here")
        return where
    if not r.yes and not r.confirm(f"Write {image.compressed.name} to {disk.describe()}? "
                                   "Everything on it is lost"):
        raise BuilderError("not written: no confirmation (add --yes to skip the question)")
    with _opened(device, disk, image.size, look, r.force_fixed, is_block) as fd:
        _write(image, fd, disk.path)
        _settle(fd)
        _check_read_back(image, fd, disk.path)
    return where


@contextlib.contextmanager
def _opened(device: str, disk: Disk, image_size: int, look: Callable[[], BlockView],
            force_fixed: bool, is_block: Callable[[str], bool]) -> Iterator[int]:
    """The checked disk, opened once by the node lsblk named, and only if it is still the
    device the checks were about (major:minor) and they still hold: the path could have
    been re-pointed, the node replaced or the card swapped while the question waited.
    Everything after reaches the device through this descriptor."""
    if disk.rdev is None:
        raise BuilderError(f"--device {device}: lsblk did not give its major:minor, so "
                           "what is written could not be checked to be what was checked; "
                           "nothing written")
    try:
        fd = os.open(disk.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise BuilderError(f"--device {device}: cannot open {disk.path}: {e.strerror}; "
                           "nothing written") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode) or st.st_rdev != disk.rdev:
            now = _majmin(st.st_rdev) if stat.S_ISBLK(st.st_mode) else "not a block device"
            raise BuilderError(f"--device {device}: {disk.path} changed between the checks "
                               f"and the write (checked {_majmin(disk.rdev)}, now {now}); "
                               "nothing written, run again")
        again = check_device(disk.path, image_size, look(), force_fixed=force_fixed,
                             is_block=is_block)
        if again != disk:
            raise BuilderError(f"--device {device}: changed while the question waited (was "
                               f"{disk.describe()}, now {again.describe()}); nothing "
                               "written, run again")
        yield fd
    finally:
        os.close(fd)


def _majmin(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _flash_file(image: Image, r: Request, to_file: Path,
                is_block: Callable[[str], bool]) -> str:
    """A new file beside `to_file`, written and read back, then renamed onto it: what was
    at the path (only with --force) is replaced, never written through."""
    if os.path.lexists(to_file):
        if is_block(str(to_file)):
            raise BuilderError(f"--to-file {to_file}: a block device; use --device for that")
        if to_file.is_dir():
            raise BuilderError(f"--to-file {to_file}: a directory; name the image file to "
                               "write")
        if not r.force:
            what = "a link" if to_file.is_symlink() else "a file"
            raise BuilderError(f"--to-file {to_file}: {what} is already there; add --force "
                               "to replace it (a link is replaced, not written through)")
    if not to_file.parent.is_dir():
        raise BuilderError(f"--to-file {to_file}: no directory "
                           f"{display_path(to_file.parent)} to write it in")
    what = f"the file {display_path(to_file)}"
    if r.dry_run:
        _say_plan(image, r, image.copy_command(str(to_file)), what,
                  "a new file beside it, renamed into place once read back")
        return str(to_file)
    tmp = to_file.with_name(f".{to_file.name}.flash-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of this pid's: ours to remove
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        _write(image, fd, str(to_file))
        _check_read_back(image, fd, str(to_file))
        if not _same_file(tmp, fd):  # the directory's writers could swap the name
            raise BuilderError(f"{display_path(tmp)} was replaced while it was written; "
                               f"{display_path(to_file)} left as it was")
        os.replace(tmp, to_file)
    except BaseException:
        if _same_file(tmp, fd):
            tmp.unlink()
        raise
    finally:
        os.close(fd)
    return str(to_file)


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _say_plan(image: Image, r: Request, cmd: list[str], what: str, through: str) -> None:
    r.say(f"would write {image.compressed.name} ({format_size(image.size)}) to {what}:")
    r.say("  " + " ".join(cmd))
    r.say(f"  (written through {through})")
    r.say(f"  then read the partition table back and check root PARTUUID "
          f"{image.root_partuuid}")


def _fd_path(fd: int) -> str:
    """A path that opens exactly what `fd` is, in a child that inherits it."""
    return f"/proc/self/fd/{fd}"


def _write(image: Image, fd: int, dest: str) -> None:
    with step(f"writing {image.compressed.name} to {dest} (bmaptool, checksums checked)"
              ) as line:
        run(image.copy_command(_fd_path(fd)), what=f"writing the image to {dest} "
            "(bmaptool copy)", on_line=line, pass_fds=(fd,))


def _settle(fd: int) -> None:
    """The kernel drops its cached blocks (the read-back then reads the medium) and
    reads the new table; udev, where there is one, makes the partitions' links. The
    read-back needs neither: containers and minimal hosts have no udev."""
    for request in (BLKFLSBUF, BLKRRPART):
        with contextlib.suppress(OSError):  # EINVAL: a loop device without partscan
            fcntl.ioctl(fd, request)
    if shutil.which("udevadm"):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["udevadm", "settle"], capture_output=True, timeout=120)


def _check_read_back(image: Image, fd: int, dest: str) -> None:
    found = partuuids(_fd_path(fd), pass_fds=(fd,))
    if image.root_partuuid.lower() not in found:
        raise BuilderError(f"{dest}: written, but reading it back shows partitions "
                           f"{', '.join(found) or 'none'}, not root PARTUUID "
                           f"{image.root_partuuid}; the medium may be faulty")
