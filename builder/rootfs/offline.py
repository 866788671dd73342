"""Software installed into a rootfs with no network (contracts.OfflineInstall): wheels
with the rootfs's own pip from a wheelhouse (`pip install --no-index --find-links`, in
a chroot, so under qemu-user for a foreign architecture: the wheels are the device's),
and source trees unpacked into it. Every file is checked against its pinned sha256
before anything is installed; key() is what a cache entry of the result is keyed by.
"""

from __future__ import annotations

import shutil
import subprocess
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


def apply(tree: Path, sw: OfflineInstall, log_file: Path | None) -> None:
    key(sw)  # the files are the ones pinned
    if sw.trees:
        for tarball, dest in sw.trees:
            where = tree / dest.lstrip("/")
            if not where.resolve().is_relative_to(tree.resolve()) or where == tree:
                raise BuilderError(f"{tarball.setting}: {dest} is not a directory inside "
                                   "the rootfs")
            if where.exists() or where.is_symlink():
                shutil.rmtree(where) if where.is_dir() and not where.is_symlink() \
                    else where.unlink()
            where.mkdir(parents=True)
            # GNU tar refuses members with ".." and defers links that leave the tree
            run(["tar", "-xf", tarball.path, "-C", where, "--strip-components=1",
                 "--no-same-owner", "--no-same-permissions"],
                what=f"unpacking {tarball.path.name} into {dest} ({tarball.setting})",
                log_file=log_file)
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
                missing = "No matching distribution found for" in str(e) or \
                    "Could not find a version" in str(e)
                raise BuilderError(
                    f"{sw.wheelhouse_setting or sw.wheels[0].setting}: installing {names} "
                    "offline failed" + (f": the wheelhouse lacks a dependency; {sw.how}"
                                        if missing else f" ({e})")) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
