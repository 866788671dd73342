#!/usr/bin/env python3
# Test fake of NVIDIA's Linux_for_Tegra/tools/kernel_flash/l4t_initrd_flash.sh, installed
# by tests/fakes/jetson/fake_l4t.py under its real name. It mirrors Jetson Linux R36.2.0 as
# read from the public mirror johnnynunez/Linux_for_Tegra (commit 9a5768c1); no R36.3/R36.4
# copy was readable, so a BSP made for 36.4.x runs this R36.2 behaviour. It folds in what
# the real one delegates to l4t_initrd_flash_internal.sh (below: internal.sh),
# l4t_create_images_for_kernel_flash.sh (create_images.sh) and flash.sh. Each behaviour,
# with the lines it mirrors:
#   options      bash getopts "u:p:v:c:-:S:k:i:", long options taking the next word,
#                --massflash [N] (l4t_initrd_flash.func:104-210); usage and exit 1 (25-101)
#   root         install_udev_rules: `ln -s` into /etc/udev/rules.d fails for non-root
#                (l4t_initrd_flash.sh:48-52, 147); create_images.sh checks $USER (492-495)
#   boards       fill_devpaths: vendor 0955 and the recovery-mode products (60-122)
#   host tools   check_prerequisite, in every mode, --no-flash included (internal.sh:89-122,
#                755): `command -v sshpass` unless --direct, `command -v abootimg` unless
#                --flash-only, "-c" with --external-device, then network_prerequisite
#                (the internal script's network defaults to usb0, 739, so it always runs):
#                `command -v exportfs` (l4t_network_flash.func:41-46) and, for eth0, the
#                addresses (95-113; a shape check here, not `ip route get`). Each prints
#                "ERROR <tool> not found! To install - please run:  "sudo apt-get install
#                <package>"", then the EXIT trap's "Cleaning up..." (internal.sh:56-61),
#                exit 1. create_images.sh needs `command -v xmllint` (187-195, 564);
#                flash.sh tests the fixed path /usr/bin/xmllint (flash.sh:1215-1229; looked
#                for under $FAKE_HOST_ROOT, default /). lbzip2 is not used on this path
#                (only apply_binaries.sh --target-overlay uses it)
#   generation   "Step 1: Generate flash packages", flash.sh --no-flash --sign per storage,
#                package_images (flash.idx, flash.cfg, images), "Step 2: Generate rcm
#                boot commandline", flashcmd.txt, initrdflashparam.txt, boot<N>.img for
#                N < max_massflash, mfi_<board>/ and its .tar.gz (internal.sh:759-796)
#   module       flash.sh with BOARDID/BOARDSKU/FAB and no board (flash.sh:2258-2297):
#                "Board ID(...)" (process_board_version), then process_chip_sku_version
#                with CHIP_SKU from the environment, else the config's DEFAULT_CHIP_SKU
#                (p3767: 00:00:00:D3, the Orin NX chip; p3701: D0): "00:00:00:D5" and "D5"
#                both select D5; the BPMP firmware is BPFFILE with T.*-A1 replaced from the
#                config's table (D3/D4 TE980M-A1, D5/D6 TE950M-A1; 00 keeps BPFFILE); an
#                SKU not in the table names a file the BSP lacks, and flash.sh then leaves
#                the firmware out without an error (mkfilesoft, flash.sh:360-381, 2410,
#                3353-3364). p3767.conf.common:44-70, p3701.conf.common:46-73. The pick
#                shows in flashcmd.txt's --bins ("bpmp_fw bpmp_t234-TE950M-A1_prod.bin")
#                and in the A_bpmp-fw partition's file; update_flash_args maps the module
#                SKU to its DTBs (0005 uses 0003's BPMP DTB) and refuses others: "Error:
#                Unrecognized module SKU N" (p3768-0000-p3767-0000-a0.conf:32-75)
#   flashing     l4t_initrd_flash.sh: "No devices to flash" (163-167); generate-and-flash
#                refuses more than one board: "Error, too many devices in RCM mode" /
#                "For signing and flashing, only one device is supported" (171-177); more
#                boards than max_massflash (--massflash N, else the config's MAX_MASSFLASH,
#                else 10; 1 without --massflash, l4t_initrd_flash.func:212-222): "Too many
#                devices in RCM mode" (186-189). One board at a time (max_massflash 1 or
#                --direct): the internal script's output on stdout and in
#                initrdlog/flash_<usb port>_<instance>_<%Y%m%d-%H%M%S>.log, then "Log is
#                saved to Linux_for_Tegra/initrdlog/<that> " (211-214). Otherwise each
#                board's output goes only to its log; stdout gets the command, "Start
#                flashing device: <port>, rcm instance: <n>, PID: <pid>", "Log will be saved
#                to ...", without --showlogs "Ongoing processes: ..." lines, and at the end
#                "Flash complete (WITH FAILURES)" with exit 1 if any failed; on success
#                nothing more, exit 0 (216-263: R36.2 has no "Flash complete (SUCCESS)",
#                that is the legacy nvmflash.sh)
# Differences, on purpose:
#  * system.img is a tar of a few identity files of the rootfs (etc/nv_tegra_release,
#    etc/hostname, etc/passwd, boot/extlinux/extlinux.conf, ...), not of all of it, and
#    partition images are small placeholders whose sha1 is real; flashcmd.txt's other
#    arguments are abbreviated;
#  * boards in recovery mode are found by scanning the sysfs tree under $FAKE_SYSFS
#    (default /sys), without asking udevadm for the device node;
#  * nothing on the host is changed: no udev rules, no nfs-kernel-server restart, no
#    exportfs, no /etc/exports entry; the tools are only looked up;
#  * boards are flashed one after another, not in parallel, and the PIDs are made up;
#  * "flashing" writes logs only. FAKE_FLASH_FAIL=boot-timeout | ssh-timeout |
#    nvme-missing makes it fail like a board that does not come up in the flashing
#    initrd, whose ssh never answers, or that has no NVMe drive; FAKE_FLASH_FAIL_USB
#    (e.g. "1-4,1-5") limits the failure to those USB paths.
"""l4t_initrd_flash.sh: generate flash packages and flash Jetsons over USB (test fake)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavier modules load only on the paths that use them
    import xml.etree.ElementTree as ET

KFLASH = Path(__file__).resolve().parent  # tools/kernel_flash
BASE = KFLASH.parent.parent  # Linux_for_Tegra
BOOTLOADER = BASE / "bootloader"
ROOTFS = BASE / "rootfs"
IMAGES = KFLASH / "images"
FLASH_CMD = f"{KFLASH}/l4t_initrd_flash_internal.sh"
# the release line whose script this is: fake_l4t.make_bsp writes its BSP's here
SCRIPT_BRANCH = 36
PARAM_FILE = KFLASH / "initrdflashparam.txt"
IMG_MAP = KFLASH / "initrdflashimgmap.txt"
INFODIVIDER = "#" * 79
# where the fixed host paths the real scripts test (/usr/bin/xmllint) are looked for
HOST_ROOT = Path(os.environ.get("FAKE_HOST_ROOT", "/"))
# fill_devpaths(): the products the script flashes (vendor 0955, recovery mode)
RCM_PRODUCTS = {"7018": "TX2i", "7418": "TX2 4GB", "7c18": "TX2, TX2 NX", "7019": "AGX Xavier",
                "7819": "AGXi", "7919": "AGXi", "7023": "AGX Orin", "7223": "AGX Orin 32GB",
                "7323": "Orin NX 16GB (p3767-0000)", "7423": "Orin NX 8GB (p3767-0001)",
                "7523": "Orin Nano 8GB (p3767-0003)", "7623": "Orin Nano 4GB (p3767-0004)",
                "7e19": "NX"}
# what the module EEPROM says, by recovery-mode product (board id, sku, fab)
EEPROM = {"7023": ("3701", "0005", "500"), "7223": ("3701", "0004", "TS4"),
          "7323": ("3767", "0000", "300"), "7423": ("3767", "0001", "300"),
          "7523": ("3767", "0003", "300"), "7623": ("3767", "0004", "300")}
# update_flash_args() of each module family: the SKUs it accepts
SKUS = {"p3767": {"0000", "0001", "0002", "0003", "0004", "0005"},
        "p3701": {"0000", "0001", "0002", "0004", "0005"}}
DEVICE_TYPES = {"spi": 3, "sdmmc_boot": 0, "sdmmc_user": 1, "sdcard": 6, "external": 9}
LONG_WITH_VALUE = {"external-device", "pv-crt", "network", "usb-instance", "device-instance",
                   "image", "user_key", "direct", "uefi-keys", "uefi-enc"}
LONG_FLAGS = {"external-only", "initrd", "flash-only", "no-flash", "sparse", "keep", "reuse",
              "showlogs", "skipuid", "erase-all", "append", "use-backup-image",
              "with-systemimg"}
FLAG_ATTR = {"initrd": "initrd_only", "skipuid": "", "use-backup-image": "",
             "with-systemimg": ""}  # accepted, no effect here
USAGE = """
Usage: {0} <options> <board-name> <rootdev>
Where,
    -u <PKC key file>            PKC key used for odm fused board.
    -v <SBK key file>            SBK key used for encryptions
    -p <option>                  Pass options to flash.sh when generating the image for internal storage
    -k <target_partition>        Only flash parition specified with the label <target_partition>
    <board-name>                 Indicate which board to use.
    <rootdev>                    Indicate what root device to use
    --no-flash                   Generate the flash images
    --flash-only                 Flash using existing images
    --external-device <dev>      Generate and/or flash images for the indicated external storage
                                 device. If this is used, -c option must be specified.
    --external-only              Skip generating internal storage images
    --usb-instance               Specify the usb port where the flashing cable is plugged (i.e 1-3)
    --sparse                     Use sparse image to flash instead of tar image.
    -c <config file>             The partition layout for the external storage device.
    -S <size>                    External APP partition size in bytes. KiB, MiB, GiB short hands are allowed,
                                 for example, 1GiB means 1024 * 1024 * 1024 bytes. (optional)
    --massflash [<max_devices>]  Flash multiple device. Receive an option <count> argument to indicate the
                                 maximum number of devices supported. Default is 10 if not specified in board config file
    --showlogs                   Spawn gnome-terminal to show individual flash process logs. Applicable
                                 for --massflash only.
    --reuse                      Reuse existing working environment kept by --keep option.
    --keep                       Keep working environment instead of cleaning up after flashing
    --erase-all                  Delete all storage device before flashing
    --initrd                     Stop after device boot into initrd.
    --network <netargs>          Flash through Ethernet protocal using initrd flash. <netargs> can be "usb0" to flash through the USB Flashing cable
                                 or "eth0:<target-ip>/<subnet>:<host-ip>[:<gateway>]" to flash through the LAN cable
                                 For examples:
                                 --network usb0
                                 --network eth0:192.168.0.17/24:192.168.0.21
                                 --network eth0:192.168.0.17/24:192.168.1.2:192.168.0.1

    --append                     Only applicable when using with --no-flash --external-only option.
    --direct <dev>               Flash the device directly connected to host with the <dev> name
    --user_key <key_file>        User provided key file (16-byte) to encrypt user images, like kernel, kernel-dtb and initrd.
                                 If user_key is specified, SBK key (-v) has to be specified.
    --pv-crt <crt file>          The certificate for the key that is used to sign cpu_bootloader
    -i <enc rfs key file>        Key for disk encryption support.
    --uefi-keys <keys_conf>      Specify UEFI keys configuration file.
    --uefi-enc <uefi_enc_key>    Key file (0x19: 16-byte; 0x23: 32-byte) to encrypt UEFI payloads

