#!/usr/bin/env python3
# Test fake of NVIDIA's Linux_for_Tegra/apply_binaries.sh and the nv_tegra/nv-apply-debs.sh
# it runs, installed by tests/fakes/jetson/fake_l4t.py under its real name. It mirrors
# Jetson Linux R36.2.0 as read from the public mirror johnnynunez/Linux_for_Tegra (commit
# 9a5768c1; no R36.3/R36.4 copy was readable). Each behaviour, with the lines it mirrors:
#   options      getopt -o b:dhr:b:t: with --help --bsp: --debug --dgpu --factory
#                --target-overlay --root: --rootless (apply_binaries.sh:139): getopt's own
#                message and, `set -e`, exit 1; other words: usage, exit 1 (165-168)
#   qemu         CheckPackage qemu-user-static: `dpkg -s qemu-user-static`, else "The
#                required qemu-user-static is not installed. Please install it before
#                proceeding.", exit 1 (122-127, 170), before the root check
#   root         `id -u` must be 0 unless --rootless: "This script requires root
#                privilege", exit 1 (172-184); nv-apply-debs.sh checks it again (105-108)
#   rootfs       rootfs/etc/passwd owned by root:root, else the ERROR box, exit 1 (205-220)
#   debs         nv-apply-debs.sh: the skip lists, "Start L4T BSP package installation",
#                then qemu from a stashed copy (../qemu-aarch64-static, nv_tegra/) or the
#                fixed host path /usr/bin/qemu-aarch64-static ("Found ..."), else "ERROR
#                qemu not found! To install - please run:  "sudo apt-get install
#                qemu-user-static"", exit 1 (252-270); dpkg -i in a chroot (279-286)
#   overlay      --target-overlay: `tar -I lbzip2` for every .tbz2 (240-337): without
#                lbzip2 on PATH, GNU tar's "Cannot exec" lines and exit 2; PrepareVirEnv
#                copies /usr/bin/qemu-aarch64-static (98-106): `cp` fails without it
#   end          nv_customize_rootfs.sh, "Success!" (376-384)
# The fixed host paths are looked for under $FAKE_HOST_ROOT (default /), so a test can
# take them away. Differences, on purpose: instead of installing NVIDIA's .debs in a
# chroot it extracts nv_tegra/nvidia_drivers.tbz2 (which holds placeholder libraries) and
# records the packages in var/lib/dpkg/status; nothing is run in a chroot, so binfmt_misc
# is not needed (the real one needs it) and nothing is mounted.
"""apply_binaries.sh: install the NVIDIA userspace into the rootfs (test fake)."""

from __future__ import annotations

import getopt
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = "apply_binaries.sh"
LDK_DIR = Path(__file__).resolve().parent
HOST_ROOT = Path(os.environ.get("FAKE_HOST_ROOT", "/"))
QEMU = "/usr/bin/qemu-aarch64-static"

# nv-apply-debs.sh's skip lists (default, --dgpu, --factory)
DGPU_SKIP = ["nvidia-l4t-3d-core", "nvidia-l4t-apt-source", "nvidia-l4t-cuda",
             "nvidia-l4t-gbm", "nvidia-l4t-graphics-demos", "nvidia-l4t-jetsonpower-gui-tools",
             "nvidia-l4t-nvml", "nvidia-l4t-nvpmodel", "nvidia-l4t-nvpmodel-gui-tools",
             "nvidia-l4t-wayland", "nvidia-l4t-weston", "nvidia-l4t-x11"]
DEFAULT_SKIP = ["nvidia-l4t-dgpu-config", "nvidia-l4t-factory-service",
                "nvidia-l4t-dgpu-apt-source", "nvidia-l4t-dgpu-x11", "nvidia-l4t-dgpu-tools"]
FACTORY_SKIP = [*DGPU_SKIP, "nvidia-l4t-camera", "nvidia-l4t-gstreamer",
                "nvidia-l4t-multimedia", "nvidia-l4t-pva", "nvidia-l4t-dgpu-config",
                "nvidia-l4t-dgpu-apt-source", "nvidia-l4t-dgpu-x11", "nvidia-l4t-dgpu-tools"]
