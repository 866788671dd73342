"""Running foreign binaries (an arm64 rootfs on an x86-64 build host) with qemu-user
through the kernel's binfmt_misc.

binfmt_misc is often not mounted on a build host or in a container (pi-gen #264 and
#567, rpi-image-gen #44): mount it and register the qemu-user-static interpreter when
it is not, as root, and say exactly what failed when that is not allowed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..errors import BuilderError
from ..log import log

BINFMT = Path("/proc/sys/fs/binfmt_misc")
CONF_DIRS = (Path("/usr/lib/binfmt.d"), Path("/etc/binfmt.d"))


def host_arch() -> str:
    """The build host's Debian architecture."""
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _registered(name: str) -> bool:
    entry = BINFMT / name
    return entry.is_file() and entry.read_text().startswith("enabled")


def ensure(qemu: str, what: str) -> None:
    """Make `qemu-<qemu>` (e.g. aarch64) binaries run here, or raise one line saying why
    not. `what` names the setting that asked for it (device.arch: arm64)."""
    interpreter = shutil.which(f"qemu-{qemu}-static") or shutil.which(f"qemu-{qemu}")
    if interpreter is None:
        raise BuilderError(f"{what}: running {qemu} programs here needs qemu-user-static; "
                           "run `builder doctor --install`")
    if not (BINFMT / "register").exists():
        if os.geteuid() != 0:
            raise BuilderError(f"{what}: binfmt_misc is not mounted and mounting it needs "
                               "root; run the build with sudo")
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                           capture_output=True, text=True)
        if r.returncode != 0 or not (BINFMT / "register").exists():
            why = (r.stderr.strip() or "no register file after mounting").splitlines()[-1]
            raise BuilderError(
                f"{what}: binfmt_misc is not mounted at {BINFMT} and mounting it failed "
                f"({why}); in a container, start it privileged or mount it on the host "
                f"(mount -t binfmt_misc binfmt_misc {BINFMT})")
        log.info("mounted binfmt_misc at %s", BINFMT)
    name = f"qemu-{qemu}"
    if _registered(name):
        return
    if (BINFMT / name).is_file():  # registered but disabled
        _write(BINFMT / name, "1", what)
    else:
        _write(BINFMT / "register", _registration(name, what), what)
    if not _registered(name):
        raise BuilderError(f"{what}: could not enable {name} in {BINFMT}")
    log.info("registered %s with binfmt_misc", name)


def _registration(name: str, what: str) -> str:
    """The line systemd-binfmt would write, from qemu-user-static's binfmt.d file."""
    for d in CONF_DIRS:
        conf = d / f"{name}.conf"
        if conf.is_file():
            for line in conf.read_text().splitlines():
                if line.startswith(":"):
                    return line.strip()
    raise BuilderError(f"{what}: no binfmt.d entry for {name} (looked in "
                       f"{', '.join(map(str, CONF_DIRS))}); reinstall qemu-user-static")


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise BuilderError(f"{what}: cannot register with binfmt_misc ({path}: "
                           f"{e.strerror}); run as root, or on a privileged container") \
            from None
