"""Booting a device's disk image in QEMU's `virt` machine when the device's own kernel
cannot (Raspberry Pi's kernel has no virtio): a Debian cloud kernel installed in the
rootfs for that purpose, and a small initramfs made here on the build host - busybox
from the rootfs, the virtio block modules in load order, an /init that mounts the root
and switches to it. Nothing runs under emulation to make it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuilderError
from ..run import run

# what the root device needs before the real root's udev takes over
MODULES = ("virtio_pci", "virtio_blk")

INIT = """#!/bin/busybox sh
# edge-llm builder: a VM's initramfs (image/virt_boot.py)
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /modules); do /bin/busybox insmod "/$m"; done
root=$(/bin/busybox sed -n 's/.*root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
i=0
while [ ! -b "$root" ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.1; i=$((i + 1)); done
/bin/busybox mount -o rw "$root" /newroot || exec /bin/busybox sh
/bin/busybox mount --move /dev /newroot/dev
/bin/busybox umount /proc /sys
exec /bin/busybox switch_root /newroot /sbin/init
"""


@dataclass(frozen=True)
class VirtBoot:
    kernel: Path
    initrd: Path
    version: str


def _load_order(modules_dep: Path, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to /lib/modules/<ver>) of `wanted` and what they depend on, each
    after its dependencies (modules.dep as depmod wrote it)."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {re.sub(r"\.ko(\.\w+)?$", "", Path(p).name).replace("-", "_"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for d in deps.get(path, []):
            visit(d)
        if path not in order:
            order.append(path)

    for name in wanted:
        if name not in by_name:
            raise BuilderError(f"the VM kernel has no module {name} (built in? then drop it)")
        visit(by_name[name])
    return order


def make(tree: Path, out_dir: Path, *, flavour: str, log_file: Path | None) -> VirtBoot:
    """vm-kernel and vm-initrd.img in out_dir, for the `flavour` kernel in the tree
    (e.g. cloud-arm64)."""
    boot = tree / "boot"
    kernels = sorted(boot.glob(f"vmlinuz-*-{flavour}"))
    if not kernels:
        raise BuilderError(f"no {flavour} kernel in the rootfs's /boot: a VM image needs "
                           f"Debian's linux-image-{flavour} in the rootfs")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    busybox = tree / "bin/busybox"
    if not busybox.is_file():
        raise BuilderError("no /bin/busybox in the rootfs: a VM image needs busybox-static")
    moddir = tree / "lib/modules" / version
    order = _load_order(moddir / "modules.dep", MODULES)
    initrd_root = out_dir / ".initrd"
    shutil.rmtree(initrd_root, ignore_errors=True)
    (initrd_root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, initrd_root / "bin/busybox")
    for rel in order:
        dest = initrd_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, dest)
    (initrd_root / "modules").write_text("".join(f"{rel}\n" for rel in order))
    (initrd_root / "init").write_text(INIT)
    os.chmod(initrd_root / "init", 0o755)
    kernel, initrd = out_dir / "vm-kernel", out_dir / "vm-initrd.img"
    shutil.copy2(kernels[-1], kernel)
    run(["sh", "-c", 'cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet '
         '--owner=0:0 | gzip -9n > "$2"', "sh", initrd_root, initrd],
        what="making the VM's initramfs (cpio)", log_file=log_file)
    shutil.rmtree(initrd_root)
    return VirtBoot(kernel, initrd, version)
