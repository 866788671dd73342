"""A bootable UEFI GPT disk image from a rootfs tree, without loop devices or mounts.

The root filesystem is made by `mkfs.ext4 -d`, the ESP by `mkfs.vfat -C` and filled
with mtools (systemd-boot, one loader entry, kernel and initrd), and both are placed
into a sparse file partitioned by `sfdisk`. Every id (disk and partition GUIDs,
filesystem UUID, FAT volume id, ext4 hash seed) derives from a seed string, so the
same inputs give the same image: no root, no /dev, nothing random.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cache import sha256_file
from .errors import BuilderError
from .progress import step
from .run import run
from .units import KiB, MiB, format_size

SECTOR = 512
ALIGN = 1 * MiB  # partitions start on MiB boundaries; also room for the primary GPT
GPT_TAIL = 1 * MiB  # room for the backup GPT (33 sectors), kept MiB-aligned
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# The Discoverable Partitions Specification's "Linux root (x86-64)": systemd-gpt-auto
# and systemd-repart recognise it without an fstab.
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
SYSTEMD_BOOT = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
ROOT_HEADROOM = 0.25  # free space on a fresh image: logs, apt, state until growfs
ROOT_EXTRA = 128 * MiB  # journal, inode tables and bitmaps that usage does not count
ROOT_ROUND = 64 * MiB
INODE_SIZE = 256
_NAMESPACE = uuid.UUID("0b5c4f9e-7f52-4b8e-9a1d-6f3c2e1d0a77")  # this builder's ids


@dataclass(frozen=True)
class ImageLayout:
    esp_size: int = 256 * MiB
    root_label: str = "edge-root"
    esp_label: str = "EDGE-ESP"


@dataclass(frozen=True)
class ImageIds:
    """Every identifier written into the image, derived from one seed."""

    disk: str
    esp_partuuid: str
    root_partuuid: str
    root_fs_uuid: str
    root_hash_seed: str
    esp_volid: str  # 8 hex digits, FAT volume serial

    @classmethod
    def from_seed(cls, seed: str) -> ImageIds:
        def u(name: str) -> str:
            return str(uuid.uuid5(_NAMESPACE, f"{seed}/{name}"))

        volid = hashlib.sha256(f"{seed}/esp-volid".encode()).hexdigest()[:8]
        return cls(disk=u("disk"), esp_partuuid=u("esp"), root_partuuid=u("root"),
                   root_fs_uuid=u("root-fs"), root_hash_seed=u("root-hash-seed"),
                   esp_volid=volid)


@dataclass(frozen=True)
class Usage:
    """What a tree needs on ext4: data blocks (4 KiB each) and inodes."""

    bytes: int
    inodes: int


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


@dataclass(frozen=True)
class ImageResult:
    raw: Path
    bmap: Path
    zst: Path
    sha256: str  # of image.raw
    size: int  # of image.raw, bytes
    root_partuuid: str
    ids: ImageIds
    kernel_version: str


# --- pure: sizes, layout, text of the files written ----------------------------------

def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def root_size(usage: Usage) -> tuple[int, int]:
    """Size in bytes and inode count of the root filesystem for a tree of `usage`.

    Inodes are set explicitly: mke2fs's ratio for small filesystems would give too
    few for a rootfs of many small files, and its ratio for large ones wastes space."""
    inodes = round_up(int(usage.inodes * (1 + ROOT_HEADROOM)) + 1024, 1024)
    raw = int(usage.bytes * (1 + ROOT_HEADROOM)) + inodes * INODE_SIZE + ROOT_EXTRA
    return round_up(raw, ROOT_ROUND), inodes


def plan_disk(usage: Usage, layout: ImageLayout) -> DiskPlan:
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
    if disk_size is not None and plan.disk_size > disk_size:
        raise BuilderError(
            f"disk too small for the rootfs: needs {format_size(plan.disk_size)}, device "
            f"storage is {format_size(disk_size)}; raise device.storage.size in the "
            f"profile or make the rootfs smaller (fewer packages, a smaller model)")


def sfdisk_script(plan: DiskPlan, ids: ImageIds) -> str:
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
        part(plan.root_offset, plan.root_size, ROOT_X86_64_TYPE,
             ids.root_partuuid.upper(), "root"),
        "",
    ])


def loader_conf() -> str:
    return "default edge.conf\ntimeout 0\neditor no\n"


def boot_entry(root_partuuid: str, cmdline: str) -> str:
    return ("title edge-llm appliance\n"
            "linux /vmlinuz\n"
            "initrd /initrd.img\n"
            f"options root=PARTUUID={root_partuuid} rw {cmdline}\n")


def _version_key(version: str) -> list[int | str]:
    # "6.1.0-10-cloud-amd64" after "6.1.0-9-cloud-amd64": compare digit runs as numbers
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version)]


def pick_kernel(names: list[str]) -> str | None:
    """The newest kernel version among /boot file names (vmlinuz-VERSION)."""
    versions = [n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-")]
    return max(versions, key=_version_key) if versions else None


# --- observing the rootfs --------------------------------------------------------------

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


def boot_files(rootfs: Path) -> BootFiles:
    boot = rootfs / "boot"
    names = sorted(p.name for p in boot.iterdir()) if boot.is_dir() else []
    version = pick_kernel(names)
    if version is None:
        raise BuilderError(f"no kernel in {boot}: install a kernel package "
                           f"(linux-image-cloud-amd64) in the rootfs")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.is_file():
        raise BuilderError(f"no initramfs for kernel {version} in {boot}: install "
                           f"initramfs-tools in the rootfs")
    efi = rootfs / SYSTEMD_BOOT
    if not efi.is_file():
        raise BuilderError(f"no systemd-boot in the rootfs ({SYSTEMD_BOOT}): install "
                           f"systemd-boot-efi in the rootfs")
    return BootFiles(kernel=boot / f"vmlinuz-{version}", initrd=initrd, version=version,
                     efi=efi)


def _source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BuilderError(f"SOURCE_DATE_EPOCH must be a number of seconds, got {value!r}")
    return int(value)


# --- building ----------------------------------------------------------------------------

def _mkfs_root(rootfs: Path, out: Path, plan: DiskPlan, layout: ImageLayout, ids: ImageIds,
               epoch: int | None, log_file: Path | None, on_line: Callable[[str], None]) -> None:
    # E2FSPROGS_FAKE_TIME fixes the superblock's times (1.47.0 ignores SOURCE_DATE_EPOCH)
    env = {} if epoch is None else {"E2FSPROGS_FAKE_TIME": str(epoch),
                                    "SOURCE_DATE_EPOCH": str(epoch)}
    run(["mkfs.ext4", "-q", "-F", "-d", rootfs, "-L", layout.root_label, "-U", ids.root_fs_uuid,
         "-b", "4096", "-I", str(INODE_SIZE), "-N", str(plan.root_inodes),
         # lazy_itable_init=1 whatever the host's kernel says (mke2fs's default depends
         # on it): the same image everywhere, and the guest zeroes its inode tables on
         # first mount, so blocks bmaptool skips on the device do not matter.
         "-E", f"root_owner=0:0,hash_seed={ids.root_hash_seed},lazy_itable_init=1",
         out, f"{plan.root_size // KiB}k"],
        what="making the root filesystem (mkfs.ext4 -d)", env=env, log_file=log_file,
        on_line=on_line)


def _mkfs_esp(out: Path, tmp: Path, boot: BootFiles, plan: DiskPlan,
              layout: ImageLayout, ids: ImageIds, cmdline: str, epoch: int | None,
              log_file: Path | None, on_line: Callable[[str], None]) -> None:
    # mtools takes its timestamps from SOURCE_DATE_EPOCH; mkfs.fat 4.2 does not, but its
    # --invariant fixes the label's timestamp (the volume id comes from -i after it).
    env = {"TZ": "UTC"} if epoch is None else {"SOURCE_DATE_EPOCH": str(epoch), "TZ": "UTC"}
    invariant = [] if epoch is None else ["--invariant"]
    run(["mkfs.vfat", *invariant, "-F", "32", "-n", layout.esp_label, "-i", ids.esp_volid,
         "-C", out, str(plan.esp_size // KiB)],
        what="making the ESP (mkfs.vfat)", env=env, log_file=log_file, on_line=on_line)
    conf = tmp / "loader.conf"
    conf.write_text(loader_conf())
    entry = tmp / "edge.conf"
    entry.write_text(boot_entry(ids.root_partuuid, cmdline))
    if epoch is not None:  # mcopy -m keeps these mtimes; the rootfs's own files keep theirs
        for p in (conf, entry):
            os.utime(p, (epoch, epoch))
    img = ["-i", str(out)]
    run(["mmd", *img, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"],
        what="filling the ESP (mmd)", env=env, log_file=log_file)
    for src, dst in ((boot.efi, "::/EFI/BOOT/BOOTX64.EFI"), (boot.kernel, "::/vmlinuz"),
                     (boot.initrd, "::/initrd.img"), (conf, "::/loader/loader.conf"),
                     (entry, "::/loader/entries/edge.conf")):
        run(["mcopy", *img, "-m", "-o", src, dst], what=f"copying {dst[3:]} to the ESP (mcopy)",
            env=env, log_file=log_file)


def _assemble(raw: Path, esp: Path, root: Path, plan: DiskPlan, ids: ImageIds,
              log_file: Path | None) -> None:
    run(["truncate", "-s", str(plan.disk_size), raw], what="creating the disk image",
        log_file=log_file)
    script = raw.with_name("gpt.sfdisk")
    script.write_text(sfdisk_script(plan, ids))
    # run() closes stdin and sfdisk reads its script only from stdin: a shell redirects
    # it, with the paths as positional arguments, never pasted into the command string.
    run(["sh", "-c", 'exec sfdisk --quiet --no-reread --no-tell-kernel "$1" < "$2"', "sh",
         raw, script], what="writing the GPT (sfdisk)", log_file=log_file)
    for part, offset in ((esp, plan.esp_offset), (root, plan.root_offset)):
        run(["dd", f"if={part}", f"of={raw}", "bs=4M", f"seek={offset}", "oflag=seek_bytes",
             "conv=notrunc,sparse", "status=none"],
            what=f"placing {part.name} in the disk image (dd)", log_file=log_file)


def make_image(rootfs: Path, out_dir: Path, *, kernel_cmdline: str = "console=ttyS0 quiet",
               disk_size: int | None, layout: ImageLayout = ImageLayout(), seed: str,
               log_file: Path | None = None) -> ImageResult:
    """Build image.raw (+ .bmap, .zst) in `out_dir` from the tree at `rootfs`.

    Built in a temporary directory inside `out_dir` and renamed into place: a failure
    leaves the previous image (or none), never a half-written one."""
    if not rootfs.is_dir():
        raise BuilderError(f"rootfs {rootfs} is not a directory")
    if "\n" in kernel_cmdline:
        raise BuilderError("the kernel command line must be one line")
    boot = boot_files(rootfs)
    ids = ImageIds.from_seed(seed)
    plan = plan_disk(measure(rootfs), layout)
    check_fits(plan, disk_size, boot.size)
    epoch = _source_date_epoch()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-image-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        raw, bmap, zst = tmp / "image.raw", tmp / "image.bmap", tmp / "image.raw.zst"
        with step(f"building the disk image ({format_size(plan.disk_size)})") as on_line:
            _mkfs_root(rootfs, tmp / "root.img", plan, layout, ids, epoch, log_file, on_line)
            _mkfs_esp(tmp / "esp.img", tmp, boot, plan, layout, ids, kernel_cmdline,
                      epoch, log_file, on_line)
            _assemble(raw, tmp / "esp.img", tmp / "root.img", plan, ids, log_file)
            for scratch in ("esp.img", "root.img"):
                (tmp / scratch).unlink()
            run(["bmaptool", "-q", "create", "-o", bmap, raw], what="writing the block map",
                log_file=log_file, on_line=on_line)
        with step("compressing the disk image (zstd)") as on_line:
            run(["zstd", "-T0", "-q", "--long", "-f", raw, "-o", zst],
                what="compressing the disk image (zstd)", log_file=log_file, on_line=on_line)
        digest = sha256_file(raw)
        finals = {p.name: out_dir / p.name for p in (raw, bmap, zst)}
        # image.raw goes last, and an old one first: its presence means the set is whole
        finals["image.raw"].unlink(missing_ok=True)
        for p in (bmap, zst, raw):
            os.replace(p, finals[p.name])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ImageResult(raw=finals["image.raw"], bmap=finals["image.bmap"],
                       zst=finals["image.raw.zst"], sha256=digest,
                       size=plan.disk_size, root_partuuid=ids.root_partuuid, ids=ids,
                       kernel_version=boot.version)
