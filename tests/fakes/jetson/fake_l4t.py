"""A faithful stand-in for NVIDIA's Jetson Linux (L4T r36, r39.2) BSP and sample rootfs
tarballs.

    from fakes.jetson.fake_l4t import make_bsp, make_sample_rootfs

make_bsp(dest, release) writes dest/Jetson_Linux_R<release>_aarch64.tbz2: a bzip2 tar of
Linux_for_Tegra/ laid out like NVIDIA's (entries owned by root, numerically), whose tools
are test fakes (tests/fakes/jetson/tools/*.py, installed under the real names) that
check their command lines like the real ones, fail like them and write what they write:

* apply_binaries.sh (installs nv_tegra/nvidia_drivers.tbz2 into rootfs/: the release file,
  the ld.so.conf.d entry, placeholder libraries marked FAKE, the EULA file, etc/nv/);
* tools/l4t_create_default_user.sh (edits rootfs/etc/passwd, shadow, group, ...);
* tools/kernel_flash/l4t_initrd_flash.sh (image generation with --no-flash, massflash
  packages, flashing boards found in a sysfs tree: see fake_sysfs.py);
* flash.sh (argument checks only, then refuses) and stubs for helper scripts the tree
  has but the fakes do not run separately.

The board configs jetson-agx-orin-devkit.conf and jetson-orin-nano-devkit.conf are
symlinks to the r36 module configs, as in the real BSP; bootloader/generic/cfg/ and
tools/kernel_flash/ hold partition layouts with the real names (reduced: fewer
partitions, same structure). The module configs hold, in the real files' shell syntax,
only what the fake tools read; each value is the one of Jetson Linux R36.2.0's file
(johnnynunez/Linux_for_Tegra, commit 9a5768c1):
  p3767.conf.common     BPFFILE (155), DEFAULT_CHIP_SKU 00:00:00:D3 (205) and
                        process_chip_sku_version()'s table D3/D4 -> TE980M-A1, D5/D6 ->
                        TE950M-A1 (44-70): with no CHIP_SKU an Orin Nano gets the Orin NX
                        firmware, as NVIDIA's does
  p3701.conf.common     BPFFILE (171), DEFAULT_CHIP_SKU 00:00:00:D0 (224), the table 90 ->
                        TE992M-A1, 97/9E -> TA990SA-A1, D0/D2 -> TE990M-A1 (46-73)
bootloader/ holds the five bpmp_t234-*_prod.bin the real one ships (placeholders), so a
BPFFILE the chip SKU rewrote to a name NVIDIA does not ship is missing here too.
From 36.4.3 (JetPack 6.2) the tree also has jetson-orin-nano-devkit-super.conf ->
p3768-0000-p3767-0000-super.conf. No R36.4 BSP is readable here: the link and file names
are those a JetPack 6.2.1 (R36.4.4) Linux_for_Tegra listing shows (a public notes file,
search id 10362578587); the contents (the base config plus the -nv-super kernel DTBs that
several public JetPack 6.2 projects boot) are not verified against NVIDIA's file.
rootfs/ holds only README.txt, as NVIDIA ships it.

R39.2 (39.2.0 is JetPack 7.2, 39.2.1 JetPack 7.2.1, both Ubuntu 24.04): no R39.2 (or
R38) Linux_for_Tegra tree is readable here, so its BSP is the R36 layout with R39.2's
identity, and its tools are the R36.2 fakes, not checked against R39.2's scripts. What is
R39.2's: the nv_tegra_release lines as boards print them (39.2.0: GCID 45755727,
nvidia-l4t-core 39.2.0-20260601141651, public notes, index ids 68618966171, 58103012036;
39.2.1: GCID 46758480, 39.2.1-20260806224157, index id 68579880183), the kernel
(6.8.12-1021-tegra, same notes), the apt source list (common and som, suite r39.2: the
nvidia-l4t-apt-source_39.2.1 package's, index id 69085488930; jetson/ffmpeg left out as
for r36), and the BSP package names, from r39.2's som index (anduril/jetpack-nixos
sourceinfo/r39.2-debs.json, 02d22af9: -nvgpu variants, nvidia-l4t-oobe for R36's
oem-config); which of them the BSP's nv_tegra/l4t_deb_packages holds is unverified. The
board config names, jetson-orin-nano-devkit-super.conf included, are R36's: a Seeed
JetPack 7.2 guide flashes jetson-orin-nano-devkit-super with l4t_initrd_flash.sh (index
id 62653419769), and OE4T meta-tegra's R39.2 machine configs (d5d93dc6) keep R36's
CHIP_SKUs and BPMP firmware names (orin-nano.inc: D5, bpmp_t234-TE950M-A1_prod.bin).

make_sample_rootfs(tree_tarball, dest, release) re-packs a Debian arm64 rootfs tarball
(a plain tar from mmdebstrap) as Tegra_Linux_Sample-Root-Filesystem_R<release>_aarch64.tbz2.
It stands in for NVIDIA's Ubuntu sample rootfs (22.04 for R36, 24.04 for R39), which
cannot be made here (no Ubuntu mirror): the layout and the way the builder unpacks it
are the same, the distribution is not. Owners stay numeric, as in the source tarball.

Nothing here needs the network or NVIDIA software; building a BSP takes well under a
second.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"

# release -> (GCID, DATE of the nv_tegra_release line, build stamp of the .deb versions,
# kernel version). Lines as devices print them (JetPack 6.0-6.2.1, 7.2, 7.2.1: R39 prints
# its date with AM/PM); the 36.3.0 and 36.4.0 deb stamps are not verified (only the .deb
# names use them).
RELEASES: dict[str, tuple[str, str, str, str]] = {
    "36.2.0": ("34956989", "Thu Nov 30 18:58:15 UTC 2023", "20231130105725", "5.15.122"),
    "36.3.0": ("36191598", "Mon May  6 17:34:21 UTC 2024", "20240506102215", "5.15.136"),
    "36.4.0": ("37537400", "Fri Sep 13 04:36:44 UTC 2024", "20240912212859", "5.15.148"),
    "36.4.3": ("38968081", "Wed Jan  8 01:49:37 UTC 2025", "20250107174145", "5.15.148"),
    "36.4.4": ("41062509", "Mon Jun 16 16:07:13 UTC 2025", "20250616085344", "5.15.148"),
    "39.2.0": ("45755727", "Mon Jun  1 09:28:48 PM UTC 2026", "20260601141651",
               "6.8.12-1021"),
    "39.2.1": ("46758480", "Fri Aug  7 05:54:22 AM UTC 2026", "20260806224157",
               "6.8.12-1021"),
}
# L4T major -> (NVIDIA's apt repositories its nvidia-l4t-apt-source lists, the Ubuntu of
# its sample rootfs, the BSP packages in nv_tegra/l4t_deb_packages)
LINES: dict[str, tuple[tuple[str, ...], str, tuple[str, ...]]] = {
    "36": (("common", "t234"), "22.04", (
        "nvidia-l4t-core", "nvidia-l4t-init", "nvidia-l4t-cuda", "nvidia-l4t-firmware",
        "nvidia-l4t-3d-core", "nvidia-l4t-nvpmodel", "nvidia-l4t-tools",
        "nvidia-l4t-oem-config", "nvidia-l4t-dgpu-config", "nvidia-l4t-factory-service",
        "nvidia-l4t-dgpu-apt-source")),
    "39": (("common", "som"), "24.04", (
        "nvidia-l4t-core", "nvidia-l4t-init", "nvidia-l4t-init-nvgpu", "nvidia-l4t-cuda",
        "nvidia-l4t-cuda-nvgpu", "nvidia-l4t-firmware", "nvidia-l4t-3d-core",
        "nvidia-l4t-nvpmodel", "nvidia-l4t-tools", "nvidia-l4t-oobe",
        "nvidia-l4t-factory-service", "nvidia-l4t-dgpu-tools")),
}
# devkit board config -> the module config it links to (r36 names)
BOARD_CONFIGS = {
    "jetson-agx-orin-devkit": "p3737-0000-p3701-0000.conf",
    "jetson-orin-nano-devkit": "p3768-0000-p3767-0000-a0.conf",
}
# JetPack 6.2 (36.4.3) and later; the names, not the contents, are verified (see above)
SUPER_BOARD = ("jetson-orin-nano-devkit-super", "p3768-0000-p3767-0000-super.conf")
# bootloader/bpmp_t234-*_prod.bin in R36.2.0
BPMP_FIRMWARE = ("TA990SA-A1", "TE950M-A1", "TE980M-A1", "TE990M-A1", "TE992M-A1")
NVIDIA_LIB_DIR = "usr/lib/aarch64-linux-gnu/nvidia"
FAKE_LIBS = ("libnvrm_gpu.so", "libnvrm_mem.so", "libnvrm_host1x.so", "libnvos.so",
             "libcuda.so.1.1")
LICENSE = "usr/share/doc/nvidia-tegra/Tegra_Software_License_Agreement-Tegra-Linux.txt"
APT_SOURCE = "etc/apt/sources.list.d/nvidia-l4t-apt-source.list"
JETSON_REPO = "https://repo.download.nvidia.com/jetson"
CONF_HEADER = ("# Test fake of NVIDIA's board configuration (tests/fakes/jetson): only the "
               "variables\n# the fake tools read, in the real files' shell syntax.\n")


def _chip_sku_function(table: dict[str, str]) -> str:
    """process_chip_sku_version()'s firmware table, as the real .conf.common declares it."""
    rows = "".join(f"\tbpmp_fw_binary['{k}']=\"{v}\";\n" for k, v in table.items())
    return ("process_chip_sku_version()\n{\n\tdeclare -A bpmp_fw_binary;\n" + rows
            + '\tchip_sku="${chip_sku:-${DEFAULT_CHIP_SKU}}"\n'
            '\tBPFFILE=`echo "${BPFFILE}" | sed "s|T.*-A1|${bpmp_fw_binary[${chip_SKU}]}|"`;\n'
            "}\n")