ERROR_BOX = """\
||||||||||||||||||||||| ERROR |||||||||||||||||||||||
-----------------------------------------------------
1. The root filesystem, provided with this package,
   has to be extracted to this directory:
   {root}
-----------------------------------------------------
2. The root filesystem, provided with this package,
   has to be extracted with 'sudo' to this directory:
   {root}
-----------------------------------------------------
Consult the Development Guide for instructions on
extracting and flashing your device.
|||||||||||||||||||||||||||||||||||||||||||||||||||||"""


def usage() -> None:
    print(f"Use: {SCRIPT} [--bsp|-b PATH] [--root|-r PATH] [--target-overlay] [--help|-h]")
    print("""    This script installs tegra binaries
    Options are:
    --bsp|-b PATH
                   bsp location (bsp, readme, installer)
    --dgpu
                   only install packages that are suitable for dGPU use
    --factory
                   only install packages that are suitable for factory use
    --root|-r PATH
                   install toolchain to PATH
    --rootless
                   don't require root privilege
    --target-overlay|-t
                   untar NVIDIA target overlay (.tbz2) instead of
\t\t\t\t   pre-installing them as Debian packages
    --help|-h
                   show this help""")


def package_installed(name: str) -> bool:
    """`dpkg -s NAME > /dev/null 2>&1` (CheckPackage, apply_binaries.sh:122-127)."""
    try:
        return subprocess.run(["dpkg", "-s", name], capture_output=True).returncode == 0
    except FileNotFoundError:  # no dpkg on PATH: the real `dpkg -s` fails too
        return False


def host_qemu() -> str | None:
    """nv-apply-debs.sh:253-270: a stashed copy, else the fixed host path."""
    for stash in (LDK_DIR.parent / "qemu-aarch64-static",
                  LDK_DIR / "nv_tegra/qemu-aarch64-static"):
        if stash.is_file():
            return str(stash)
    print("QEMU binary is not available, looking for QEMU from host system")
    if (HOST_ROOT / QEMU.lstrip("/")).is_file():
        print(f"Found {QEMU}")
        return QEMU
    return None


