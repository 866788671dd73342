"""Host packages each stage needs, checked by `builder doctor` and installed with
`builder doctor --install` (Debian/Ubuntu: apt-get)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import BuilderError
from .run import run


@dataclass(frozen=True)
class Need:
    tool: str  # executable looked up on PATH
    package: str  # Debian package that provides it
    stage: str


VAGRANT_LIBVIRT = "/usr/share/vagrant-plugins/plugins.d/vagrant-libvirt.json"  # Debian's plugin

NEEDS: tuple[Need, ...] = (
    Need("cmake", "cmake", "engine"),
    Need("ninja", "ninja-build", "engine"),
    Need("ccache", "ccache", "engine"),
    Need("c++", "g++", "engine"),
    Need("git", "git", "engine"),
    Need("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu", "engine-arm64"),
    Need("qemu-aarch64-static", "qemu-user-static", "engine-arm64"),
    Need("update-binfmts", "binfmt-support", "engine-arm64"),
    Need("arch-test", "arch-test", "engine-arm64"),  # mmdebstrap's foreign-arch check
    Need("mmdebstrap", "mmdebstrap", "image"),
    Need("mkfs.ext4", "e2fsprogs", "image"),
    Need("mkfs.vfat", "dosfstools", "image"),
    Need("mcopy", "mtools", "image"),
    Need("sfdisk", "fdisk", "image"),
    Need("bmaptool", "bmap-tools", "image"),
    Need("zstd", "zstd", "image"),
    Need("xz", "xz-utils", "image"),
    Need("cpio", "cpio", "image"),
    Need("debugfs", "e2fsprogs", "image"),
    Need("bzip2", "bzip2", "image"),  # NVIDIA's .tbz2 BSP and sample rootfs
    Need("qemu-img", "qemu-utils", "vm"),
    Need("ssh", "openssh-client", "vm"),
    Need("qemu-system-x86_64", "qemu-system-x86", "vm-x86"),
    Need("/usr/share/ovmf/OVMF.fd", "ovmf", "vm-x86"),
    Need("qemu-system-aarch64", "qemu-system-arm", "vm-arm64"),
    # `builder flash` of a disk image: the device's checks, the write (bmaptool unpacks
    # the compressed copy with zstd or xz) and the read-back; udev is not needed
    Need("lsblk", "util-linux", "flash"),
    Need("bmaptool", "bmap-tools", "flash"),
    Need("zstd", "zstd", "flash"),
    Need("xz", "xz-utils", "flash"),
    Need("sfdisk", "fdisk", "flash"),
    Need("rsync", "rsync", "fleet"),
    Need("ssh", "openssh-client", "fleet"),
    # the lab's Vagrantfile (docs/lab.md): not part of a build, so not checked by a plain
    # `builder doctor`; `builder doctor --install --stage vagrant` sets a workstation up
    Need("vagrant", "vagrant", "vagrant"),
    Need(VAGRANT_LIBVIRT, "vagrant-libvirt", "vagrant"),
    Need("libvirtd", "libvirt-daemon-system", "vagrant"),
    # only the test suite: the chat page in a real browser, a TLS certificate, and the
    # stand-ins for Raspberry Pi's signed apt repository and NVIDIA's tools (tests/fakes)
    Need("chromium", "chromium", "test"),
    Need("chromedriver", "chromium-driver", "test"),
    Need("openssl", "openssl", "test"),
    Need("apt-ftparchive", "apt-utils", "test"),
    Need("gpg", "gnupg", "test"),
    Need("gpgv", "gpgv", "test"),
    Need("dtc", "device-tree-compiler", "test"),
    Need("fakeroot", "fakeroot", "test"),
    Need("vagrant", "vagrant", "test"),  # `vagrant validate` of the lab's Vagrantfile
    Need(VAGRANT_LIBVIRT, "vagrant-libvirt", "test"),
)
STAGES = tuple(dict.fromkeys(n.stage for n in NEEDS))
BUILD_STAGES = tuple(s for s in STAGES if s not in ("test", "vagrant"))  # `builder doctor`


def _present(n: Need) -> bool:
    return Path(n.tool).exists() if n.tool.startswith("/") else bool(shutil.which(n.tool))


def missing(stages: tuple[str, ...] = BUILD_STAGES) -> list[Need]:
    return [n for n in NEEDS if n.stage in stages and not _present(n)]


def install(needs: list[Need]) -> None:
    packages = sorted({n.package for n in needs})
    if not packages:
        return
    if shutil.which("apt-get") is None:
        raise BuilderError(f"no apt-get here; install these packages yourself: "
                           f"{' '.join(packages)}")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo, "apt-get", "update", "-qq"], what="apt-get update", env=env)
    run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        what=f"apt-get install {' '.join(packages)}", env=env)


def require(*stages: str) -> None:
    """Raise one line naming what is missing for these stages and how to get it."""
    gone = missing(stages)
    if gone:
        tools = ", ".join(f"{n.tool} ({n.package})" for n in gone)
        raise BuilderError(f"missing host tools: {tools}; run `builder doctor --install`")