def _release(release: str) -> tuple[str, str, str, str]:
    if release not in RELEASES:
        raise ValueError(f"unknown L4T release {release!r}; known: {', '.join(RELEASES)}")
    return RELEASES[release]


def _line(release: str) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    return LINES[release.split(".")[0]]


def nv_tegra_release_line(release: str) -> str:
    """The first line of /etc/nv_tegra_release for RELEASE ("36.4.3")."""
    gcid, date, _, _ = _release(release)
    major, minor, patch = release.split(".")
    return (f"# R{major} (release), REVISION: {minor}.{patch}, GCID: {gcid}, BOARD: generic, "
            f"EABI: aarch64, DATE: {date}")


def deb_version(release: str) -> str:
    return f"{release}-{_release(release)[2]}"


def _lib(name: str, release: str) -> bytes:
    return (f"FAKE placeholder for NVIDIA's {name} (L4T R{release} test BSP); "
            "not a shared object\n").encode()


def _nv_tegra_release(release: str) -> str:
    lines = [nv_tegra_release_line(release), "# KERNEL_VARIANT: oot",
             "TARGET_USERSPACE_LIB_DIR=nvidia",
             f"TARGET_USERSPACE_LIB_DIR_PATH={NVIDIA_LIB_DIR}"]
    lines += [f"{hashlib.sha1(_lib(n, release)).hexdigest()} */{NVIDIA_LIB_DIR}/{n}"
              for n in FAKE_LIBS]
    return "\n".join(lines) + "\n"


