"""Root filesystems: the OS tree the roles are applied to, as a cached tarball.

Builders are modules: `debian` (mmdebstrap, any architecture; qemu-user set up when
foreign); others join with their targets. Which one a profile uses is its target's
choice (Target.rootfs). The package set of a Debian-like base is composed here: the
base every appliance runs, what the roles configure, the target's boot packages, the
engine's runtime libraries, and the profile's own `os.packages`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..cache import Entry
from ..data import data_dir
from ..run import run

# What every appliance runs: systemd, SSH for provisioning and fleet updates, python3
# for Ansible and the device tools, networking basics. The roles add what they
# configure (roles/<role>/vars/main.yml: <role>_rootfs_packages): the rootfs cannot
# install packages while the roles run, as there may be no network.
BASE_PACKAGES = ("systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "python3",
                 "sudo", "ca-certificates", "iproute2", "netbase", "procps")


@dataclass(frozen=True)
class Rootfs:
    entry: Entry

    @property
    def tarball(self) -> Path:
        return self.entry.out / "rootfs.tar"

    @property
    def packages(self) -> dict[str, str]:
        return self.entry.manifest["packages"]


# GNU tar keeps what a tree holds as root: owners by number, modes, device nodes, hard
# links, and every extended attribute (file capabilities are security.capability).
_TAR_KEEP = ("--numeric-owner", "--xattrs", "--xattrs-include=*")


def pack(tree: Path, tarball: Path) -> None:
    """A rootfs tree into a tarball of the format the rootfs cache holds."""
    run(["tar", *_TAR_KEEP, "--sort=name", "-cf", tarball, "-C", tree, "."],
        what="packing the rootfs")


def unpack(tarball: Path, tree: Path) -> None:
    run(["tar", *_TAR_KEEP, "-xpf", tarball, "-C", tree], what="unpacking the rootfs")


def role_packages() -> list[str]:
    found: list[str] = []
    for vars_file in sorted(data_dir("roles").glob("*/vars/main.yml")):
        role = vars_file.parent.parent.name
        data = yaml.safe_load(vars_file.read_text()) or {}
        found += data.get(f"{role}_rootfs_packages", [])
    return found


def compose(*groups: tuple[str, ...] | list[str], extra: list[str]) -> list[str]:
    """The groups in order without repeats, then `extra` ('name' or 'name=version'),
    which replaces a group's package of the same name."""
    names = {pkg.split("=")[0] for pkg in extra}
    wanted = dict.fromkeys(pkg for g in groups for pkg in g)
    return [pkg for pkg in wanted if pkg not in names] + list(extra)


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed packages and versions from /var/lib/dpkg/status."""
    out: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(out.items()))
