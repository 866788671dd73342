"""The fake files both Raspberry Pi stand-ins ship: kernels, DTBs, overlays, firmware blobs.

Everything is deterministic (no clock, no randomness without a fixed seed) and clearly
marked FAKE, so nothing here can be mistaken for, or booted as, Raspberry Pi software.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
from pathlib import Path

from ._fdt import Node, board_dtb, build_dtb, overlay_dtbo

# What Raspberry Pi's bookworm archive carried in early 2025 (uname -a on Pi 5s running
# Raspberry Pi OS: "6.6.74+rpt-rpi-2712 #1 SMP PREEMPT Debian 1:6.6.74-1+rpt1 (2025-01-27)").
KERNEL_UPSTREAM = "6.6.74"
KERNEL_ABI = f"{KERNEL_UPSTREAM}+rpt"  # the part before "-rpi-<flavour>"
KERNEL_DEB_VERSION = f"1:{KERNEL_UPSTREAM}-1+rpt1"
KERNEL_DATE = "2025-01-27"
FLAVOURS = ("2712", "v8")

# flavour -> (name in /boot/firmware, initramfs name, page size in KiB, description)
FLAVOUR_INFO = {
    "2712": ("kernel_2712.img", "initramfs_2712", 16, "Raspberry Pi 5 (BCM2712), 16K pages"),
    "v8": ("kernel8.img", "initramfs8", 4, "64-bit Raspberry Pi 3/4/5, 4K pages"),
}

FAKE_BANNER = (
    "EDGE-LLM BUILDER FAKE KERNEL - a test stand-in shaped like Raspberry Pi's {version} "
    "({flavour}); it contains no code and cannot boot anything.\n"
)


def kernel_version(flavour: str, abi: str = KERNEL_ABI) -> str:
    return f"{abi}-rpi-{flavour}"


def _arm64_image_header(size: int, page_kib: int) -> bytes:
    """The 64-byte arm64 Image header (Documentation/arch/arm64/booting.rst)."""
    page_bits = {4: 1, 16: 2, 64: 3}[page_kib]
    flags = (page_bits << 1) | (1 << 3)  # little-endian, page size, placement anywhere
    return struct.pack(
        "<IIQQQQQQII",
        0x14000010,  # code0: "b +64", jumps over the header
        0,  # code1
        0,  # text_offset
        size,  # image_size
        flags,
        0,
        0,
        0,
        0x644D5241,  # "ARM\x64"
        0,
    )


def kernel_image(version: str, flavour: str, size: int = 256 * 1024) -> bytes:
    """A gzip'd arm64 "Image" like /boot/vmlinuz-*-rpi-* (Image.gz), `size` bytes unpacked.

    The header's page-size flag matches the flavour (16K for 2712, 4K for v8); the rest is a
    FAKE banner and seeded pseudo-random filler so the file stays a few hundred KB.
    """
    page_kib = FLAVOUR_INFO[flavour][2]
    banner = FAKE_BANNER.format(version=version, flavour=flavour).encode()
    body = _arm64_image_header(size, page_kib) + banner
    filler = random.Random(f"edge-llm-fake-kernel-{version}").randbytes(size - len(body))
    return gzip.compress(body + filler, compresslevel=6, mtime=0)


def kernel_config(version: str, flavour: str) -> str:
    page = FLAVOUR_INFO[flavour][2]
    pages = {4: "4K", 16: "16K", 64: "64K"}
    lines = [
        "#",
        "# Automatically generated file; DO NOT EDIT.",
        f"# Linux/arm64 {KERNEL_UPSTREAM} Kernel Configuration",
        f"# FAKE: edge-llm builder test stand-in for {version}",
        "#",
        'CONFIG_CC_VERSION_TEXT="aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0"',
        "CONFIG_ARM64=y",
        f"CONFIG_ARM64_{pages[page]}_PAGES=y",
        "CONFIG_ARCH_BCM=y",
        "CONFIG_ARCH_BCM2835=y",
        "CONFIG_ARCH_BRCMSTB=y",
        "CONFIG_LOCALVERSION=\"\"",
        "CONFIG_MODULES=y",
        "CONFIG_BLK_DEV_INITRD=y",
        "CONFIG_RD_GZIP=y",
        "CONFIG_RD_XZ=y",
        "CONFIG_RD_ZSTD=y",
        "CONFIG_EXT4_FS=y",
        "CONFIG_VFAT_FS=y",
        "CONFIG_MMC_SDHCI_BRCMSTB=y",
        "CONFIG_PCIE_BRCMSTB=y",
        "CONFIG_BLK_DEV_NVME=y",
        "CONFIG_MFD_RP1=y",
        "# CONFIG_VIRTIO_BLK is not set",
        "",
    ]
    return "\n".join(lines)


def system_map(version: str) -> str:
    return (
        "ffff800080000000 T _text\n"
        "ffff800080010000 T _stext\n"
        "ffff800081000000 D edge_llm_fake_system_map\n"
        f"ffff800081000008 D linux_banner_{version.replace('.', '_').replace('+', '_')}\n"
    )


# Board DTBs every Raspberry Pi arm64 kernel package ships in .../broadcom/ (a subset).
BOARD_DTBS: dict[str, tuple[list[str], str]] = {
    "bcm2710-rpi-3-b-plus.dtb": (["raspberrypi,3-model-b-plus", "brcm,bcm2837"],
                                 "Raspberry Pi 3 Model B+"),
    "bcm2711-rpi-4-b.dtb": (["raspberrypi,4-model-b", "brcm,bcm2711"], "Raspberry Pi 4 Model B"),
    "bcm2712-rpi-5-b.dtb": (["raspberrypi,5-model-b", "brcm,bcm2712"], "Raspberry Pi 5 Model B"),
    "bcm2712d0-rpi-5-b.dtb": (["raspberrypi,5-model-b", "brcm,bcm2712"],
                              "Raspberry Pi 5 Model B (D0)"),
    "bcm2712-rpi-500.dtb": (["raspberrypi,500", "brcm,bcm2712"], "Raspberry Pi 500"),
    # Compute Module 5 (eMMC and Lite) on its own IO board and on the CM4's: the
    # 2024-11-19 Raspberry Pi OS boot partition (kernel 6.6.51+rpt) already has all four
    # beside the Pi 5's; the names are raspberrypi/linux rpi-6.6.y's
    # arch/arm64/boot/dts/broadcom/bcm2712-rpi-cm5*-cm*io.dts
    "bcm2712-rpi-cm5-cm5io.dtb": (["raspberrypi,5-compute-module", "brcm,bcm2712"],
                                  "Raspberry Pi Compute Module 5"),
    "bcm2712-rpi-cm5-cm4io.dtb": (["raspberrypi,5-compute-module", "brcm,bcm2712"],
                                  "Raspberry Pi Compute Module 5 (CM4 IO board)"),
    "bcm2712-rpi-cm5l-cm5io.dtb": (["raspberrypi,5-compute-module", "brcm,bcm2712"],
                                   "Raspberry Pi Compute Module 5 Lite"),
    "bcm2712-rpi-cm5l-cm4io.dtb": (["raspberrypi,5-compute-module", "brcm,bcm2712"],
                                   "Raspberry Pi Compute Module 5 Lite (CM4 IO board)"),
}
CM5_DTBS = tuple(n for n in BOARD_DTBS if n.startswith("bcm2712-rpi-cm5"))

OVERLAYS = (
    "vc4-kms-v3d.dtbo",
    "vc4-kms-v3d-pi5.dtbo",
    "dwc2.dtbo",
    "disable-bt.dtbo",
    "disable-wifi.dtbo",
    "i2c-rtc.dtbo",
    "pcie-32bit-dma-pi5.dtbo",
)

OVERLAYS_README = """\
Introduction
============