def _tbz2(path: Path, files: dict[str, bytes | None], links: dict[str, str] | None = None,
          ) -> None:
    """A bzip2 tar owned by root: FILES maps names to contents (None: a directory)."""
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 1736300977
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        for name, target in sorted((links or {}).items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            info.uname = info.gname = "root"
            info.mtime = 1736300977
            tar.addfile(info)


def _xml(devices: list[tuple[str, int, list[tuple[str, str, str, str]]]]) -> str:
    """A partition layout: devices of (type, num_sectors, [(name, type, size, file)])."""
    out = ['<?xml version="1.0"?>',
           "<!-- Test fake of an NVIDIA partition layout (tests/fakes/jetson): the real",
           "     structure and names, fewer partitions. -->",
           '<partition_layout version="01.00.0000">']
    for dtype, sectors, parts in devices:
        out.append(f'    <device type="{dtype}" instance="0" sector_size="512" '
                   f'num_sectors="{sectors}" >')
        for name, ptype, size, filename in parts:
            out.append(f'        <partition name="{name}" type="{ptype}">')
            out.append("            <allocation_policy> sequential </allocation_policy>")
            out.append(f"            <size> {size} </size>")
            if filename:
                out.append(f"            <filename> {filename} </filename>")
            out.append("        </partition>")
        out.append("    </device>")
    out.append("</partition_layout>")
    return "\n".join(out) + "\n"


QSPI = [("BCT", "boot_config_table", "262144", ""),
        ("A_mb1", "mb1_bootloader", "524288", "MB1FILE"),
        ("A_psc_bl1", "psc_bl1", "262144", "PSCBL1FILE"),
        ("A_MB1_BCT", "mb1_boot_config_table", "262144", ""),
        ("A_MEM_BCT", "mem_boot_config_table", "262144", ""),
        ("A_mb2", "mb2_bootloader", "524288", "MB2BLFILE"),
        ("A_bpmp-fw", "bpmp_fw", "1572864", "BPFFILE"),
        ("A_bpmp-fw-dtb", "bpmp_fw_dtb", "1048576", "BPFDTB_FILE"),
        ("A_cpu-bootloader", "bootloader_stage2", "3670016", "TBCDTB-FILE"),
        ("A_secure-os", "tos", "4194304", "TOSFILE"),
        ("secondary_gpt", "secondary_gpt", "16896", "")]
ROOT_DISK = [("master_boot_record", "protective_master_boot_record", "512", ""),
             ("primary_gpt", "primary_gpt", "19968", ""),
             ("A_kernel", "kernel", "134217728", "LNXFILE"),
             ("A_kernel-dtb", "kernel_dtb", "786432", "DTB_FILE"),
             ("esp", "data", "67108864", "ESP_FILE"),
             ("APP", "data", "APPSIZE", "APPFILE"),
             ("secondary_gpt", "secondary_gpt", "0xFFFFFFFFFFFFFFFF", "")]
ROOT_DISK_AB = [*ROOT_DISK[:4], ("B_kernel", "kernel", "134217728", "LNXFILE"),
                ("B_kernel-dtb", "kernel_dtb", "786432", "DTB_FILE"), *ROOT_DISK[4:6],
                ("APP_b", "data", "APPSIZE", "APPFILE_b"), ROOT_DISK[6]]
EXTLINUX = """\
TIMEOUT 30
DEFAULT primary

MENU TITLE L4T boot options

LABEL primary
      MENU LABEL primary kernel
      LINUX /boot/Image
      INITRD /boot/initrd
      APPEND ${cbootargs} root=/dev/mmcblk0p1 rw rootwait rootfstype=ext4 mminit_loglevel=4 \
console=ttyTCU0,115200 firmware_class.path=/etc/firmware fbcon=map:0 net.ifnames=0 \
nospectre_bhb video=efifb:off console=tty0
"""


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)


