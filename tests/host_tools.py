"""Host commands for the stand-ins' own tests (tests/test_fakes_*.py): a test skips, saying
what to install, when the host lacks a tool it runs; commands run with a fixed PATH and
locale, and a failure shows the command's output."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the Debian package of each tool these tests run
PACKAGES = {
    "dpkg-deb": "dpkg", "dpkg": "dpkg", "update-alternatives": "dpkg", "apt-get": "apt",
    "apt-ftparchive": "apt-utils", "gpg": "gnupg", "gpgv": "gpgv",
    "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mtype": "mtools", "mdir": "mtools",
    "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs",
    "dumpe2fs": "e2fsprogs", "sfdisk": "fdisk", "xz": "xz-utils",
    "fdtget": "device-tree-compiler", "run-parts": "debianutils",
}


def need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t, path=PATH)]
    if missing:
        pkgs = sorted({PACKAGES.get(t, t) for t in missing})
        pytest.skip(f"needs {', '.join(missing)}: apt-get install {' '.join(pkgs)}")


def sh(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True,
       **kw) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PATH": PATH, "LC_ALL": "C", "MTOOLS_SKIP_CHECK": "1",
                **(env or {})}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=full_env,
                          **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