def extract(tbz2: Path, root: Path) -> None:
    """tar --keep-directory-symlink -I lbzip2 -xpmf TBZ2 (run inside ROOT)."""
    if not shutil.which("lbzip2"):  # GNU tar's messages when -I's program is missing
        print("tar (child): lbzip2: Cannot exec: No such file or directory\n"
              "tar (child): Error is not recoverable: exiting now\n"
              "tar: Child returned status 2\ntar: Error is not recoverable: exiting now",
              file=sys.stderr)
        sys.exit(2)
    if not tbz2.is_file():
        print(f"tar: {tbz2}: Cannot open: No such file or directory", file=sys.stderr)
        print("tar: Error is not recoverable: exiting now", file=sys.stderr)
        sys.exit(2)
    with tarfile.open(tbz2, "r:bz2") as tar:
        for m in tar.getmembers():
            target = root / m.name
            if m.isdir() and target.is_symlink():
                continue  # --keep-directory-symlink
            tar.extract(m, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")


def deb_version() -> str:
    for deb in sorted((LDK_DIR / "nv_tegra/l4t_deb_packages").glob("nvidia-l4t-core_*.deb")):
        return deb.name.split("_")[1]
    return "36.0.0"


def record_packages(root: Path, debs: list[str]) -> None:
    """What `dpkg -i` leaves in the package database."""
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    text = status.read_text() if status.exists() else ""
    stanzas = []
    for deb in debs:
        name, version, _ = deb.split("_", 2)
        if f"\nPackage: {name}\n" in f"\n{text}":
            continue
        stanzas.append(f"Package: {name}\nStatus: install ok installed\nPriority: standard\n"
                       f"Section: libs\nMaintainer: NVIDIA Corporation\nArchitecture: arm64\n"
                       f"Version: {version}\nDescription: NVIDIA {name} package\n")
    if stanzas:
        sep = "\n" if text and not text.endswith("\n\n") else ""
        status.write_text(text + sep + "\n".join(stanzas))


def apply_debs(root: Path, dgpu: bool, factory: bool) -> None:
    """nv_tegra/nv-apply-debs.sh -r ROOT [--dgpu|--factory]"""
    nv_tegra = LDK_DIR / "nv_tegra"
    if os.geteuid() != 0:  # nv-apply-debs.sh:105-108 (reached with --rootless)
        print("This script requires root privilege")
        sys.exit(1)
    if not (nv_tegra / "l4t_deb_packages").is_dir():
        print("Debian packages are curently not supported")
        sys.exit(1)
    print(f"Root file system directory is {root}")
    print("Copying public debian packages to rootfs")
    if dgpu:  # apply_binaries.sh passes only one of them, --dgpu winning
        skip = [*DGPU_SKIP, "nvidia-l4t-display-kernel", "nvidia-l4t-factory-service"]
    elif factory:
        skip = FACTORY_SKIP
    else:
        skip = DEFAULT_SKIP
    skip = [*skip, "nvidia-igx-bootloader"]
    debs: list[str] = []
    for d in ("tools", "nv_tegra/l4t_deb_packages", "kernel", "bootloader"):
        names = sorted(p.name for p in (LDK_DIR / d).glob("*.deb"))
        if d == "kernel" and not names:
            print("Kernel debian package NOT found. Skipping.")
        if d == "bootloader" and not names:
            print("Bootloader debian package NOT found. Skipping.")
        for n in names:
            if any(n.startswith(s) for s in skip):
                print(f"Skipping installation of {n} ....")
            else:
                debs.append(n)
    if not debs:
        print("No packages to install. There might be something wrong")
        sys.exit(1)
    print("Start L4T BSP package installation")
    if host_qemu() is None:
        print('ERROR qemu not found! To install - please run:  '
              '"sudo apt-get install qemu-user-static"')
        sys.exit(1)
    print("Installing QEMU binary in rootfs")
    print(f"{root} {Path.cwd()}")
    print(f"Installing BSP Debian packages in {root}")
    if not (root / "usr/bin/dpkg").exists():
        print("chroot: failed to run command 'dpkg': No such file or directory",
              file=sys.stderr)
        sys.exit(127)
    for deb in debs:
        name, version, _ = deb.split("_", 2)
        print(f"Selecting previously unselected package {name}.")
        print(f"Preparing to unpack .../{deb} ...")
        print(f"Unpacking {name} ({version}) ...")
    extract(nv_tegra / "nvidia_drivers.tbz2", root)
    for deb in debs:
        name, version, _ = deb.split("_", 2)
        print(f"Setting up {name} ({version}) ...")
    record_packages(root, debs)
    print("Removing QEMU binary from rootfs")
    print("Removing stashed Debian packages from rootfs")
    print("L4T BSP package installation completed!")


def target_overlay(root: Path) -> None:
    nv_tegra, kern = LDK_DIR / "nv_tegra", LDK_DIR / "kernel"
    steps = [("the NVIDIA user space components", nv_tegra / "nvidia_drivers.tbz2"),
             ("the BSP test tools", nv_tegra / "nv_tools.tbz2"),
             ("the OP-TEE target files", nv_tegra / "nv_optee.tbz2"),
             ("Weston", nv_tegra / "weston.tbz2"),
             ("the configuration files for the supplied root filesystem",
              nv_tegra / "config.tbz2"),
             ("graphics_demos", nv_tegra / "graphics_demos.tbz2"),
             ("the firmwares and kernel modules", kern / "kernel_supplements.tbz2")]
    for what, tbz2 in steps:
        print(f"Extracting {what} to {root}")
        extract(tbz2, root)
    if (kern / "kernel_oot_modules.tbz2").exists():
        print(f"Extracting NVIDIA Jetson Kernel Drivers to {root}")
        extract(kern / "kernel_oot_modules.tbz2", root)
    print(f"Extracting the kernel headers to {root}/usr/src")
    (root / "usr/src").mkdir(parents=True, exist_ok=True)
    if (kern / "kernel_headers.tbz2").exists():
        extract(kern / "kernel_headers.tbz2", root / "usr/src")
    deb = deb_version()
    record_packages(root, [f"nvidia-l4t-core_{deb}_arm64.deb"])
    print(f"Updating the initrd to {root}")
    print("Preparing virtual env")
    if not (HOST_ROOT / QEMU.lstrip("/")).is_file():  # PrepareVirEnv's cp (100), set -e
        print(f"cp: cannot stat '{QEMU}': No such file or directory", file=sys.stderr)
        sys.exit(1)
    print("Cleaning up virtual env")


def customize_rootfs(root: Path) -> None:
    """nv_tools/scripts/nv_customize_rootfs.sh ROOT (the parts that show)."""
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in ("isc-dhcp-server.service", "isc-dhcp-server6.service", "ondemand.service",
                 "irqbalance.service"):
        if (wants / unit).is_symlink() or (wants / unit).exists():
            (wants / unit).unlink()
    print("Disabling NetworkManager-wait-online.service")
    nm = root / "etc/systemd/system/network-online.target.wants/" \
        "NetworkManager-wait-online.service"
    if nm.is_symlink():
        nm.unlink()
    print("Disable the ondemand service by changing the runlevels to 'K'")
    cloud = root / "etc/cloud/cloud.cfg.d"
    if cloud.is_dir():
        (cloud / "99-disable-cloudinit-network.cfg").write_text(
            "network: {config: disabled}\n")


def main(argv: list[str]) -> int:
    try:
        opts, rest = getopt.gnu_getopt(argv, "b:dhr:t:", [
            "help", "bsp=", "debug", "dgpu", "factory", "target-overlay", "root=",
            "rootless"])
    except getopt.GetoptError as e:
        # getopt(1)'s own message; `set -e` ends the script at the failed assignment
        if "requires argument" in e.msg:
            msg = (f"option '--{e.opt}' requires an argument" if len(e.opt) > 1
                   else f"option requires an argument -- '{e.opt}'")
        elif len(e.opt) > 1:
            msg = f"unrecognized option '--{e.opt}'"
        else:
            msg = f"invalid option -- '{e.opt}'"
        print(f"{SCRIPT}: {msg}", file=sys.stderr)
        return 1
    root_dir = dgpu = factory = overlay = rootless = debug = None
    for o, v in opts:
        if o in ("-h", "--help"):
            usage()
            return 1
        if o in ("-r", "--root"):
            root_dir = v
        elif o == "--dgpu":
            dgpu = True
        elif o == "--factory":
            factory = True
        elif o in ("-t", "--target-overlay"):
            overlay = True
        elif o == "--rootless":
            rootless = True
        elif o in ("-d", "--debug"):
            debug = True
    if rest:
        usage()
        return 1
    if not package_installed("qemu-user-static"):
        print("The required qemu-user-static is not installed. Please install it before "
              "proceeding.")
        return 1
    if not rootless and os.geteuid() != 0:
        print("This script requires root privilege")
        return 1
    root = Path(root_dir) if root_dir else LDK_DIR / "rootfs"
    print(f"Using rootfs directory of: {root}")
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = root.resolve()
    passwd = root / "etc/passwd"
    st = passwd.stat() if passwd.is_file() else None
    if st is None or (not rootless and (st.st_uid != 0 or st.st_gid != 0)):
        print(ERROR_BOX.format(root=root))
        return 1
    extlinux = LDK_DIR / "bootloader/extlinux.conf"
    if extlinux.is_file():
        print("Installing extlinux.conf into /boot/extlinux in target rootfs")
        (root / "boot/extlinux").mkdir(parents=True, exist_ok=True)
        shutil.copy(extlinux, root / "boot/extlinux/extlinux.conf")
        (root / "boot/extlinux/extlinux.conf").chmod(0o644)
    if not overlay:
        debs = LDK_DIR / "nv_tegra/nv-apply-debs.sh"
        if not debs.is_file():
            print("Debian script nv-apply-debs.sh not found")
            return 1
        print(debs)
        apply_debs(root, bool(dgpu), bool(factory))
    else:
        if dgpu:
            print("Error: --dgpu option is not supported with tar installation")
            return 1
        if factory:
            print("Error: --factory option is not supported with tar installation")
            return 1
        target_overlay(root)
    customize_rootfs(root)
    if debug:
        print("Time for applying binaries - 00:00:01")
    print("Success!")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