With --external-device options specified, the supported values for <dev> are
    nvme0n1
    sda
"""  # noqa: E501


class Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def out(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


def usage() -> None:
    out(USAGE.format(sys.argv[0]), "")
    raise Exit(1)


def banner(step: int, title: str, pad: int = 0) -> None:
    text = f"*  Step {step}: {title}{' ' * pad} *"
    out("*" * len(text), "*" + " " * (len(text) - 2) + "*", text,
        "*" + " " * (len(text) - 2) + "*", "*" * len(text))


class Opts:
    """The options parse_param() sets (strings and flags), and the words after them."""

    VALUES = ("config_file", "target_partname", "external_size", "options", "key_file",
              "sbk_key", "enc_rfs_key", "external_device", "pv_crt", "network", "usb_instance",
              "device_instance", "max_massflash", "direct", "user_key", "uefi_keys",
              "uefi_enc", "image")
    FLAGS = ("external_only", "initrd_only", "flash_only", "no_flash", "sparse", "massflash",
             "keep", "reuse", "showlogs", "erase_all", "append")

    def __init__(self) -> None:
        for name in self.VALUES:
            setattr(self, name, "")
        for name in self.FLAGS:
            setattr(self, name, False)
        self.rest: list[str] = []

    # for type checkers: the attributes __init__ sets
    config_file: str
    target_partname: str
    external_size: str
    options: str
    key_file: str
    sbk_key: str
    enc_rfs_key: str
    external_device: str
    pv_crt: str
    network: str
    usb_instance: str
    device_instance: str
    max_massflash: str
    direct: str
    user_key: str
    uefi_keys: str
    uefi_enc: str
    image: str
    external_only: bool
    initrd_only: bool
    flash_only: bool
    no_flash: bool
    sparse: bool
    massflash: bool
    keep: bool
    reuse: bool
    showlogs: bool
    erase_all: bool
    append: bool


def parse(argv: list[str]) -> Opts:
    """bash getopts "u:p:v:c:-:S:k:i:" as parse_param() uses it; stops at the first word
    that is not an option."""
    o = Opts()
    i = 0
    short_val = {"u": "key_file", "p": "options", "v": "sbk_key", "c": "config_file",
                 "S": "external_size", "k": "target_partname", "i": "enc_rfs_key"}
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        if arg.startswith("--"):
            name = arg[2:]
            if name in LONG_WITH_VALUE:
                value = argv[i] if i < len(argv) else ""
                i += 1
                if name == "direct":
                    o.external_only = True
                setattr(o, name.replace("-", "_"), value)
            elif name == "massflash":
                o.massflash = True
                if i < len(argv) and argv[i].isdigit():
                    o.max_massflash = argv[i]
                    i += 1
            elif name in LONG_FLAGS:
                attr = FLAG_ATTR.get(name, name.replace("-", "_"))
                if attr:
                    setattr(o, attr, True)
            else:
                usage()
            continue
        letters = arg[1:]
        j = 0
        while j < len(letters):
            ch = letters[j]
            if ch == "-":  # "-:" in the optstring: "-x" style long option inside a cluster
                usage()
            if ch not in short_val:
                print(f"{sys.argv[0]}: illegal option -- {ch}", file=sys.stderr)
                usage()
            value = letters[j + 1:]
            if not value:
                if i >= len(argv):
                    print(f"{sys.argv[0]}: option requires an argument -- {ch}",
                          file=sys.stderr)
                    usage()
                value = argv[i]
                i += 1
            if ch == "p":
                o.options += f" {value}"
            else:
                setattr(o, short_val[ch], value)
            break
    o.rest = argv[i:]
    return o


# ---------------------------------------------------------------- board configuration

class Conf:
    def __init__(self, values: dict[str, str], chain: list[str],
                 bpmp_fw: dict[str, str]) -> None:
        self.values, self.chain, self.bpmp_fw = values, chain, bpmp_fw

    def get(self, key: str, default: str = "") -> str:
        return self.values.get(key, default)

    @property
    def family(self) -> str:
        return next((f for f in SKUS if any(f in c for c in self.chain)), "")

    @property
    def super_config(self) -> bool:
        return any(c.endswith("-super.conf") for c in self.chain)


def read_conf(base: Path, board: str) -> Conf | None:
    """`source <board>.conf` with the few constructs the board configs use: top-level
    assignments, `source`, and process_chip_sku_version()'s bpmp_fw_binary table (the
    other lines of a function body run only when flash.sh calls it)."""
    first = base / f"{board}.conf"
    if not first.exists():
        return None
    values: dict[str, str] = {}
    chain: list[str] = []
    bpmp_fw: dict[str, str] = {}

    def load(path: Path) -> None:
        chain.append(path.resolve().name)
        depth = 0
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if line == "{":
                depth += 1
            elif line == "}":
                depth -= 1
            m = re.match(r"bpmp_fw_binary\['(\w+)'\]=\"([^\"]*)\";?$", line)
            if m:
                bpmp_fw[m.group(1)] = m.group(2)
            if depth:
                continue
            m = re.match(r'source\s+"?\$\{LDK_DIR\}/([^";]+)"?;?$', line)
            if m:
                load(base / m.group(1))
                continue
            m = re.match(r'([A-Z_][A-Z0-9_]*)(\+?)=("?)(.*?)\3;?$', line)
            if m:
                key, plus, _, value = m.groups()
                value = value.replace("${DTB_FILE}", values.get("DTB_FILE", ""))
                values[key] = values.get(key, "") + value if plus else value

    load(first)
    return Conf(values, chain, bpmp_fw)


def board_dtbs(conf: Conf, sku: str) -> tuple[str, str]:
    """update_flash_args(): (kernel DTB, BPMP DTB) of a module SKU.
    p3768-0000-p3767-0000-a0.conf:54-72 (0000 and 0002 keep the defaults of 102-104; 0005,
    the devkit's Nano 8GB, gets 0003's BPMP DTB and its own kernel DTB);
    p3737-0000-p3701-0000.conf.common:55-64 and p3737-0000-p3701-0000.conf:39-53. The
    Super config's kernel DTBs (-nv-super.dtb) are not read from NVIDIA's file."""
    if conf.family == "p3767":
        kernel_sku = "0000" if sku == "0002" else sku
        bpmp = {"0001": "tegra234-bpmp-3767-0001-3509-a02.dtb",
                "0003": "tegra234-bpmp-3767-0003-3509-a02.dtb",
                "0004": "tegra234-bpmp-3767-0004-3509-a02.dtb",
                "0005": "tegra234-bpmp-3767-0003-3509-a02.dtb"}.get(
                    sku, conf.get("BPFDTB_FILE", "tegra234-bpmp-3767-0000-a02-3509-a02.dtb"))
        suffix = "-nv-super.dtb" if conf.super_config else "-nv.dtb"
        return f"tegra234-p3768-0000+p3767-{kernel_sku}{suffix}", bpmp
    kernel_sku = "0000" if sku in ("0001", "0002") else sku
    bpmp_sku = "0000" if sku in ("0001", "0002") else sku
    return (f"tegra234-p3737-0000+p3701-{kernel_sku}-nv.dtb",
            f"tegra234-bpmp-3701-{bpmp_sku}-3737-0000.dtb")


def chip_sku_bpmp_fw(conf: Conf, fab: str) -> str:
    """process_chip_sku_version() as flash.sh:2276-2291 calls it with no board attached
    (CHIP_SKU from the environment, nothing read over USB): the BPMP firmware file name,
    or "" when the rewritten name is not in bootloader/ (mkfilesoft, flash.sh:360-381 and
    2410: the firmware is then silently left out, flash.sh:3353-3364)."""
    chip_sku_env = os.environ.get("CHIP_SKU", "")
    chip_sku = chip_sku_env or conf.get("DEFAULT_CHIP_SKU")  # .conf.common:58/61
    chip_SKU = chip_sku_env  # the real global chip_SKU (flash.sh:2277)
    if ":" in chip_sku:  # awk -F ":" '{print $4}' (p3767.conf.common:60-62)
        fields = chip_sku.split(":")
        chip_SKU = fields[3] if len(fields) > 3 else ""
    bpffile = conf.get("BPFFILE")
    if chip_SKU != "00":  # sed "s|T.*-A1|${bpmp_fw_binary[$chip_SKU]}|" (64-67)
        bpffile = re.sub(r"T.*-A1", conf.bpmp_fw.get(chip_SKU, ""), bpffile, count=1)
    out(f"Chip SKU({chip_sku}) ramcode() fuselevel(fuselevel_production) board_FAB({fab})")
    path = BASE / bpffile
    return path.name if bpffile and path.is_file() else ""


def bytes_of(size: str) -> int:
    m = re.fullmatch(r"(\d+)(KiB|MiB|GiB)?", size)
    if not m:
        raise ValueError(size)
    mult = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}.get(m.group(2) or "", 1)
    return int(m.group(1)) * mult


# ---------------------------------------------------------------- USB (recovery mode)

def fill_devpaths(o: Opts) -> list[str]:
    sysfs = Path(os.environ.get("FAKE_SYSFS", "/sys"))
    found: list[str] = []
    for top in sorted((sysfs / "bus/usb/devices").glob("usb*")):
        for dirpath, dirs, files in os.walk(top):
            dirs.sort()
            if "devnum" not in files:
                continue
            d = Path(dirpath)
            try:
                vendor = (d / "idVendor").read_text().strip()
                product = (d / "idProduct").read_text().strip()
            except OSError:
                continue
            if vendor != "0955" or product not in RCM_PRODUCTS:
                continue
            if not (d / "busnum").is_file() or not (d / "devpath").is_file():
                continue
            path = f"{(d / 'busnum').read_text().strip()}-{(d / 'devpath').read_text().strip()}"
            if o.usb_instance and o.usb_instance != path:
                continue
            found.append(path)
    if o.direct:
        found.append("direct")
    return found


def product_at(devpath: str) -> str:
    sysfs = Path(os.environ.get("FAKE_SYSFS", "/sys"))
    d = sysfs / "bus/usb/devices" / devpath
    try:
        return (d / "idProduct").read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- image generation

class Board:
    def __init__(self, name: str, conf: Conf, board_id: str, sku: str, fab: str,
                 rev: str) -> None:
        self.name, self.conf = name, conf
        self.board_id, self.sku, self.fab, self.rev = board_id, sku, fab, rev
        self.bpf = ""  # the BPMP firmware process_chip_sku_version() picked ("" none)


def resolve_board(o: Opts, name: str, devpaths: list[str]) -> Board:
    conf = read_conf(BASE, name)
    if conf is None:
        raise Exit(1)
    env = {k: os.environ.get(k, "") for k in ("BOARDID", "BOARDSKU", "FAB", "BOARDREV")}
    if not (env["BOARDID"] and env["BOARDSKU"] and env["FAB"]):
        attached = [p for p in devpaths if p != "direct" and product_at(p) in EEPROM]
        if attached:  # flash.sh reads the module EEPROM over USB
            bid, sku, fab = EEPROM[product_at(attached[0])]
            env = {"BOARDID": env["BOARDID"] or bid, "BOARDSKU": env["BOARDSKU"] or sku,
                   "FAB": env["FAB"] or fab, "BOARDREV": env["BOARDREV"]}
            out("ECID is 0x80012344705DD4C11C000000110203C0")
        else:
            out("ECID is ")
            if not env["BOARDSKU"]:
                out(f"Board ID({env['BOARDID']}) version({env['FAB']}) sku() revision()",
                    "Error: Unrecognized module SKU ")
            else:
                out("Error: probing the target board failed.",
                    "       Make sure the target board is connected through ",
                    "       USB port and is in recovery mode.")
            raise Exit(1)
    else:
        out("ECID is ")
    board = Board(name, conf, env["BOARDID"], env["BOARDSKU"], env["FAB"], env["BOARDREV"])
    out(f"Board ID({board.board_id}) version({board.fab}) sku({board.sku}) "
        f"revision({board.rev})")
    board.bpf = chip_sku_bpmp_fw(conf, board.fab)
    if conf.family == "p3767":  # update_flash_args_common (p3768-0000-p3767-0000-a0.conf:50)
        out("emc_opt_disable_fuse:(0)")
    if board.sku not in SKUS.get(conf.family, {board.sku}):
        out(f"Error: Unrecognized module SKU {board.sku}")
        raise Exit(1)
    return board


def placeholder(path: Path, name: str, size: int) -> None:
    import hashlib

    seed = hashlib.sha1(name.encode()).digest()
    path.write_bytes((seed * (size // len(seed) + 1))[:size])


def sha1(path: Path) -> str:
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def file_for(part: ET.Element, board: Board, sparse: bool) -> str:
    """The file flash.sh puts in the partition (the XML holds placeholders)."""
    dtb, bpmp = board_dtbs(board.conf, board.sku)
    token = (part.findtext("filename") or "").strip()
    by_token = {
        "MB1FILE": "mb1_t234_prod_aligned_sigheader.bin.encrypt",
        "PSCBL1FILE": "psc_bl1_t234_prod_aligned_sigheader.bin.encrypt",
        "MB2BLFILE": "mb2_t234_with_mb2_cold_boot_bct_MB2_sigheader.bin.encrypt",
        "BPFFILE": Path(board.bpf).stem + "_sigheader.bin.encrypt" if board.bpf else "",
        "BPFDTB_FILE": bpmp.replace(".dtb", "_with_odm_sigheader.dtb.encrypt"),
        "TBCDTB-FILE": "uefi_jetson_with_dtb_sigheader.bin.encrypt",
        "TOSFILE": "tos-optee_t234_sigheader.img.encrypt",
        "LNXFILE": "boot.img", "DTB_FILE": f"kernel_{dtb}", "ESP_FILE": "esp.img",
        "APPFILE": "system.img", "APPFILE_b": "system.img_b",
    }
    by_type = {"boot_config_table": "br_bct_BR.bct",
               "mb1_boot_config_table": "mb1_cold_boot_bct_MB1_sigheader.bct.encrypt",
               "mem_boot_config_table": "mem_coldboot_sigheader.bct.encrypt"}
    if token == "APPFILE_b" and os.environ.get("ROOTFS_AB") != "1":
        return ""
    return by_token.get(token, token) or by_type.get(part.get("type", ""), "")


def system_img(dest: Path, sparse: bool) -> None:
    """A tar (numeric owners) of the rootfs's identity files, standing in for the APP
    filesystem; with --sparse an Android sparse image header around the same bytes."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel in ("etc/nv_tegra_release", "etc/hostname", "etc/hosts", "etc/passwd",
                    "etc/group", "etc/nv_boot_control.conf", "etc/ld.so.conf.d/nvidia-tegra.conf",
                    "boot/extlinux/extlinux.conf"):
            src = ROOTFS / rel
            if src.is_file():
                tar.add(src, arcname=f"./{rel}")
    data = buf.getvalue()
    if sparse:
        data = bytes.fromhex("3aff26ed01000000") + data
    dest.write_bytes(data)


