"""The root filesystem: Debian with mmdebstrap, as a cached tarball.

The package set is the OS family's base, the target's boot packages (kernel,
bootloader) and the profile's `os.packages` ('name' or 'name=version'); the versions
that went in are recorded from the rootfs's dpkg status. SOURCE_DATE_EPOCH, when set,
is passed to mmdebstrap, which clamps file times to it for reproducible output.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import yaml

from .cache import Cache, Entry
from .data import data_dir
from .errors import BuilderError
from .progress import step
from .run import run
from .schema import Profile
from .targets import TARGETS

ROOTFS_VERSION = 1
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What every Debian appliance runs: systemd, SSH for provisioning and fleet updates,
# python3 for Ansible, the OpenMP runtime llama.cpp links, networking basics. The
# roles add what they configure (roles/base/vars/main.yml: base_rootfs_packages): the
# rootfs cannot install packages while the roles run, as there may be no network. Each
# role lists its own in roles/<role>/vars/main.yml as <role>_rootfs_packages.
DEBIAN_BASE = ("systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "python3",
               "sudo", "libgomp1", "ca-certificates", "iproute2", "netbase", "procps")


def role_packages() -> list[str]:
    found: list[str] = []
    for vars_file in sorted(data_dir("roles").glob("*/vars/main.yml")):
        role = vars_file.parent.parent.name
        data = yaml.safe_load(vars_file.read_text()) or {}
        found += data.get(f"{role}_rootfs_packages", [])
    return found


@dataclass(frozen=True)
class Rootfs:
    entry: Entry

    @property
    def tarball(self) -> Path:
        return self.entry.out / "rootfs.tar"

    @property
    def packages(self) -> dict[str, str]:
        return self.entry.manifest["packages"]


def packages_for(p: Profile) -> list[str]:
    extra = list(p.os.packages)
    names = {pkg.split("=")[0] for pkg in extra}
    wanted = (*DEBIAN_BASE, *role_packages(), *TARGETS[p.target].rootfs_packages)
    base = [pkg for pkg in dict.fromkeys(wanted) if pkg not in names]
    return [*base, *extra]


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages and versions from /var/lib/dpkg/status."""
    out: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(out.items()))


def build(p: Profile, cache: Cache) -> Rootfs:
    if p.os.family != "debian":
        raise BuilderError(f"os.family: {p.os.family} root filesystems come from NVIDIA's "
                           f"sample rootfs on the device's flash host, not built here yet")
    arch = p.device.arch
    if arch != "amd64" and platform.machine() == "x86_64":
        raise BuilderError(f"device.arch: {arch} root filesystems need qemu-user binfmt; "
                           f"not supported by this build stage yet")
    packages = packages_for(p)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    inputs = {"rootfs_version": ROOTFS_VERSION, "suite": p.os.suite, "arch": arch,
              "mirror": DEBIAN_MIRROR, "variant": "minbase", "packages": packages,
              "source_date_epoch": epoch}

    def do_build(out: Path, log_file: Path) -> dict:
        status = out.parent / "dpkg-status"
        with step(f"mmdebstrap {p.os.suite} {arch} ({len(packages)} packages)") as line:
            run(["mmdebstrap", "--variant=minbase", f"--architectures={arch}",
                 f"--include={','.join(packages)}", "--aptopt=Acquire::Retries \"3\"",
                 "--customize-hook=rm -f \"$1\"/etc/hostname",
                 f"--customize-hook=copy-out /var/lib/dpkg/status {status.parent}",
                 p.os.suite, out / "rootfs.tar", DEBIAN_MIRROR],
                what="mmdebstrap", log_file=log_file, on_line=line,
                env={"SOURCE_DATE_EPOCH": epoch} if epoch else None)
        installed = parse_dpkg_status((status.parent / "status").read_text())
        (status.parent / "status").unlink()
        return {"packages": installed}

    return Rootfs(cache.get_or_build("rootfs", inputs, do_build,
                                     label=f"rootfs {p.os.suite} {arch}"))