def _script(tree: Path, source: str, rel: str) -> None:
    _write(tree / rel, (TOOLS / source).read_bytes(), 0o755)


def _populate(l4t: Path, release: str) -> None:
    kver = _release(release)[3]
    repos, ubuntu, debs = _line(release)
    major, minor, patch = release.split(".")
    debver = deb_version(release)
    # tools, under their real names
    _script(l4t, "apply_binaries.py", "apply_binaries.sh")
    _script(l4t, "flash_sh.py", "flash.sh")
    _script(l4t, "l4t_create_default_user.py", "tools/l4t_create_default_user.sh")
    _write(l4t / "tools/kernel_flash/l4t_initrd_flash.sh",
           (TOOLS / "l4t_initrd_flash.py").read_text().replace(
               "\nSCRIPT_BRANCH = 36\n", f"\nSCRIPT_BRANCH = {int(major)}\n"), 0o755)
    for rel in ("tools/kernel_flash/l4t_initrd_flash_internal.sh",
                "tools/kernel_flash/l4t_create_images_for_kernel_flash.sh",
                "tools/kernel_flash/l4t_flash_from_kernel.sh", "nv_tegra/nv-apply-debs.sh",
                "nv_tools/scripts/nv_customize_rootfs.sh"):
        _script(l4t, "stub.py", rel)
    # board configs: devkit names are symlinks to the module configs
    confs = {
        "p3767.conf.common": _chip_sku_function({"D3": "TE980M-A1", "D4": "TE980M-A1",
                                                 "D5": "TE950M-A1", "D6": "TE950M-A1"})
        + 'CHIPID=0x23;\nODMDATA="gbe-uphy-config-8,hsstp-lane-map-3,hsio-uphy-config-0";\n'
        'ROOTFSSIZE=55GiB;\nBPFFILE="bootloader/bpmp_t234-TE980M-A1_prod.bin";\n'
        'EMC_OPT_DISABLE_FUSE_OVERRIDE="1";\nDEFAULT_CHIP_SKU="00:00:00:D3";\n'
        'OTA_BOOT_DEVICE="/dev/mtdblock0";\nOTA_GPT_DEVICE="/dev/mtdblock0";\n'
        'DEFAULT_FAB="A00";\n',
        "p3768-0000-p3767-0000-a0.conf": 'source "${LDK_DIR}/p3767.conf.common";\n'
        'BPFDTB_FILE="tegra234-bpmp-3767-0000-a02-3509-a02.dtb";\n'
        'EMMC_CFG="flash_t234_qspi_sd.xml";\nDTB_FILE=tegra234-p3768-0000+p3767-0000-nv.dtb;\n'
        'TBCDTB_FILE="${DTB_FILE}";\n',
        "p3701.conf.common": _chip_sku_function({"90": "TE992M-A1", "97": "TA990SA-A1",
                                                 "9E": "TA990SA-A1", "D0": "TE990M-A1",
                                                 "D2": "TE990M-A1"})
        + 'CHIPID=0x23;\nODMDATA="gbe-uphy-config-22,hsstp-lane-map-3,'
        'nvhs-uphy-config-0,hsio-uphy-config-0,gbe0-enable-10g";\nROOTFSSIZE=55GiB;\n'
        'BPFFILE="bootloader/bpmp_t234-TE990M-A1_prod.bin";\n'
        'EMC_OPT_DISABLE_FUSE_OVERRIDE="1";\nDEFAULT_CHIP_SKU="00:00:00:D0"\n'
        'OTA_BOOT_DEVICE="/dev/mtdblock0";\nOTA_GPT_DEVICE="/dev/mtdblock0";\n'
        'DEFAULT_FAB="A00";\n',
        "p3737-0000-p3701-0000.conf.common": 'source "${LDK_DIR}/p3701.conf.common";\n'
        'EMMC_CFG="flash_t234_qspi_sdmmc.xml";\n',
        "p3737-0000-p3701-0000.conf": 'source "${LDK_DIR}/p3737-0000-p3701-0000.conf.common";'
        '\nDTB_FILE=tegra234-p3737-0000+p3701-0000-nv.dtb;\nTBCDTB_FILE="${DTB_FILE}";\n',
    }
    links = dict(BOARD_CONFIGS)
    if (int(major), int(minor), int(patch)) >= (36, 4, 3):  # JetPack 6.2 adds the Super
        # devkit config
        confs[SUPER_BOARD[1]] = ('# Not NVIDIA\'s file (no R36.4 BSP is readable here): the '
                                 'base config, whose\n# kernel DTBs the fake names '
                                 '*-nv-super.dtb for this file\n'
                                 'source "${LDK_DIR}/p3768-0000-p3767-0000-a0.conf";\n')
        links[SUPER_BOARD[0]] = SUPER_BOARD[1]
    for name, text in confs.items():
        _write(l4t / name, CONF_HEADER + text)
    for board, target in links.items():
        (l4t / f"{board}.conf").symlink_to(target)
    # release identity
    _write(l4t / "nv_tegra/nv_tegra_release", _nv_tegra_release(release))
    _write(l4t / "nv_tegra/bsp_version", "# Test fake of NVIDIA's nv_tegra/bsp_version\n"
           f"BSP_BRANCH={major}\nBSP_MAJOR={minor}\nBSP_MINOR={patch}\n")
    _write(l4t / "nv_tegra/user_version", "USER_MAJOR_NUM=0\nUSER_MINOR_NUM=0\n"
           'USER_VERSION="${USER_MAJOR_NUM}.${USER_MINOR_NUM}"\n')
    # what apply_binaries.sh installs (the .debs and the -t tarballs hold the same files)
    for deb in debs:
        _write(l4t / f"nv_tegra/l4t_deb_packages/{deb}_{debver}_arm64.deb",
               f"test placeholder for {deb}_{debver}_arm64.deb\n")
    _write(l4t / f"kernel/nvidia-l4t-kernel_{kver}-tegra-{debver}_arm64.deb", "placeholder\n")
    _write(l4t / f"bootloader/nvidia-l4t-bootloader_{debver}_arm64.deb", "placeholder\n")
    _write(l4t / "tools/python3-jetson-gpio_2.1.3ubuntu1_arm64.deb", "placeholder\n")
    drivers: dict[str, bytes | None] = {
        "etc/nv_tegra_release": _nv_tegra_release(release).encode(),
        "etc/ld.so.conf.d/nvidia-tegra.conf": f"/{NVIDIA_LIB_DIR}\n".encode(),
        "etc/nv": None,
        LICENSE: b"FAKE placeholder for the License For Customer Use of NVIDIA Software\n",
        # nvidia-l4t-apt-source (nv-apply-debs.sh installs it, but for --dgpu/--factory):
        # NVIDIA's Jetson repository for this release, keyed in trusted.gpg.d
        APT_SOURCE: "".join(f"deb {JETSON_REPO}/{r} r{major}.{minor} main\n"
                            for r in repos).encode(),
        "etc/apt/trusted.gpg.d/jetson-ota-public.asc": b"FAKE placeholder for NVIDIA's "
        b"jetson-ota-public.asc (not a key)\n",
    }
    drivers.update({f"{NVIDIA_LIB_DIR}/{n}": _lib(n, release) for n in FAKE_LIBS})
    _tbz2(l4t / "nv_tegra/nvidia_drivers.tbz2", drivers,
          {f"{NVIDIA_LIB_DIR}/libcuda.so.1": "libcuda.so.1.1",
           f"{NVIDIA_LIB_DIR}/libcuda.so": "libcuda.so.1"})
    for name in ("config", "nv_tools", "nv_optee", "weston", "graphics_demos"):
        _tbz2(l4t / f"nv_tegra/{name}.tbz2", {})
    modules = f"lib/modules/{kver}-tegra"
    _tbz2(l4t / "kernel/kernel_supplements.tbz2",
          {f"{modules}/modules.dep": b"", f"{modules}/kernel": None})
    _tbz2(l4t / "kernel/kernel_oot_modules.tbz2",
          {f"{modules}/updates/nvgpu.ko": b"FAKE placeholder kernel module\n"})
    _tbz2(l4t / "kernel/kernel_headers.tbz2",
          {f"linux-headers-{kver}-tegra-ubuntu{ubuntu}_aarch64": None})
    _write(l4t / "kernel/Image", f"FAKE kernel image: Linux version {kver}-tegra \n")
    # bootloader and partition layouts
    _write(l4t / "bootloader/extlinux.conf", EXTLINUX)
    for fw in BPMP_FIRMWARE:
        _write(l4t / f"bootloader/bpmp_t234-{fw}_prod.bin", f"FAKE placeholder {fw}\n")
    # present in the real bootloader/ (else l4t_initrd_flash_internal.sh:113-116 warns)
    _write(l4t / "bootloader/odmsign.func", "# FAKE placeholder for odmsign.func\n")
    _write(l4t / "bootloader/nv_boot_control.conf", "TEGRA_OTA_BOOT_DEVICE\t/dev/mmcblk0boot0"
           "\nTEGRA_OTA_GPT_DEVICE\t/dev/mmcblk0boot1\nTNSPEC\t\t\tP2771-0000-C04-devkit.default\n")
    cfg = l4t / "bootloader/generic/cfg"
    _write(cfg / "flash_t234_qspi.xml", _xml([("spi", 131072, QSPI)]))
    _write(cfg / "flash_t234_qspi_sd.xml", _xml([("spi", 131072, QSPI),
                                                 ("sdcard", 61407232, ROOT_DISK)]))
    _write(cfg / "flash_t234_qspi_sdmmc.xml", _xml([("spi", 131072, QSPI),
                                                    ("sdmmc_user", 122142720, ROOT_DISK)]))
    kf = l4t / "tools/kernel_flash"
    _write(kf / "flash_l4t_t234_nvme.xml", _xml([("external", 0, ROOT_DISK)]))
    _write(kf / "flash_l4t_t234_nvme_rootfs_ab.xml", _xml([("external", 0, ROOT_DISK_AB)]))
    (kf / "flash_l4t_external.xml").symlink_to("flash_l4t_t234_nvme.xml")
    (kf / "flash_l4t_nvme.xml").symlink_to("flash_l4t_t234_nvme.xml")
    (kf / "flash_l4t_nvme_rootfs_ab.xml").symlink_to("flash_l4t_t234_nvme_rootfs_ab.xml")
    _write(l4t / "rootfs/README.txt",
           "Download and extract the sample filesystem to this directory.\n")


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_bsp(dest: Path, release: str = "36.4.3") -> Path:
    """Write dest/Jetson_Linux_R<release>_aarch64.tbz2 and return its path."""
    _release(release)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"Jetson_Linux_R{release}_aarch64.tbz2"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        l4t = Path(tmp) / "Linux_for_Tegra"
        l4t.mkdir()
        _populate(l4t, release)
        with tarfile.open(out, "w:bz2") as tar:
            tar.add(l4t, arcname="Linux_for_Tegra", filter=_root_owned)
    return out


def make_sample_rootfs(tree_tarball: Path, dest: Path, release: str) -> Path:
    """Re-pack TREE_TARBALL (a Debian arm64 rootfs tar, e.g. from mmdebstrap; any
    compression) as dest/Tegra_Linux_Sample-Root-Filesystem_R<release>_aarch64.tbz2, with
    its numeric owners, modes, links and device nodes as they are."""
    _release(release)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"Tegra_Linux_Sample-Root-Filesystem_R{release}_aarch64.tbz2"
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tree_tarball, "r|*") as src, \
            tarfile.open(tmp, "w|bz2", format=tarfile.PAX_FORMAT) as dst:
        for m in src:
            m.name = m.name.lstrip("/") or "."
            if m.isreg():
                dst.addfile(m, src.extractfile(m))
            else:
                dst.addfile(m)
    shutil.move(tmp, out)
    return out
