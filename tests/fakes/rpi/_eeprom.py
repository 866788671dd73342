"""FAKE Raspberry Pi bootloader EEPROM images (pieeprom-*.bin) in the real format, as the
rpi-eeprom package ships them, each with the default bootconf.txt of its release.

The format, as rpi-eeprom 27.0-1 (branch debian/bookworm) reads it in rpi-eeprom-config:
17-45 and 267-288: a 512 KiB (BCM2711) or 2 MiB (BCM2712) image of sections, each a
big-endian u32 magic (0x55aaf00f under the mask 0xfffff00f) and a u32 length, the next
section at the following 8-byte boundary; 0x55aaf11f is a modifiable file (a 12-byte
NUL-padded name, then its bytes from header + 24; its length counts 12 + 4 + the bytes),
0x55aafeef padding, a magic of 0 or 0xffffffff the end. The last 4 KiB belong to the
bootloader; the last 8 bytes hold the update timestamp and its complement
(rpi-eeprom-config:409-416), all ones (erased) as shipped.

Laid out like the real default images of that release: the bootcode section at 0 (here a
FAKE banner and the BUILD_TIMESTAMP= string rpi-eeprom-update reads with `strings`), then
padding, then bootconf.txt where the real one has it (0xb0000 in
firmware-2712/default/pieeprom-2025-01-22.bin, 0x7b000 in
firmware-2711/default/pieeprom-2024-04-15.bin), then erased flash.
"""

from __future__ import annotations

import struct

MAGIC = 0x55AAF00F
FILE_MAGIC = 0x55AAF11F
PAD_MAGIC = 0x55AAFEEF
FILENAME_LEN = 12
FILE_HDR_LEN = 20  # as rpi-eeprom-config counts it: data starts at header + 4 + 20


# chip -> (image name, size, bootconf.txt offset, BUILD_TIMESTAMP, default bootconf.txt):
# the `default` release of each chip in rpi-eeprom 27.0-1, its bootconf.txt verbatim
# (`rpi-eeprom-config pieeprom-....bin`)
RELEASES = {
    "2712": ("pieeprom-2025-01-22.bin", 2 * 1024 * 1024, 0xB0000, 1737505011,
             "[all]\nBOOT_UART=1\nBOOT_ORDER=0xf461\nNET_INSTALL_AT_POWER_ON=1\n"),
    "2711": ("pieeprom-2024-04-15.bin", 512 * 1024, 0x7B000, 1713186734,
             "[all]\nBOOT_UART=0\nWAKE_ON_GPIO=1\nPOWER_OFF_ON_HALT=0\n\n"),
}


def _section(magic: int, payload: bytes) -> bytes:
    return struct.pack(">LL", magic, len(payload)) + payload


def pieeprom(chip: str) -> bytes:
    """The FAKE default EEPROM image of `chip` ("2712" or "2711")."""
    _, size, conf_at, build_ts, bootconf = RELEASES[chip]
    banner = (f"EDGE-LLM BUILDER FAKE BOOTLOADER for BCM{chip} - a test stand-in shaped "
              "like Raspberry Pi's pieeprom; it contains no code.\n").encode()
    bootcode = _section(MAGIC, banner + f"BUILD_TIMESTAMP={build_ts}\n".encode() + b"\0")
    bootcode += b"\xff" * (-len(bootcode) % 8)
    pad = _section(PAD_MAGIC, b"\xff" * (conf_at - len(bootcode) - 8))
    name = b"bootconf.txt".ljust(FILENAME_LEN, b"\0")
    conf = _section(FILE_MAGIC, name + b"\0" * 4 + bootconf.encode())
    image = bootcode + pad + conf
    assert len(image) == conf_at + len(conf) and conf_at % 8 == 0
    return image + b"\xff" * (size - len(image))


def recovery_bin(chip: str) -> bytes:
    return (f"FAKE recovery.bin for BCM{chip} (edge-llm builder tests): the real one "
            "is the boot ROM's EEPROM flasher, run from an SD card.\n").encode()