def layout(xml: Path) -> ET.Element:
    import xml.etree.ElementTree as ET

    try:
        return ET.parse(xml).getroot()
    except ET.ParseError as e:
        out(f"{xml}:{e.position[0]}: parser error : {e}")
        raise Exit(1) from e


def package(root: ET.Element, board: Board, dest: Path, o: Opts, external: bool) -> None:
    """flash.sh --no-flash --sign, then package_images(): the index, its images, flash.cfg."""
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    cfg: list[str] = []
    idx = 0
    rootfs_size = bytes_of(o.external_size) if (external and o.external_size) else \
        bytes_of(board.conf.get("ROOTFSSIZE", "55GiB"))
    for dev in root.iter("device"):
        dtype = DEVICE_TYPES.get(dev.get("type", ""), 1)
        inst = dev.get("instance", "0")
        offset = 0
        for pid, part in enumerate(dev.iter("partition")):
            name = part.get("name", "")
            size_txt = (part.findtext("size") or "0").strip()
            size = rootfs_size if size_txt == "APPSIZE" else \
                int(size_txt, 16) if size_txt.startswith("0x") else int(size_txt or 0)
            fname = file_for(part, board, o.sparse)
            fsize, digest = 0, ""
            if name in ("APP", "APP_b") and fname:
                out(f"Copying {name} image into  {dest}/{fname}.raw")
                system_img(dest / fname, o.sparse)
                (dest / f"{fname}.sha1sum").write_text(sha1(dest / fname) + "\n")
                cfg.append(f"{name}{'_ext' if external else ''}={fname}")
                fsize, digest = (dest / fname).stat().st_size, sha1(dest / fname)
            elif fname:
                signed, target = BOOTLOADER / "signed" / fname, dest / fname
                if not signed.exists():
                    placeholder(signed, fname, 4096 * (1 + hashlib.sha1(
                        fname.encode()).digest()[0] % 16))
                out(f"Copying {signed}  {target}")
                shutil.copy(signed, target)
                fsize, digest = target.stat().st_size, sha1(target)
            elif name not in ("master_boot_record", "primary_gpt", "secondary_gpt"):
                out(f"Warning: skip writing {name} partition as no image is specified")
            if size > 0xFFFFFFFFFFFF:
                size = 0
            lines.append(f"{idx}, {dtype}:{inst}:{name}, {offset}, {size}, {fname}, {fsize}, "
                         f"fixed-<reserved>-{pid}, {digest}")
            offset += size
            idx += 1
    (dest / "flash.idx").write_text("\n".join(lines) + "\n")
    cfg += [f"external_device={o.external_device}", "CHIPID=0x23"]
    (dest / "flash.cfg").write_text("\n".join(cfg) + "\n")


