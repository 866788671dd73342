"""Host packages each stage needs, checked by `builder doctor` and installed with
`builder doctor --install` (Debian/Ubuntu: apt-get): the shared stages' here, each
target's and engine's as they declare them (contracts: host_tools)."""

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

# What every build needs, whatever its target and engine; each target and engine adds
# its own (contracts: host_tools), e.g. llama.cpp's compilers, a cross toolchain, QEMU
SHARED: tuple[Need, ...] = (
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
    Need("qemu-img", "qemu-utils", "vm"),
    Need("ssh", "openssh-client", "vm"),
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
NEEDS: list[Need] = list(SHARED)  # and what the plug-ins register (plugins.py)
_NOT_BUILD = ("test", "vagrant")  # stages a plain `builder doctor` leaves out


def register(stage: str, command: str, package: str) -> None:
    """A plug-in's host tool for a stage (its own, or a shared one)."""
    need = Need(command, package, stage)
    if need in NEEDS:
        return
    same = [i for i, n in enumerate(NEEDS) if n.stage == stage]  # beside its stage's
    at = same[-1] + 1 if same else next(
        (i for i, n in enumerate(NEEDS) if n.stage in _NOT_BUILD), len(NEEDS))
    NEEDS.insert(at, need)


def stages() -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.stage for n in NEEDS))


def build_stages() -> tuple[str, ...]:
    """What `builder doctor` checks by default: every stage a build may need."""
    return tuple(s for s in stages() if s not in _NOT_BUILD)


def _present(n: Need) -> bool:
    return Path(n.tool).exists() if n.tool.startswith("/") else bool(shutil.which(n.tool))


def missing(of: tuple[str, ...] | None = None) -> list[Need]:
    of = build_stages() if of is None else of
    return [n for n in NEEDS if n.stage in of and not _present(n)]


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