FAKE overlays/README from the edge-llm builder tests. Raspberry Pi's real README
documents every overlay and parameter; this one only lists what the fake ships.

Name:   vc4-kms-v3d
Info:   (fake) Enable the KMS graphics driver
Load:   dtoverlay=vc4-kms-v3d

Name:   vc4-kms-v3d-pi5
Info:   (fake) See vc4-kms-v3d

Name:   dwc2
Info:   (fake) Selects the dwc2 USB controller driver
Load:   dtoverlay=dwc2,<param>=<val>

Name:   disable-bt
Name:   disable-wifi
Name:   i2c-rtc
Name:   pcie-32bit-dma-pi5
"""


def dtb_files() -> dict[str, bytes]:
    """name -> bytes for the broadcom/ directory of a kernel package."""
    return {
        name: board_dtb(compat, f"{model} (FAKE DTB, edge-llm builder tests)")
        for name, (compat, model) in BOARD_DTBS.items()
    }


def overlay_files() -> dict[str, bytes]:
    """name -> bytes for the overlays/ directory (README, *.dtbo, overlay_map.dtb)."""
    files = {name: overlay_dtbo(name.removesuffix(".dtbo")) for name in OVERLAYS}
    files["overlay_map.dtb"] = build_dtb(
        Node(children=[Node("vc4-kms-v3d", {"bcm2712": "vc4-kms-v3d-pi5"})])
    )
    files["README"] = OVERLAYS_README.encode()
    return files


# /usr/lib/raspi-firmware in Raspberry Pi's raspi-firmware: the GPU firmware and the
# Pi 0-4 bootloader stages. A Pi 5 boots from its EEPROM and ignores them.
FIRMWARE_BLOBS = (
    "bootcode.bin",
    "start.elf", "start_cd.elf", "start_db.elf", "start_x.elf",
    "start4.elf", "start4cd.elf", "start4db.elf", "start4x.elf",
    "fixup.dat", "fixup_cd.dat", "fixup_db.dat", "fixup_x.dat",
    "fixup4.dat", "fixup4cd.dat", "fixup4db.dat", "fixup4x.dat",
)


def firmware_blob(name: str) -> bytes:
    return f"FAKE raspi-firmware placeholder for {name} (edge-llm builder tests)\n".encode()


def initramfs(version: str) -> bytes:
    """A gzip'd newc cpio with one marker file, standing in for an initrd.img."""
    out = io.BytesIO()
    ino = 1

    def entry(name: str, mode: int, data: bytes = b"") -> None:
        nonlocal ino
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(namez), 0)
        )
        ino += 1
        out.write(hdr.encode() + namez)
        out.write(b"\0" * (-(110 + len(namez)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))

    entry("edge-llm-fake-initramfs", 0o100644,
          f"FAKE initramfs for {version} (edge-llm builder tests)\n".encode())
    entry("TRAILER!!!", 0)
    return gzip.compress(out.getvalue(), mtime=0)


FILES_DIR = Path(__file__).resolve().parent / "files"


def hook_script(kind: str) -> bytes:
    """The raspi-firmware hooks: kind is "kernel" or "initramfs"."""
    return (FILES_DIR / f"z50-raspi-firmware.{kind}").read_bytes()