def flash_sh_no_flash(board: Board, rootdev: str, cfg: Path) -> None:
    """What flash.sh --no-flash prints and writes that the package depends on."""
    version = {}
    for line in (BASE / "nv_tegra/bsp_version").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            version[k] = v
    out(INFODIVIDER, "# L4T BSP Information:",
        f"# R{version.get('BSP_BRANCH', '36')} , REVISION: {version.get('BSP_MAJOR', '0')}."
        f"{version.get('BSP_MINOR', '0')}", "# User release: 0.0", INFODIVIDER)
    extlinux = ROOTFS / "boot/extlinux/extlinux.conf"
    if not extlinux.is_file():
        out(f"{ROOTFS}/boot/extlinux/extlinux.conf is not found, exiting...")
        raise Exit(1)
    out(f"copying cfgfile({cfg}) to flash.xml... done.")
    out("Copying nv_boot_control.conf to rootfs")
    ctrl = ROOTFS / "etc/nv_boot_control.conf"
    ctrl.parent.mkdir(parents=True, exist_ok=True)
    base = (BOOTLOADER / "nv_boot_control.conf").read_text().splitlines()
    keep = [line for line in base if not line.startswith(
        ("TNSPEC", "TEGRA_CHIPID", "TEGRA_OTA_BOOT_DEVICE", "TEGRA_OTA_GPT_DEVICE"))]
    spec = f"{board.board_id}-{board.fab}-{board.sku}-{board.rev}-1-0-{board.name}-"
    ctrl.write_text("\n".join([
        *keep, f"TNSPEC {spec}", f"TEGRA_CHIPID {board.conf.get('CHIPID', '0x23')}",
        f"TEGRA_OTA_BOOT_DEVICE {board.conf.get('OTA_BOOT_DEVICE', '/dev/mmcblk3boot0')}",
        f"TEGRA_OTA_GPT_DEVICE {board.conf.get('OTA_GPT_DEVICE', '/dev/mmcblk3boot1')}"]) + "\n")
    out("Making system.img... ", f"populating rootfs from {ROOTFS} ... done.",
        "Sync'ing system.img ... done.", "*** Sign and generate flashing ready partition "
        "images... *** ")


