"""Installing packages into a rootfs taken from a vendor (a Raspberry Pi OS image,
NVIDIA's L4T sample rootfs) with its own apt, in a chroot, from its own repositories
and any more the caller names (NVIDIA's JetPack repository: debian.AptSource). A
repository in a local directory is bind-mounted read-only into the chroot for the
install; the rootfs keeps the entry a device uses (device_uri), signed by the same key.

Why this step is not mount-free: dpkg's maintainer scripts need /proc, /sys and /dev,
so it bind-mounts them into the chroot and takes them out again whatever happens. It
runs only when a package the roles need is missing; a foreign architecture runs under
qemu-user (the caller sets up binfmt first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..run import run
from . import parse_dpkg_status
from .debian import AptSource

INSIDE = "run/edge-llm-apt"  # where local repositories appear in the chroot


@contextlib.contextmanager
def chroot_mounts(tree: Path) -> Iterator[None]:
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


def _local(src: AptSource) -> Path | None:
    uri = src.uri.removeprefix("file://")
    return Path(uri) if uri.startswith("/") else None


@contextlib.contextmanager
def _sources(tree: Path, sources: tuple[AptSource, ...]) -> Iterator[None]:
    """Each source listed for the build (a local one bind-mounted read-only), and
    listed as the device sees it afterwards, whatever happens. An entry the rootfs
    already has for the same repository (NVIDIA's BSP lists its own, keyed in
    trusted.gpg.d) is set aside meanwhile: apt refuses one repository with two keys,
    and a build from a mirror must not reach for the original."""
    mounted: list[Path] = []
    listed = tree / "etc/apt/sources.list.d"
    ours = {f"{s.name}.list" for s in sources}
    uris = {u.rstrip("/") for s in sources for u in (s.uri, s.device_uri)}
    aside = [f for f in sorted(listed.glob("*.list")) if f.name not in ours and any(
        u in f.read_text(errors="replace") for u in uris)] if listed.is_dir() else []
    written: list[AptSource] = []
    try:
        for f in aside:
            os.replace(f, f.with_name(f.name + ".edge-llm-aside"))
        for src in sources:
            keyring = src.keyring_inside
            (tree / "etc/apt/keyrings").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.keyring, tree / keyring.lstrip("/"))
            (tree / keyring.lstrip("/")).chmod(0o644)
            uri = src.uri
            local = _local(src)
            if local is not None:
                dst = tree / INSIDE / src.name
                dst.mkdir(parents=True, exist_ok=True)
                run(["mount", "--bind", "-o", "ro", local, dst],
                    what=f"bind-mounting {local} for apt")
                mounted.append(dst)
                uri = f"file:/{INSIDE}/{src.name}"
            listed.mkdir(parents=True, exist_ok=True)
            (listed / f"{src.name}.list").write_text(src.line(uri, keyring) + "\n")
            written.append(src)
        yield
    finally:
        for dst in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(dst)], check=False)
        shutil.rmtree(tree / INSIDE, ignore_errors=True)
        # the indices apt fetched from the build's mount: the device never reads them,
        # and a later install must verify the repository again, not reuse them
        for stale in (tree / "var/lib/apt/lists").rglob("*edge-llm-apt*"):
            stale.unlink(missing_ok=True)
        for src in written:
            (listed / f"{src.name}.list").write_text(
                src.line(src.device_uri, src.keyring_inside) + "\n")
        for f in aside:
            os.replace(f.with_name(f.name + ".edge-llm-aside"), f)


def install_missing(tree: Path, packages: list[str], log_file: Path | None,
                    sources: tuple[AptSource, ...] = ()) -> list[str]:
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
        with chroot_mounts(tree), _sources(tree, sources):
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
