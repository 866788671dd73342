"""Real-vs-fake table for the L4T fakes (tests/fakes/jetson): each row is a command line,
environment and host situation, and what NVIDIA's Jetson Linux R36.2.0 scripts do there
(exit code, message, file), with the line of the real script it expects. The real
scripts were read from the public mirror johnnynunez/Linux_for_Tegra, commit 9a5768c1
(internal.sh below is tools/kernel_flash/l4t_initrd_flash_internal.sh). Rows marked
UNVERIFIED expect what the fake documents where no real source was readable.

A missing host tool is a PATH made of links to the tools that are there; a missing
fixed path (/usr/bin/qemu-aarch64-static, /usr/bin/xmllint) is a $FAKE_HOST_ROOT without
it. Rows with nothing missing run on the build host's own PATH and files."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes.jetson.fake_l4t import make_bsp
from fakes.jetson.fake_sysfs import make_usb_sysfs
from test_fakes_jetson import (
    HOST_FILES,
    HOST_TOOLS,
    INITRD,
    NANO_IDS,
    NANO_NVME,
    host_env,
    missing_host_tools,
    out,
    run,
    tiny_rootfs,
)

NANO = "jetson-orin-nano-devkit"
GENERATE = [*NANO_NVME, "--no-flash", NANO, "internal"]
USER_TOOL = "./tools/l4t_create_default_user.sh"
BPMP = "bootloader/flashcmd.txt"


@dataclass
class Case:
    id: str
    tool: str  # INITRD, "./apply_binaries.sh" or USER_TOOL
    args: list[str]
    tree: str  # fresh | applied | applied-r39 | generated | massflash
    rc: int
    expect: list[str] = field(default_factory=list)  # in stdout + stderr
    env: dict[str, str] = field(default_factory=dict)
    missing: tuple[str, ...] = ()  # host tools or fixed paths taken away
    boards: list[tuple[str, str]] = field(default_factory=list)  # (USB product, port)
    stdout_lacks: list[str] = field(default_factory=list)
    file_has: list[tuple[str, str]] = field(default_factory=list)  # (glob, text)
    file_lacks: list[tuple[str, str]] = field(default_factory=list)


CASES = [
    # --- host prerequisites, l4t_initrd_flash.sh --no-flash (internal.sh:89-122, 755)
    Case("no-flash-without-sshpass", INITRD, GENERATE, "applied", 1, [  # internal.sh:92-97
        'ERROR sshpass not found! To install - please run:  "sudo apt-get install sshpass"',
        "Cleaning up..."], NANO_IDS, ("sshpass",)),
    Case("no-flash-without-abootimg", INITRD, GENERATE, "applied", 1, [  # internal.sh:99-104
        'ERROR abootimg not found! To install - please run:  "sudo apt-get install '
        'abootimg"'], NANO_IDS, ("abootimg",)),
    Case("no-flash-network-usb0-without-exportfs", INITRD, GENERATE, "applied", 1, [
        # network_prerequisite: l4t_network_flash.func:41-46, from internal.sh:118-120
        'ERROR nfs-kernel-server not found! To install - please run:  "sudo apt-get install '
        'nfs-kernel-server"'], NANO_IDS, ("exportfs",)),
    Case("no-flash-no-network-option-still-needs-exportfs", INITRD,
         ["--no-flash", "jetson-agx-orin-devkit", "mmcblk0p1"], "applied", 1,
         # the internal script's network defaults to usb0 (internal.sh:739)
         ["ERROR nfs-kernel-server not found!"],
         {"BOARDID": "3701", "BOARDSKU": "0005", "FAB": "500"}, ("exportfs",)),
    Case("no-flash-without-xmllint-on-path", INITRD, GENERATE, "applied", 1, [
        # check_prereq: l4t_create_images_for_kernel_flash.sh:187-195, 564
        'ERROR xmllint not found! To install - please run:  "sudo apt-get install '
        'libxml2-utils"'], NANO_IDS, ("xmllint",)),
    Case("no-flash-without-usr-bin-xmllint", INITRD, GENERATE, "applied", 1, [
        # flash.sh's check_xmllint tests the fixed path (flash.sh:1215-1229)
        "ERROR xmllint not found!", "Error: failed to relocate images to"],
        NANO_IDS, ("/usr/bin/xmllint",)),
    Case("no-flash-with-all-tools", INITRD, GENERATE, "applied", 0,
         ["Finish generating flash package."], NANO_IDS),
    # --- host prerequisites, --flash-only (internal.sh:89-122 in the per-board call)
    Case("flash-only-without-sshpass", INITRD, ["--flash-only"], "generated", 1, [
        'ERROR sshpass not found!'], {}, ("sshpass",), [("7523", "1-4")],
        stdout_lacks=["Flash is successful"]),  # internal.sh:92-97
    Case("flash-only-without-exportfs", INITRD, ["--flash-only"], "generated", 1,
         ["ERROR nfs-kernel-server not found!"], {}, ("exportfs",), [("7523", "1-4")]),
    Case("flash-only-does-not-need-abootimg", INITRD, ["--flash-only"], "generated", 0,
         # abootimg only when not --flash-only (internal.sh:99)
         ["Flash is successful"], {}, ("abootimg",), [("7523", "1-4")]),
    # --- R38 and later: the outer script's own check_prerequisite, first (Seeed-Studio/
    # Linux_for_Tegra 06119ad, an R38/R39 tree: l4t_initrd_flash.sh:55-104; UNVERIFIED
    # for 39.2 itself, whose tree is not readable), no "Cleaning up..." (its trap: 44-53)
    Case("r39-no-flash-without-xmlstarlet", INITRD, GENERATE, "applied-r39", 1, [  # 58-63
        'ERROR xmlstarlet not found! To install - please run:  "sudo apt-get install '
        'xmlstarlet"'], NANO_IDS, ("xmlstarlet",), stdout_lacks=["Cleaning up..."]),
    Case("r39-no-flash-without-zstd", INITRD, GENERATE, "applied-r39", 1, [  # 79-84
        'ERROR zstd not found! To install - please run:  "sudo apt-get install zstd"'],
        NANO_IDS, ("zstd",), stdout_lacks=["Cleaning up..."]),
    Case("r39-no-flash-with-all-tools", INITRD, GENERATE, "applied-r39", 0,
         ["Finish generating flash package."], NANO_IDS),
    Case("r36-needs-neither", INITRD, GENERATE, "applied", 0,
         ["Finish generating flash package."], NANO_IDS, ("xmlstarlet", "zstd")),
    # --- apply_binaries.sh
    Case("apply-binaries-without-dpkg-knowing-qemu", "./apply_binaries.sh", [], "fresh", 1, [
        # CheckPackage qemu-user-static: `dpkg -s` (apply_binaries.sh:122-127, 170)
        "The required qemu-user-static is not installed. Please install it before "
        "proceeding."], {}, ("dpkg",)),
    Case("apply-binaries-without-usr-bin-qemu", "./apply_binaries.sh", [], "fresh", 1, [
        # nv-apply-debs.sh:258-269: the fixed path /usr/bin/qemu-aarch64-static
        "QEMU binary is not available, looking for QEMU from host system",
        'ERROR qemu not found! To install - please run:  "sudo apt-get install '
        'qemu-user-static"'], {}, ("/usr/bin/qemu-aarch64-static",)),
    Case("apply-binaries-target-overlay-without-lbzip2", "./apply_binaries.sh",
         ["--target-overlay"], "fresh", 2,
         # TAR_ROOTFS_DIR_OPTS="... -I lbzip2 ..." (apply_binaries.sh:240, 281); GNU tar
         ["tar (child): lbzip2: Cannot exec: No such file or directory"], {}, ("lbzip2",)),
    Case("apply-binaries-with-all-tools", "./apply_binaries.sh", [], "fresh", 0,
         ["Found /usr/bin/qemu-aarch64-static", "Success!"]),  # nv-apply-debs.sh:260-262
    # --- l4t_create_default_user.sh
    Case("create-user-without-usr-bin-qemu", USER_TOOL, ["-u", "edge", "--accept-license"],
         "applied", 1, ["ERROR: please install qemu-user-static package", "Usage:"],
         {}, ("/usr/bin/qemu-aarch64-static",)),  # l4t_create_default_user.sh:155-158
    Case("create-user-hostname", USER_TOOL,
         ["-u", "edge", "-p", "pw", "--hostname", "orin-17", "--accept-license"], "applied",
         # -n | --hostname (l4t_create_default_user.sh:96-100), etc/hostname (266-273)
         0, ["Creating: Hostname - orin-17"],
         file_has=[("rootfs/etc/hostname", "orin-17\n"), ("rootfs/etc/hosts",
                                                          "127.0.1.1 orin-17")]),
    Case("create-user-hostname-without-value", USER_TOOL, ["--hostname"], "applied", 1,
         ["Usage:"]),  # [ -n "${2}" ] || usage (l4t_create_default_user.sh:97)
    # --- CHIP_SKU and the BPMP firmware (p3767.conf.common:44-70, 205; flash.sh:2276-2291)
    Case("nano-without-chip-sku-gets-the-nx-firmware", INITRD, GENERATE, "applied", 0,
         # DEFAULT_CHIP_SKU="00:00:00:D3" (205) -> TE980M-A1 (53): the real wrong thing
         ["Chip SKU(00:00:00:D3) ramcode() fuselevel(fuselevel_production) board_FAB(300)"],
         NANO_IDS, file_has=[(BPMP, "bpmp_fw bpmp_t234-TE980M-A1_prod.bin;")]),
    Case("nano-chip-sku-d5", INITRD, GENERATE, "applied", 0, ["Chip SKU(00:00:00:D5)"],
         {**NANO_IDS, "CHIP_SKU": "00:00:00:D5"},  # D5 -> TE950M-A1 (55, 60-62)
         file_has=[(BPMP, "bpmp_fw bpmp_t234-TE950M-A1_prod.bin;"),
                   ("tools/kernel_flash/images/internal/flash.idx",
                    "bpmp_t234-TE950M-A1_prod_sigheader.bin.encrypt")]),
    Case("nano-chip-sku-d6-without-colons", INITRD, GENERATE, "applied", 0, ["Chip SKU(D6)"],
         # flash.sh:2277 sets chip_SKU from CHIP_SKU; no ":" keeps it (60): D6 (56)
         {**NANO_IDS, "CHIP_SKU": "D6"},
         file_has=[(BPMP, "bpmp_fw bpmp_t234-TE950M-A1_prod.bin;")]),
    Case("nano-chip-sku-00-keeps-the-config-firmware", INITRD, GENERATE, "applied", 0, [],
         {**NANO_IDS, "CHIP_SKU": "00:00:00:00"},  # "do not override BPFFILE" (64-65)
         file_has=[(BPMP, "bpmp_fw bpmp_t234-TE980M-A1_prod.bin;")]),
    Case("nano-unknown-chip-sku-drops-the-firmware", INITRD, GENERATE, "applied", 0, [],
         # no table entry: BPFFILE "bpmp_t234-_prod.bin", not in bootloader/, left out
         # without an error (flash.sh:360-381, 2410, 3353-3364)
         {**NANO_IDS, "CHIP_SKU": "00:00:00:D9"}, file_lacks=[(BPMP, "bpmp_fw bpmp_t234")]),
    Case("agx-without-chip-sku", INITRD, ["--no-flash", "jetson-agx-orin-devkit", "mmcblk0p1"],
         "applied", 0, ["Chip SKU(00:00:00:D0)"],  # p3701.conf.common:58-61, 224
         {"BOARDID": "3701", "BOARDSKU": "0005", "FAB": "500"},
         file_has=[(BPMP, "bpmp_fw bpmp_t234-TE990M-A1_prod.bin;"),
                   (BPMP, "bpmp_fw_dtb tegra234-bpmp-3701-0005-3737-0000.dtb;")]),
    # --- module SKUs (p3768-0000-p3767-0000-a0.conf:32-75)
    Case("nano-sku-0005-devkit-module", INITRD, GENERATE, "applied", 0,
         ["Board ID(3767) version(300) sku(0005)"],
         {**NANO_IDS, "BOARDSKU": "0005", "CHIP_SKU": "00:00:00:D5"},
         file_has=[(BPMP, "bpmp_fw_dtb tegra234-bpmp-3767-0003-3509-a02.dtb;"),  # 66-68
                   (BPMP, "kernel_dtb tegra234-p3768-0000+p3767-0005-nv.dtb")]),
    Case("nano-sku-0002-uses-the-0000-dtbs", INITRD, GENERATE, "applied", 0, [],
         {**NANO_IDS, "BOARDSKU": "0002"},  # 54-61 and the defaults (102-104)
         file_has=[(BPMP, "bpmp_fw_dtb tegra234-bpmp-3767-0000-a02-3509-a02.dtb;"),
                   (BPMP, "kernel_dtb tegra234-p3768-0000+p3767-0000-nv.dtb")]),
    Case("nano-sku-0006-is-refused", INITRD, GENERATE, "applied", 1,
         ["Error: Unrecognized module SKU 0006"], {**NANO_IDS, "BOARDSKU": "0006"}),  # 73-75
    Case("super-board-config", INITRD, [*NANO_NVME, "--no-flash",
                                        "jetson-orin-nano-devkit-super", "internal"],
         # UNVERIFIED (no R36.4 file): the -nv-super kernel DTB; the firmware as above
         "applied", 0, [], {**NANO_IDS, "CHIP_SKU": "00:00:00:D5"},
         file_has=[(BPMP, "kernel_dtb tegra234-p3768-0000+p3767-0003-nv-super.dtb"),
                   (BPMP, "bpmp_fw bpmp_t234-TE950M-A1_prod.bin;")]),
    # --- boards and massflash (l4t_initrd_flash.sh)
    Case("flash-only-no-board", INITRD, ["--flash-only"], "generated", 1,
         ["No devices to flash"]),  # 163-167
    Case("generate-and-flash-two-boards-refused", INITRD, [*NANO_NVME, NANO, "internal"],
         "applied", 1,
        ["Error, too many devices in RCM mode",  # 171-177
         "For signing and flashing, only one device is supported"],
        NANO_IDS, boards=[("7523", "1-4"), ("7523", "1-5")]),
    Case("flash-only-two-boards-without-massflash", INITRD, ["--flash-only"], "generated", 1,
         ["Too many devices in RCM mode"], {},  # max_massflash 1 (func:214-222), 186-189
         boards=[("7523", "1-4"), ("7523", "1-5")]),
    Case("massflash-2-one-board-logs-only", INITRD,
         ["--flash-only", "--massflash", "2", "--showlogs"], "massflash", 0,
         # N != 1: the board's output only in its log (216), stdout the summary (220-221);
         # success: no closing line (260-263)
         ["Start flashing device: 1-4, rcm instance: 0, PID: ",
          "Log will be saved to Linux_for_Tegra/initrdlog/flash_1-4_0_"],
         boards=[("7523", "1-4")],
         stdout_lacks=["Flash is successful", "Step 3", "Flash complete"],
         file_has=[("initrdlog/flash_1-4_0_*.log", "Flash is successful")]),
    Case("massflash-2-a-board-fails", INITRD, ["--flash-only", "--massflash", "2"],
         "massflash", 1, ["Ongoing processes:", "Flash complete (WITH FAILURES)"],  # 260-263
         {"FAKE_FLASH_FAIL": "nvme-missing", "FAKE_FLASH_FAIL_USB": "1-5"},
         boards=[("7523", "1-4"), ("7523", "1-5")],
         file_has=[("initrdlog/flash_1-5_1_*.log", "Flash failure"),
                   ("initrdlog/flash_1-4_0_*.log", "Flash is successful")]),
]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Linux_for_Tegra as unpacked (a tiny rootfs in it), after apply_binaries.sh (R36's
    and R39.2's), and with an Orin Nano NVMe package generated (plain, and for
    --massflash 2)."""
    if os.geteuid() != 0:
        pytest.skip("the L4T tools require root, and so do their fakes")
    if missing_host_tools():
        pytest.skip("the L4T tools need these on the host: " + ", ".join(missing_host_tools()))
    base = tmp_path_factory.mktemp("l4t-real")
    env = host_env(base)
    with tarfile.open(make_bsp(base)) as tar:
        tar.extractall(base / "fresh", numeric_owner=True, filter="fully_trusted")
    with tarfile.open(make_bsp(base / "r39", "39.2.0")) as tar:
        tar.extractall(base / "fresh-r39", numeric_owner=True, filter="fully_trusted")
    got = {"fresh": base / "fresh/Linux_for_Tegra",
           "fresh-r39": base / "fresh-r39/Linux_for_Tegra"}
    tiny_rootfs(got["fresh"] / "rootfs")
    tiny_rootfs(got["fresh-r39"] / "rootfs")
    for name, src, cmd in (("applied", "fresh", ["./apply_binaries.sh"]),
                           ("applied-r39", "fresh-r39", ["./apply_binaries.sh"]),
                           ("generated", "applied", [INITRD, *GENERATE]),
                           ("massflash", "applied", [INITRD, "--massflash", "2", *GENERATE])):
        got[name] = Path(shutil.copytree(got[src], base / name / "Linux_for_Tegra",
                                         symlinks=True))
        p = run(cmd, got[name], {**env, **NANO_IDS})
        assert p.returncode == 0, out(p)
    return got