# flash.sh's BINSARGS for t234, in the order it appends them (flash.sh:2769-3496); the
# bpmp_fw entry is the one the chip SKU picked (3353-3361)
BINS_BEFORE_BPMP = ("psc_fw pscfw_t234_prod.bin", "mts_mce mce_flash_o10_cr_prod.bin",
                    "tsec_fw tsec_t234.bin", "mb2_applet applet_t234.bin",
                    "mb2_bootloader mb2_t234.bin", "xusb_fw xusb_t234_prod.bin",
                    "pva_fw nvpva_020.fw", "dce_fw display-t234-dce.bin",
                    "nvdec nvdec_t234_prod.fw")
BINS_AFTER_BPMP = ("rce_fw camera-rtcpu-t234-rce.img", "ape_fw adsp-fw.bin",
                   "spe_fw spe_t234.bin", "tos tos_t234.img", "eks eks_t234.img")


def flashcmd(board: Board) -> str:
    """bootloader/flashcmd.txt of flash.sh --no-flash --rcm-boot (flash.sh:4333-4441):
    the arguments abbreviated, the --bins list in the real order and content."""
    dtb, bpmp_dtb = board_dtbs(board.conf, board.sku)
    bins = [*BINS_BEFORE_BPMP, *([f"bpmp_fw {board.bpf}"] if board.bpf else []),
            f"bpmp_fw_dtb {bpmp_dtb}", *BINS_AFTER_BPMP, "kernel boot0.img",
            f"kernel_dtb {dtb}"]
    return (f"./tegraflash.py --bl uefi_jetson_with_dtb_sigheader.bin.encrypt --odmdata "
            f"{board.conf.get('ODMDATA', 'gbe-uphy-config-8,hsstp-lane-map-3')} "
            f"--overlay_dtb L4TConfiguration.dtbo,tegra234-carveouts.dtbo,tegra-optee.dtbo "
            f"--bldtb {dtb} --applet mb1_t234_prod.bin --cmd \"rcmboot\" --cfg rcmboot.xml "
            f"--chip 0x23 --concat_cpubl_bldtb --cpubl uefi_jetson.bin "
            f"--bins \"{'; '.join(bins)}\"")


def relocate_failed() -> None:
    """flash.sh failed: its output went through `| tee`, so what stops the image script is
    the missing index when it relocates the images."""
    out(f"Error: {BOOTLOADER}/signed/flash.idx is not found",
        f"Error: failed to relocate images to {IMAGES}")
    raise Exit(1)


def prerequisite_error(o: Opts, *, flash_only: bool, external_device: str,
                       config_file: str, network: str = "", direct: bool = False) -> list[str]:
    """check_prerequisite() (l4t_initrd_flash_internal.sh:89-122), in its order: what it
    prints before `exit 1`, or []. The tools are looked up as `command -v` does. The
    network part runs for every call, --no-flash included: the internal script's network
    defaults to usb0 (739). Unlike the real one, nothing on the host is changed: no
    `service nfs-kernel-server restart`, no exportfs of rootfs/ and tools/kernel_flash,
    no /etc/exports entry (l4t_network_flash.func:50-53, 73-93)."""
    if not shutil.which("sshpass") and not (direct or o.direct):  # 92-97
        return ['ERROR sshpass not found! To install - please run:  "sudo apt-get install '
                'sshpass"']
    if not shutil.which("abootimg") and not flash_only:  # 99-104
        return ['ERROR abootimg not found! To install - please run:  "sudo apt-get install '
                'abootimg"']
    if external_device and not flash_only and not config_file:  # 106-111
        return ["Flashing external device requires -c option to specify device partition "
                "layout"]
    if not (BOOTLOADER / "odmsign.func").is_file() and not flash_only:  # 113-116, no exit
        out("Please install the Secureboot package to use initrd flash for fused board")
    network = network or o.network or "usb0"
    if not shutil.which("exportfs"):  # network_prerequisite (l4t_network_flash.func:41-46)
        return ['ERROR nfs-kernel-server not found! To install - please run:  "sudo apt-get '
                'install nfs-kernel-server"']
    # validateNetworkArgs (95-113) asks `ip route get`; here: the address's shape
    if network != "usb0" and not re.fullmatch(
            r"eth0:\d+\.\d+\.\d+\.\d+/\d+:\d+\.\d+\.\d+\.\d+(:\d+\.\d+\.\d+\.\d+)?", network):
        parts = network.split(":")
        return [f"Invalid target ip {parts[1] if len(parts) > 1 else ''}"]
    return []


