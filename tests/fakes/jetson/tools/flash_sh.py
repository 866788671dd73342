#!/usr/bin/env python3
# Test fake of NVIDIA's Linux_for_Tegra/flash.sh, installed by tests/fakes/jetson/fake_l4t.py
# under its real name. It mirrors Jetson Linux R36.2.0 as read from the public mirror
# johnnynunez/Linux_for_Tegra (commit 9a5768c1). Only the start is faked, with the real
# messages: fewer than two words: usage, exit 1 (flash.sh:1708-1710, 244-258); no
# ./<board>.conf: "Error: Invalid target board - <board>." (1712-1723); the BSP banner
# (1776-1782); a root device it does not know: "Error: Invalid target rootdev(<dev>)."
# (1814). It then refuses: the image generation flash.sh does for
# tools/kernel_flash/l4t_initrd_flash.sh (process_chip_sku_version, the BPMP firmware,
# flashcmd.txt) is faked inside that script, and flashing over USB with flash.sh alone
# is not faked at all.
"""flash.sh: sign and flash a Jetson (test fake; refuses after its checks)."""

from __future__ import annotations

import sys
from pathlib import Path

LDK_DIR = Path(__file__).resolve().parent
INFODIVIDER = "#" * 79


def usage() -> int:
    print(f"Usage: sudo {sys.argv[0]} [options] <target_board> <rootdev>")
    print("  Where,\n\ttarget board: Valid target board name.\n\trootdev: Proper root device.")
    return 1


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        return usage()
    board, rootdev = argv[-2], argv[-1]
    if not Path(f"{board}.conf").is_file():
        print(f"Error: Invalid target board - {board}.")
        return usage()
    version = dict(line.split("=", 1) for line in (LDK_DIR / "nv_tegra/bsp_version")
                   .read_text().splitlines() if "=" in line and not line.startswith("#"))
    print(INFODIVIDER)
    print("# L4T BSP Information:")
    print(f"# R{version.get('BSP_BRANCH')} , REVISION: {version.get('BSP_MAJOR')}."
          f"{version.get('BSP_MINOR')}")
    print("# User release: 0.0")
    print(INFODIVIDER)
    if not (rootdev in ("internal", "external", "eth0", "eth1")
            or rootdev.startswith(("mmcblk0p", "mmcblk1p", "mmcblk3p", "sd", "nvme"))):
        print(f"Error: Invalid target rootdev({rootdev}).")
        return usage()
    print("flash.sh is not available in this test BSP: generate and flash with "
          "tools/kernel_flash/l4t_initrd_flash.sh", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
