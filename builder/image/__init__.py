"""Disk images from a rootfs tree, without loop devices or mounts: the parts every
layout shares. Filesystems are made from directories (`mkfs.ext4 -d`, `mkfs.vfat -C`
filled with mtools), placed into a sparse file partitioned by `sfdisk`, then a block
map (bmaptool) and a compressed copy (zstd) are written beside it. Every identifier
derives from a seed string, so the same inputs give the same image: no root, no /dev,
nothing random.

Layouts (uefi_gpt for x86; the Raspberry Pi's MBR layout) say which partitions, which
boot files and which ids; they live in their own modules.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cache import sha256_file
from ..errors import BuilderError
from ..progress import step
from ..run import run
from ..units import KiB, MiB, format_size

SECTOR = 512
INODE_SIZE = 256
ROOT_HEADROOM = 0.25  # free space on a fresh image: logs, apt, state until it is grown
ROOT_EXTRA = 128 * MiB  # journal, inode tables and bitmaps that usage does not count
ROOT_ROUND = 64 * MiB
_NAMESPACE = uuid.UUID("0b5c4f9e-7f52-4b8e-9a1d-6f3c2e1d0a77")  # this builder's ids


class Ids:
    """Identifiers derived from one seed (the release id): a UUID or hex digits per name."""

    def __init__(self, seed: str) -> None:
        self.seed = seed

    def uuid(self, name: str) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.seed}/{name}"))

    def hex(self, name: str, digits: int) -> str:
        return hashlib.sha256(f"{self.seed}/{name}".encode()).hexdigest()[:digits]


@dataclass(frozen=True)
class Usage:
    """What a tree needs on ext4: data blocks (4 KiB each) and inodes."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class ImageResult:
    raw: Path
    bmap: Path
    zst: Path  # the compressed copy (.zst or .xz)
    sha256: str  # of the raw image
    size: int  # of the raw image, bytes
    root_partuuid: str
    kernel_version: str


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def root_size(usage: Usage) -> tuple[int, int]:
    """Size in bytes and inode count of the root filesystem for a tree of `usage`.

    Inodes are set explicitly: mke2fs's ratio for small filesystems would give too
    few for a rootfs of many small files, and its ratio for large ones wastes space."""
    inodes = round_up(int(usage.inodes * (1 + ROOT_HEADROOM)) + 1024, 1024)
    raw = int(usage.bytes * (1 + ROOT_HEADROOM)) + inodes * INODE_SIZE + ROOT_EXTRA
    return round_up(raw, ROOT_ROUND), inodes