def generate(o: Opts, board_name: str, rootdev: str, devpaths: list[str]) -> None:
    """l4t_initrd_flash_internal.sh --no-flash ARGS"""
    import shlex
    import subprocess
    import tarfile

    problem = prerequisite_error(o, flash_only=False, external_device=o.external_device,
                                 config_file=o.config_file)
    if problem:
        out(*problem)
        raise Exit(1)
    if o.uefi_enc and Path(o.uefi_enc).is_file() and not (o.uefi_keys and Path(
            o.uefi_keys).is_file()):
        out("Error: '--uefi-enc' option needs '--uefi-keys' option specified to work ")
        raise Exit(1)
    step = 1  # initrd_flash_step, exported by the outer script
    banner(step, "Generate flash packages")
    step += 1
    # l4t_create_images_for_kernel_flash.sh (its root check reads $USER, as sudo sets it)
    if os.environ.get("USER") != "root":
        out(f"{KFLASH}/l4t_create_images_for_kernel_flash.sh requires root privilege")
        raise Exit(1)
    if not shutil.which("xmllint"):  # check_prereq (l4t_create_images_for_kernel_flash.sh:187-195)
        out('ERROR xmllint not found! To install - please run:  "sudo apt-get install '
            'libxml2-utils"')
        raise Exit(1)
    if o.external_device and not re.match(
            r"^(nvme\d+n\d+(p\d+)?|sd[a-z]+\d*|mmcblk\d+(p\d+)?)$", o.external_device):
        out(f"{o.external_device} is not a supported external storage device")
        raise Exit(1)
    if not (Path.cwd() / f"{board_name}.conf").is_file():  # flash.sh reads ./<board>.conf
        out(f"Error: Invalid target board - {board_name}.")
        relocate_failed()
    conf = read_conf(BASE, board_name)
    bootdev = (conf.get("BOOTDEV") if conf else "") or None
    if not (rootdev in ("internal", "external", "eth0", "eth1", bootdev)
            or rootdev.startswith(("mmcblk0p", "mmcblk1p", "mmcblk3p", "sd", "nvme"))):
        out(f"Error: Invalid target rootdev({rootdev}).")
        relocate_failed()
    internal_xml = ""
    for token in (shlex.split(o.options) if o.options else []):
        if internal_xml == "-c":
            internal_xml = token
            break
        internal_xml = "-c" if token == "-c" else ""
    try:
        board = resolve_board(o, board_name, devpaths)
    except Exit:
        relocate_failed()
    cfg = Path(internal_xml).resolve() if internal_xml and internal_xml != "-c" else \
        BOOTLOADER / "generic/cfg" / board.conf.get("EMMC_CFG", "flash_t234_qspi.xml")
    if not cfg.is_file():
        out(f"Error: missing cfgfile ({cfg}).")
        relocate_failed()
    if not (HOST_ROOT / "usr/bin/xmllint").is_file():  # check_xmllint (flash.sh:1215-1229)
        out('ERROR xmllint not found! To install - please run:  "sudo apt-get install '
            'libxml2-utils"')
        relocate_failed()
    ext_cfg = Path(o.config_file).resolve() if o.config_file else None
    if ext_cfg is not None and not ext_cfg.is_file():
        out(f"Error: missing cfgfile ({ext_cfg}).")
        relocate_failed()
    if o.external_size:
        try:
            bytes_of(o.external_size)
        except ValueError as e:
            out(f"Error: Invalid external_size: {o.external_size}")
            raise Exit(1) from e
    out("Create folder to store images to flash")
    if not o.append:
        shutil.rmtree(IMAGES, ignore_errors=True)
    for sub in ("internal", "external"):
        (IMAGES / sub).mkdir(parents=True, exist_ok=True)
    (BOOTLOADER / "signed").mkdir(exist_ok=True)
    if not o.external_only:
        out("Generate image for internal storage devices", "Generate images to be flashed",
            f"ADDITIONAL_DTB_OVERLAY=\"\"  {BASE}/flash.sh --no-flash --sign {o.options.strip()}"
            f" {board_name} {rootdev}", "")
        flash_sh_no_flash(board, rootdev, cfg)
        package(layout(cfg), board, IMAGES / "internal", o, external=False)
    if o.external_device and ext_cfg is not None:
        out("Generate image for external storage devices", "Generate images to be flashed",
            f"BOOTDEV={rootdev} ADDITIONAL_DTB_OVERLAY=\"\"  {BASE}/flash.sh --no-flash "
            f"--sign  --external-device -c \"{o.config_file}\" {board_name} {rootdev}", "")
        flash_sh_no_flash(board, rootdev, ext_cfg)
        package(layout(ext_cfg), board, IMAGES / "external", o, external=True)
    out(f"Copy flash script to {IMAGES}")
    shutil.copy(KFLASH / "l4t_flash_from_kernel.sh", IMAGES / "l4t_flash_from_kernel.sh")
    out("Success")
    banner(step, "Generate rcm boot commandline")
    step += 1
    out(f"ROOTFS_AB= ROOTFS_ENC= {BASE}/flash.sh  --no-flash --rcm-boot {board_name} mmcblk0p1")
    (BOOTLOADER / "flashcmd.txt").write_text(flashcmd(board) + "\n")
    out(f"saving flash command in {BOOTLOADER}/flashcmd.txt", "*** no-flash flag enabled. "
        "Exiting now... *** ")
    params: list[str] = []
    if o.external_device:
        params += ["--external-device", o.external_device, "-c", f'"{o.config_file}"']
        if o.external_size:
            params += ["-S", o.external_size]
    if o.target_partname:
        params += ["-k", o.target_partname]
    if o.initrd_only:
        params.append("--initrd")
    if o.direct:
        params += ["--direct", o.direct]
    if o.network:
        params += ["--network", o.network]
    PARAM_FILE.write_text(f"{' '.join(params)} {board_name} {rootdev}\n")
    out(f"Save initrd flashing command parameters to {PARAM_FILE}")
    count = max_massflash(o, board_name)
    IMG_MAP.unlink(missing_ok=True)
    for n in range(count):
        placeholder(BOOTLOADER / f"boot{n}.img", f"boot{n}.img", 65536)
        with IMG_MAP.open("a") as f:
            f.write(f"flashimg{n}=boot{n}.img\n")
        out(f"flashimg{n}=boot{n}.img")
    if o.massflash:
        mfi = BASE / f"mfi_{board_name}"
        shutil.rmtree(mfi, ignore_errors=True)
        (mfi / "bootloader").mkdir(parents=True)
        for f in ["flashcmd.txt", *(f"boot{n}.img" for n in range(count))]:
            shutil.copy(BOOTLOADER / f, mfi / "bootloader" / f)
        shutil.copytree(KFLASH, mfi / "tools/kernel_flash", symlinks=True)
        shutil.copy(BASE / f"{board_name}.conf", mfi / f"{board_name}.conf")
        for common in BASE.glob("*.common"):
            shutil.copy(common, mfi / common.name)
        if o.network:
            subprocess.run(["cp", "-a", str(ROOTFS), str(mfi)], check=True)
        tgz = BASE / f"mfi_{board_name}.tar.gz"
        with tarfile.open(tgz, "w:gz") as tar:
            for p in sorted([mfi, *mfi.rglob("*")]):
                arc = f"./{p.relative_to(BASE)}" + ("/" if p.is_dir() and not p.is_symlink()
                                                    else "")
                out(arc)
                tar.add(p, arcname=arc.rstrip("/"), recursive=False)
        out(f"Massflash package is generated at {tgz}")
    out("Success")


