"""Installing packages into a rootfs taken from a vendor (a Raspberry Pi OS image,
NVIDIA's L4T sample rootfs) with its own apt, in a chroot.

Why this step is not mount-free: dpkg's maintainer scripts need /proc, /sys and /dev,
so it bind-mounts them into the chroot and takes them out again whatever happens. It
runs only when a package the roles need is missing; a foreign architecture runs under
qemu-user (the caller sets up binfmt first).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..run import run
from . import parse_dpkg_status


@contextlib.contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    mounted: list[Path] = []
    try:
        for src in ("/proc", "/sys", "/dev"):
            dst = tree / src.lstrip("/")
            dst.mkdir(parents=True, exist_ok=True)
            run(["mount", "--rbind", src, dst], what=f"bind-mounting {src} for apt")
            mounted.append(dst)
        yield
    finally:
        for dst in reversed(mounted):
            subprocess.run(["umount", "-R", "--lazy", str(dst)], check=False)


def install_missing(tree: Path, packages: list[str], log_file: Path | None) -> list[str]:
    have = parse_dpkg_status((tree / "var/lib/dpkg/status").read_text())
    missing = [p for p in packages if p.split("=")[0] not in have]
    if not missing:
        return []
    resolv = tree / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    with contextlib.suppress(OSError):
        resolv.unlink()
    shutil.copyfile("/etc/resolv.conf", resolv)
    try:
        with _chroot_mounts(tree):
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            run(["chroot", tree, "apt-get", "update", "-qq"], what="apt-get update (chroot)",
                env=env, log_file=log_file)
            run(["chroot", tree, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                 *missing], what=f"apt-get install {' '.join(missing)} (chroot)", env=env,
                log_file=log_file)
            run(["chroot", tree, "apt-get", "clean"], what="apt-get clean", log_file=log_file)
    finally:
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)
    return missing