def measure(rootfs: Path) -> Usage:
    """Data blocks and inodes the tree takes on ext4 (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total, inodes = 0, 1
    for dirpath, dirnames, filenames in os.walk(rootfs):
        total += 4 * KiB  # the directory's own block (big ones take more: headroom)
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            if stat.S_ISREG(st.st_mode):
                total += round_up(st.st_size, 4 * KiB)
            elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:  # shorter: in the inode
                total += 4 * KiB
    return Usage(bytes=total, inodes=inodes)


def check_disk(disk_size: int, storage: int | None) -> None:
    if storage is not None and disk_size > storage:
        raise BuilderError(
            f"disk too small for the rootfs: needs {format_size(disk_size)}, device "
            f"storage is {format_size(storage)}; raise device.storage.size in the "
            f"profile or make the rootfs smaller (fewer packages, a smaller model)")


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BuilderError(f"SOURCE_DATE_EPOCH must be a number of seconds, got {value!r}")
    return int(value)


# --- filesystems -------------------------------------------------------------------------

def mkfs_ext4(tree: Path, out: Path, *, size: int, inodes: int, label: str, fs_uuid: str,
              hash_seed: str, log_file: Path | None, on_line: Callable[[str], None],
              epoch: int | None) -> None:
    """An ext4 image of `tree`, 4 KiB blocks, ids fixed, owned by root."""
    # E2FSPROGS_FAKE_TIME fixes the superblock's times (1.47.0 ignores SOURCE_DATE_EPOCH)
    env = {} if epoch is None else {"E2FSPROGS_FAKE_TIME": str(epoch),
                                    "SOURCE_DATE_EPOCH": str(epoch)}
    run(["mkfs.ext4", "-q", "-F", "-d", tree, "-L", label, "-U", fs_uuid,
         "-b", "4096", "-I", str(INODE_SIZE), "-N", str(inodes),
         # lazy_itable_init=1 whatever the host's kernel says (mke2fs's default depends
         # on it): the same image everywhere, and the guest zeroes its inode tables on
         # first mount, so blocks bmaptool skips on the device do not matter.
         "-E", f"root_owner=0:0,hash_seed={hash_seed},lazy_itable_init=1",
         out, f"{size // KiB}k"],
        what="making the root filesystem (mkfs.ext4 -d)", env=env, log_file=log_file,
        on_line=on_line)


def fat_image(out: Path, *, size: int, label: str, volid: str,
              files: list[tuple[Path, str]], log_file: Path | None,
              on_line: Callable[[str], None], epoch: int | None) -> None:
    """A FAT32 image holding `files` ((source, path inside, e.g. 'EFI/BOOT/BOOTX64.EFI')),
    directories made as needed, timestamps from SOURCE_DATE_EPOCH when set."""
    # mtools takes its timestamps from SOURCE_DATE_EPOCH; mkfs.fat 4.2 does not, but its
    # --invariant fixes the label's timestamp (the volume id comes from -i after it).
    env = {"TZ": "UTC"} if epoch is None else {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC"}
    invariant = [] if epoch is None else ["--invariant"]
    run(["mkfs.vfat", *invariant, "-F", "32", "-n", label, "-i", volid, "-C", out,
         str(size // KiB)], what=f"making the {label} filesystem (mkfs.vfat)", env=env,
        log_file=log_file, on_line=on_line)
    img = ["-i", str(out)]
    dirs = sorted({str(Path(dst).parents[i]) for _, dst in files
                   for i in range(len(Path(dst).parents) - 1)}, key=len)
    if dirs:
        run(["mmd", *img, *(f"::/{d}" for d in dirs)], what=f"filling {label} (mmd)",
            env=env, log_file=log_file)
    for src, dst in files:
        if src.is_dir():
            run(["mcopy", *img, "-s", "-m", "-o", src, f"::/{dst}"],
                what=f"copying {dst} to {label} (mcopy)", env=env, log_file=log_file)
        else:
            run(["mcopy", *img, "-m", "-o", src, f"::/{dst}"],
                what=f"copying {dst} to {label} (mcopy)", env=env, log_file=log_file)


# --- the disk ------------------------------------------------------------------------------

def assemble(raw: Path, disk_size: int, table: str, parts: list[tuple[Path, int]],
             log_file: Path | None) -> None:
    """A sparse file of `disk_size` partitioned by the sfdisk script `table`, each
    (image, byte offset) of `parts` written in place."""
    run(["truncate", "-s", str(disk_size), raw], what="creating the disk image",
        log_file=log_file)
    script = raw.with_name("table.sfdisk")
    script.write_text(table)
    # run() closes stdin and sfdisk reads its script only from stdin: a shell redirects
    # it, with the paths as positional arguments, never pasted into the command string.
    run(["sh", "-c", 'exec sfdisk --quiet --no-reread --no-tell-kernel "$1" < "$2"', "sh",
         raw, script], what="writing the partition table (sfdisk)", log_file=log_file)
    script.unlink()
    for part, offset in parts:
        run(["dd", f"if={part}", f"of={raw}", "bs=4M", f"seek={offset}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"],
            what=f"placing {part.name} in the disk image (dd)", log_file=log_file)
        part.unlink()


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A temporary directory in `out_dir`, removed afterwards whatever happens: a failure
    leaves the previous image (or none), never a half-written one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-image-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# How a compressed copy is made: zstd (fast, what bmaptool and dd users unpack) or xz
# (what Raspberry Pi Imager and the Pi world expect: *.img.xz).
COMPRESSORS = {
    "zst": lambda src, dst: ["zstd", "-T0", "-q", "--long", "-f", src, "-o", dst],
    "xz": lambda src, dst: ["sh", "-c", 'exec xz -T0 -3 -c -- "$1" > "$2"', "sh", src, dst],
}


def publish(tmp: Path, out_dir: Path, name: str, *, root_partuuid: str, kernel_version: str,
            log_file: Path | None, compress: str = "zst") -> ImageResult:
    """tmp/<name> -> out_dir/<name> with <stem>.bmap and <name>.<compress> beside it."""
    raw = tmp / name
    bmap, zst = raw.with_suffix(".bmap"), tmp / f"{name}.{compress}"
    with step("writing the block map (bmaptool)") as on_line:
        run(["bmaptool", "-q", "create", "-o", bmap, raw], what="writing the block map",
            log_file=log_file, on_line=on_line)
    with step(f"compressing the disk image ({compress})") as on_line:
        run(COMPRESSORS[compress](raw, zst), what=f"compressing the disk image ({compress})",
            log_file=log_file, on_line=on_line)
    digest = sha256_file(raw)
    size = raw.stat().st_size
    finals = {p.name: out_dir / p.name for p in (raw, bmap, zst)}
    # the raw image goes last, and an old one first: its presence means the set is whole
    finals[name].unlink(missing_ok=True)
    for p in (bmap, zst, raw):
        os.replace(p, finals[p.name])
    return ImageResult(raw=finals[name], bmap=finals[bmap.name], zst=finals[zst.name],
                       sha256=digest, size=size, root_partuuid=root_partuuid,
                       kernel_version=kernel_version)