def max_massflash(o: Opts, board_name: str) -> int:
    if not o.massflash:
        return 1
    if o.max_massflash:
        return int(o.max_massflash)
    conf = read_conf(BASE, board_name)
    return int(conf.get("MAX_MASSFLASH", "10") if conf else "10")


# ---------------------------------------------------------------- flashing

def fails_here(devpath: str) -> str:
    mode = os.environ.get("FAKE_FLASH_FAIL", "")
    only = [p for p in os.environ.get("FAKE_FLASH_FAIL_USB", "").split(",") if p]
    return mode if mode and (not only or devpath in only) else ""


def flash_one(o: Opts, devpath: str, instance: int, params: list[str], emit) -> int:
    """l4t_initrd_flash_internal.sh --usb-instance DEVPATH --flash-only PARAMS: the
    exit code; EMIT(line) gets what the real one prints."""
    external_device = ""
    if "--external-device" in params:
        external_device = params[params.index("--external-device") + 1]
    network = params[params.index("--network") + 1] if "--network" in params else "usb0"
    initrd_only = "--initrd" in params or o.initrd_only

    def bn(step: int, title: str, pad: int = 0) -> None:
        text = f"*  Step {step}: {title}{' ' * pad} *"
        for line in ("*" * len(text), "*" + " " * (len(text) - 2) + "*", text,
                     "*" + " " * (len(text) - 2) + "*", "*" * len(text)):
            emit(line)

    problem = prerequisite_error(o, flash_only=True, external_device=external_device,
                                 config_file="", network=network,
                                 direct="--direct" in params)
    if problem:
        emit(*problem, "Cleaning up...")  # the EXIT trap (l4t_initrd_flash_internal.sh:56-61)
        return 1
    if "--direct" in params or o.direct:  # 803-814
        bn(1, "Start the host connected device flashing process")
        emit("[ 0]: l4t_flash_from_kernel: Starting to flash to external device",
             "[ 92]: l4t_flash_from_kernel: Successfully flash the external device",
             "[ 92]: l4t_flash_from_kernel: Flashing success", "Success")
        return 0
    bn(1, "Build the flashing environment", pad=4)
    if not IMG_MAP.is_file():  # `source` of a missing file under set -e (825)
        emit(f"{FLASH_CMD}: line 825: {IMG_MAP}: No such file or directory")
        emit("Cleaning up...")
        return 1
    if not (BOOTLOADER / "flashcmd.txt").is_file():
        emit(f"cat: {BOOTLOADER}/flashcmd.txt: No such file or directory")
        emit("Cleaning up...")
        return 1
    emit(f"Create flash environment {instance}")
    emit(f"{BOOTLOADER} {BASE}")
    emit(f"Finish creating flash environment {instance}.")
    bn(2, "Boot the device with flash initrd image")
    work = BASE / "temp_initrdflash" / f"bootloader{instance}"
    emit(f"{work} {BASE}")
    emit((BOOTLOADER / "flashcmd.txt").read_text().strip() + f" --instance {devpath}")
    for line in ("Welcome to Tegra Flash", "version 1.0.0",
                 "Type ? or help for help and q or quit to exit",
                 "Use ! to execute system commands", "",
                 "[   0.0043 ] Generating RCM messages",
                 f"[   0.0112 ] tegrarcm_v2 --instance {devpath} --new_session --chip 0x23 0 "
                 "--uid --download bct_br br_bct_BR.bct",
                 "[   0.0274 ] Boot Rom communication"):
        emit(line)
    family = "p3767" if "p3767" in (BOOTLOADER / "flashcmd.txt").read_text() else "p3701"
    module = EEPROM.get(product_at(devpath), ("",))[0]
    if module and f"p{module}" != family:  # the package was signed for another module
        emit("[   0.0368 ] ERROR: might be timeout in USB write.", "Error: Return value 3",
             f"Command tegrarcm_v2 --instance {devpath} --new_session --chip 0x23 0 --uid "
             "--download bct_br br_bct_BR.bct", "Cleaning up...")
        return 1
    for line in ("[   0.0301 ] BR_CID: 0x80012344705DD4C11C000000110203C0",
                 "[   0.0457 ] Boot Rom communication completed",
                 "[   1.0982 ] tegrarcm_v2 --isapplet",
                 "[   1.1201 ] Sending mb2",
                 "[   2.2305 ] RCM-boot started", f"{BASE}"):
        emit(line)
    bn(3, "Start the flashing process")
    fail = fails_here(devpath)
    if fail == "boot-timeout":
        for _ in range(int(os.environ.get("FAKE_FLASH_WAIT_LINES", "120"))):
            emit("Waiting for target to boot-up...")
        emit("Timeout", "Device ping failed after RCM boot.",
             "This can be due to XUSB not being enabled or device failed to boot.",
             "Please retrieve the serial log to debug further.", "Cleaning up...")
        return 1
    emit("Waiting for target to boot-up...", "Waiting for target to boot-up...")
    target = f"fc00:1:1:{instance}::2" if network == "usb0" else \
        network.split(":")[1].split("/")[0]
    if fail == "ssh-timeout":
        emit("Waiting for device to expose ssh ..." + "..." * 60 + "Timeout")
        emit("Cleaning up...")
        return 1
    emit("Waiting for device to expose ssh ......RTNETLINK answers: File exists")
    if initrd_only:
        emit("Device has booted into initrd. You can ssh to the target by the command:",
             f"$ ssh root@{target}", "Cleaning up...")
        return 0
    emit(f"Run command: flash on {target}", "SSH ready")
    t = 0

    def log(msg: str) -> None:
        emit(f"[ {t}]: l4t_flash_from_kernel: {msg}")

    internal_idx = IMAGES / "internal/flash.idx"
    external_idx = IMAGES / "external/flash.idx"
    if internal_idx.is_file() and "--external-only" not in params:
        qspi = [line for line in internal_idx.read_text().splitlines() if ", 3:0:" in line]
        if qspi:
            log("Starting to flash to qspi")
            emit("QSPI storage size: 67108864 bytes.")
            for line in qspi:
                name, fname = line.split(",")[1].strip().split(":")[2], line.split(",")[4].strip()
                if fname:
                    emit(f"Writing {fname} (parittion: {name}) into /dev/mtd0")
            t += 38
            log("Successfully flash the qspi")
    if external_idx.is_file():
        log("Starting to create gpt for external device")
        emit("Active index file is /mnt/external/flash.idx")
        lines = external_idx.read_text().splitlines()
        emit(f"Number of lines is {len(lines)}", f"max_index={len(lines) - 1}")
        emit(f"writing item={lines[0]}" if lines else "writing item=")
        disk = re.sub(r"p\d+$", "", external_device) if not external_device.startswith("sd") \
            else re.sub(r"\d+$", "", external_device)
        if fail == "nvme-missing":
            emit(f"Error: Could not stat device /dev/{disk} - No such file or directory.")
            emit("Flash failure", "Cleaning up...")
            return 1
        t += 5
        log("Successfully create gpt for external device")
        log("Starting to flash to external device")
        for line in lines:
            name = line.split(",")[1].strip().split(":")[2]
            if name in ("master_boot_record", "primary_gpt", "secondary_gpt"):
                continue
            emit(f"Writing {name} partition with {line.split(',')[4].strip()}")
            emit(f"Writing {name} partition done")
        t += 160
        log("Successfully flash the external device")
    log("Flashing success")
    emit("Flash is successful", "Reboot device", "Cleaning up...")
    return 0