def host_without(tmp: Path, missing: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
    """ENV with a PATH of links to the host tools but MISSING, and a $FAKE_HOST_ROOT with
    the fixed paths but MISSING."""
    bin_dir, root = tmp / "bin", tmp / "hostroot"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    for tool in (*HOST_TOOLS, "dpkg-query", "cp"):  # `dpkg -s` runs dpkg-query
        if tool.split("-")[0] not in missing:
            (bin_dir / tool).symlink_to(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"))
    for path in HOST_FILES:
        if path not in missing:
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).symlink_to(path)
    return {**env, "PATH": str(bin_dir), "FAKE_HOST_ROOT": str(root)}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fake_does_what_the_real_one_does(case: Case, trees: dict[str, Path],
                                          tmp_path: Path) -> None:
    l4t = Path(shutil.copytree(trees[case.tree], tmp_path / "Linux_for_Tegra", symlinks=True))
    env = {**host_env(tmp_path), **case.env,
           "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys", case.boards))}
    if case.missing:
        env = host_without(tmp_path, case.missing, env)
    p = run([case.tool, *case.args], l4t, env)
    assert p.returncode == case.rc, out(p)
    for text in case.expect:
        assert text in out(p), (text, out(p))
    for text in case.stdout_lacks:
        assert text not in p.stdout, (text, p.stdout)
    for pattern, text in case.file_has:
        files = sorted(l4t.glob(pattern))
        assert files and text in files[0].read_text(), (pattern, text)
    for pattern, text in case.file_lacks:
        assert all(text not in f.read_text() for f in l4t.glob(pattern)), (pattern, text)
