"""A root filesystem taken from a vendor's disk image (Raspberry Pi OS Lite), as sdm
customises one: the image's root partition read with debugfs and its boot partition
with mtools - no loop devices, no mounts - into a tree, then the packages the roles
need installed with the image's own apt in a chroot, and the tree cached as a tarball.

The apt step is not mount-free (chroot_apt.py says why); it runs only when a package is
missing. A foreign architecture runs under qemu-user (binfmt.ensure).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ...cache import Cache, pinned_sha256
from ...errors import BuilderError, display_path
from ...progress import step
from ...rootfs import Rootfs, parse_dpkg_status
from ...rootfs.binfmt import ensure, host_arch
from ...rootfs.chroot_apt import install_missing
from ...run import run

FROM_IMAGE_VERSION = 1
SECTOR = 512


@dataclass(frozen=True)
class ImageSpec:
    image: Path  # the vendor's .img or .img.xz
    sha256: str | None  # pinned; None: taken as is, with a warning
    arch: str
    qemu: str
    packages: list[str]  # what must be installed (missing ones are)
    boot_dir: str = "boot/firmware"  # where the boot partition is mounted on the device
    what: str = "--base-image"


def partitions(image: Path) -> list[dict]:
    table = json.loads(run(["sfdisk", "--json", image], what="reading the partition table"))
    return table["partitiontable"]["partitions"]


@contextlib.contextmanager
def _raw(image: Path, work: Path) -> Iterator[Path]:
    """The image uncompressed (an .xz is unpacked beside the work)."""
    if image.suffix != ".xz":
        yield image
        return
    raw = work / image.stem
    run(["sh", "-c", 'exec xz -dc -- "$1" > "$2"', "sh", image, raw],
        what=f"unpacking {image.name}")
    try:
        yield raw
    finally:
        raw.unlink(missing_ok=True)


def extract(image: Path, tree: Path, boot_dir: str, log_file: Path | None) -> None:
    """The root partition (the last Linux one) into `tree`, the boot partition (the first
    FAT one) into tree/<boot_dir>."""
    parts = partitions(image)
    fat = next((p for p in parts if p["type"].lower() in ("c", "b", "e")), None)
    root = next((p for p in reversed(parts) if p["type"].lower() == "83"), None)
    if fat is None or root is None:
        raise BuilderError(f"{display_path(image)}: not a Raspberry Pi OS layout (a FAT boot "
                           "partition and a Linux root partition)")
    part = tree.parent / "root.ext4"
    run(["dd", f"if={image}", f"of={part}", "bs=4M", f"skip={root['start'] * SECTOR}",
         f"count={root['size'] * SECTOR}", "iflag=skip_bytes,count_bytes", "conv=sparse",
         "status=none"], what="reading the root partition", log_file=log_file)
    tree.mkdir(parents=True, exist_ok=True)
    # rdump keeps owners and modes when run as root
    run(["debugfs", "-R", f"rdump / {tree}", part], what="copying the root partition "
        "(debugfs rdump)", log_file=log_file)
    part.unlink()
    boot = tree / boot_dir
    boot.mkdir(parents=True, exist_ok=True)
    run(["mcopy", "-s", "-p", "-m", "-n", "-i", f"{image}@@{fat['start'] * SECTOR}", "::/*",
         boot], what="copying the boot partition (mcopy)", log_file=log_file)


def build(spec: ImageSpec, cache: Cache) -> Rootfs:
    digest = pinned_sha256(spec.image, spec.sha256, spec.what)
    inputs = {"from_image_version": FROM_IMAGE_VERSION, "image": digest, "arch": spec.arch,
              "packages": spec.packages, "boot_dir": spec.boot_dir}

    def do_build(out: Path, log_file: Path) -> dict:
        work = out.parent / "work"
        tree = work / "tree"
        work.mkdir()
        try:
            with step(f"customising {spec.image.name}") as line:
                with _raw(spec.image, work) as raw:
                    extract(raw, tree, spec.boot_dir, log_file)
                line("installing what the roles need")
                if spec.arch != host_arch():
                    ensure(spec.qemu, f"{spec.what}: {spec.arch}")
                added = install_missing(tree, spec.packages, log_file)
                run(["tar", "--numeric-owner", "-cpf", out / "rootfs.tar", "-C", tree, "."],
                    what="archiving the customised rootfs", log_file=log_file)
            installed = parse_dpkg_status((tree / "var/lib/dpkg/status").read_text())
        finally:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        return {"packages": installed, "added": added, "base_image": spec.image.name}

    return Rootfs(cache.get_or_build("rootfs", inputs, do_build,
                                     label=f"rootfs from {spec.image.name}"))