def flash(o: Opts, devpaths: list[str]) -> int:
    import shlex

    if not PARAM_FILE.is_file():  # cat under set -e (l4t_initrd_flash.sh:179)
        print(f"cat: {PARAM_FILE}: No such file or directory", file=sys.stderr)
        return 1
    params = shlex.split(PARAM_FILE.read_text())
    board_name = params[-2] if len(params) >= 2 else ""
    count = max_massflash(o, board_name)
    if len(devpaths) > count and not o.direct:
        out("Too many devices in RCM mode")
        return 1
    logdir = BASE / "initrdlog"
    logdir.mkdir(exist_ok=True)
    ts = time.strftime("%Y%m%d-%H%M%S")
    failures = 0
    pids: list[int] = []
    for instance, devpath in enumerate(devpaths):
        fn_log = logdir / f"flash_{devpath}_{instance}_{ts}.log"
        cmdarg = [*(["--keep"] if o.keep else []), *(["--reuse"] if o.reuse else []),
                  *(["--initrd"] if o.initrd_only else []),
                  *(["--external-only"] if o.external_only else []),
                  *(["-k", o.target_partname] if o.target_partname else []),
                  *(["--network", o.network] if o.network else []),
                  *(["--direct", o.direct] if o.direct else []),
                  *(["--erase-all"] if o.erase_all else [])]
        out(f"{FLASH_CMD} {' '.join(cmdarg)} --usb-instance {devpath} --device-instance "
            f"{instance} --flash-only {PARAM_FILE.read_text().strip()}")
        lines: list[str] = []
        single = count == 1 or bool(o.direct)

        def emit(*ls: str, _lines: list[str] = lines, _single: bool = single) -> None:
            for line in ls:
                _lines.append(line)
                if _single:
                    out(line)

        rc = flash_one(o, devpath, instance, params, emit)
        fn_log.write_text("\n".join(lines) + "\n")
        if single:
            if rc:
                return rc
            out(f"Log is saved to Linux_for_Tegra/initrdlog/{fn_log.name} ")
            return 0
        pid = os.getpid() + 1 + instance
        pids.append(pid)
        failures |= rc != 0
        out(f"Start flashing device: {devpath}, rcm instance: {instance}, PID: {pid}")
        out(f"Log will be saved to Linux_for_Tegra/initrdlog/{fn_log.name} ")
    if not o.showlogs:
        out("Ongoing processes: " + " ".join(str(p) for p in pids), "Ongoing processes:")
    if failures:
        out("Flash complete (WITH FAILURES)")
        return 1
    return 0


def r38_prerequisite_error(o: Opts) -> list[str]:
    """R38 and later: the outer script's own check_prerequisite(), run right after
    parse_param (Seeed-Studio/Linux_for_Tegra 06119ad, an R38/R39 tree: NVIDIA's copyright
    2021-2026, Thor's layouts; tools/kernel_flash/l4t_initrd_flash.sh check_prerequisite,
    55-104): xmlstarlet in every mode (58-63), then sshpass but for --direct (65-70),
    abootimg and zstd but for --flash-only (72-84); its EXIT trap (cleanup, 44-53) prints
    nothing. Not R39.2's own file, which no readable tree holds (UNVERIFIED for 39.2).
    What follows is the R36.2 internal script's check, as for R36."""
    if not shutil.which("xmlstarlet"):
        return ['ERROR xmlstarlet not found! To install - please run:  "sudo apt-get install '
                'xmlstarlet"']
    if not shutil.which("sshpass") and not o.direct:
        return ['ERROR sshpass not found! To install - please run:  "sudo apt-get install '
                'sshpass"']
    for tool in ("abootimg", "zstd"):
        if not shutil.which(tool) and not o.flash_only:
            return [f'ERROR {tool} not found! To install - please run:  "sudo apt-get install '
                    f'{tool}"']
    return []


def main(argv: list[str]) -> int:
    o = parse(argv)
    if SCRIPT_BRANCH >= 38:
        problem = r38_prerequisite_error(o)
        if problem:
            out(*problem)
            return 1
    if os.geteuid() != 0:  # install_udev_rules: ln -s ... /etc/udev/rules.d/
        print("ln: failed to create symbolic link '/etc/udev/rules.d/99-l4t-host.rules': "
              "Permission denied", file=sys.stderr)
        return 1
    devpaths = fill_devpaths(o)
    if not o.flash_only:
        out(f"{FLASH_CMD} --no-flash {' '.join(argv)}")
        board_name = argv[-2] if len(argv) >= 2 else ""
        rootdev = argv[-1] if argv else ""
        if read_conf(BASE, board_name) is None:
            print(f"{FLASH_CMD}: line 53: {BASE}/{board_name}.conf: No such file or directory",
                  file=sys.stderr)
        try:
            generate(o, board_name, rootdev, devpaths)
        except Exit as e:
            out("Cleaning up...")
            return e.code
        out("Cleaning up...", "Finish generating flash package.")
    if o.no_flash:
        out("Put device in recovery mode, run with option --flash-only to flash device.")
        return 0
    if not devpaths:
        out("No devices to flash")
        return 1
    if not o.flash_only and not o.direct and len(devpaths) > 1:
        out("Error, too many devices in RCM mode",
            "For signing and flashing, only one device is supported")
        return 1
    return flash(o, devpaths)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exit as e:
        sys.exit(e.code)
