"""Software installed into a rootfs with no network (contracts.OfflineInstall): wheels
with the rootfs's own pip from a wheelhouse (`pip install --no-index --find-links`, in
a chroot, so under qemu-user for a foreign architecture: the wheels are the device's),
and source trees unpacked into it. Every file is checked against its pinned sha256
before anything is installed; key() is what a cache entry of the result is keyed by.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from ..cache import pinned_sha256, sha256_file
from ..contracts import OfflineInstall, Pinned
from ..errors import BuilderError, display_path
from ..run import ToolError, run
from .chroot_apt import chroot_mounts

STAGE = "tmp/edge-llm-offline"  # where the files wait inside the rootfs while pip runs
PIP_ENV = {
    # pip >= 23 refuses the system Python of Debian 12 / Ubuntu 24.04 (PEP 668) without
    # this; older pips (Ubuntu 22.04's, JetPack 6) ignore an option they do not know
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_ROOT_USER_ACTION": "ignore", "PIP_NO_INPUT": "1",
    # nothing of the build host's own pip or Python setup reaches the rootfs's
    "PIP_USER": "0", "PIP_REQUIRE_VIRTUALENV": "0", "PYTHONPATH": "",
}


def _checked(f: Pinned) -> str:
    return pinned_sha256(f.path, f.sha256, f.setting)


def _wheelhouse(sw: OfflineInstall) -> dict[str, str]:
    if sw.wheelhouse is None:
        return {}
    if not sw.wheelhouse.is_dir():
        raise BuilderError(f"{sw.wheelhouse_setting}: {display_path(sw.wheelhouse)} is not a "
                           f"directory of wheels; {sw.how}")
    return {w.name: sha256_file(w) for w in sorted(sw.wheelhouse.glob("*.whl"))}


def key(sw: OfflineInstall) -> dict[str, Any]:
    """Everything that decides what lands in the rootfs, each file checked."""
    return {"wheels": [_checked(w) for w in sw.wheels], "wheelhouse": _wheelhouse(sw),
            "trees": [[_checked(t), dest] for t, dest in sw.trees]}


# where a source tree may go: directories of the device's own software, never a system
# directory the rootfs needs (the tree replaces what is there)
TREE_PLACES = ("/opt/", "/srv/", "/usr/local/")


def _unpack(tarball: Pinned, where: Path) -> None:
    """The tarball's members below its top directory into `where`, through Python's
    "data" filter: regular files, directories and links that stay inside, no device
    nodes, FIFOs or absolute or escaping links, no setuid bits, owned by root."""
    with tarfile.open(tarball.path) as tar:
        members = []
        for m in tar.getmembers():
            rest = m.name.removeprefix("./").partition("/")[2]
            if not rest:
                continue  # the top directory itself (GitHub's archive: <repo>-<ref>/)
            m.name = rest
            if m.islnk():
                m.linkname = m.linkname.removeprefix("./").partition("/")[2]
            members.append(m)
        try:
            tar.extractall(where, members=members, filter="data")
        except (tarfile.FilterError, OSError) as e:
            raise BuilderError(f"{tarball.setting}: {display_path(tarball.path)}: {e}; "
                               "give the source archive as published") from None


def apply(tree: Path, sw: OfflineInstall, log_file: Path | None) -> None:
    key(sw)  # the files are the ones pinned
    for tarball, dest in sw.trees:
        if not dest.startswith(TREE_PLACES):
            raise BuilderError(f"{tarball.setting}: unpacked to {dest}, which is not under "
                               f"{', '.join(TREE_PLACES)}: name a directory of its own there")
    _install_wheels(tree, sw, log_file)  # before any tree: nothing unpacked is in its way
    for tarball, dest in sw.trees:
        where = tree / dest.lstrip("/")
        if where.is_symlink() or (where.exists() and not where.is_dir()):
            where.unlink()
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        _unpack(tarball, where)
        if log_file is not None:
            with log_file.open("a") as fh:
                fh.write(f"unpacked {tarball.path.name} into {dest} ({tarball.setting})\n")


def _install_wheels(tree: Path, sw: OfflineInstall, log_file: Path | None) -> None:
    if not sw.wheels:
        return
    stage = tree / STAGE
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "wheelhouse").mkdir(parents=True)
    try:
        for w in sw.wheels:
            shutil.copyfile(w.path, stage / w.path.name)
        for w in sorted(sw.wheelhouse.glob("*.whl")) if sw.wheelhouse else ():
            shutil.copyfile(w, stage / "wheelhouse" / w.name)
        names = " ".join(w.path.name for w in sw.wheels)
        with chroot_mounts(tree):
            if subprocess.run(["chroot", str(tree), "python3", "-m", "pip", "--version"],
                              capture_output=True).returncode != 0:
                raise BuilderError(f"{sw.wheels[0].setting}: the rootfs has no pip for "
                                   "python3 to install it with (python3-pip)")
            try:
                run(["chroot", tree, "python3", "-m", "pip", "install", "--no-index",
                     "--find-links", f"/{STAGE}/wheelhouse",
                     *(f"/{STAGE}/{w.path.name}" for w in sw.wheels)],
                    what=f"pip install {names} (offline, in the rootfs)", env=PIP_ENV,
                    log_file=log_file)
            except ToolError as e:
                said = str(e)
                wanted = re.search(r"No matching distribution found for (\S+)", said)
                raise BuilderError(
                    f"{sw.wheelhouse_setting or sw.wheels[0].setting}: installing {names} "
                    "offline failed" + (f": the wheelhouse has no {wanted.group(1)}; {sw.how}"
                                        if wanted else f" ({said})")) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
