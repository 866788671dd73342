#!/usr/bin/env python3
# Test fake of NVIDIA's Linux_for_Tegra/flash.sh (L4T r36), installed by
# tests/fakes/jetson/fake_l4t.py under its real name. Only the start is faked: the
# argument count, ./<board>.conf in the current directory, the BSP banner and the root
# device check, with the real messages. It then refuses: the image generation flash.sh
# does for tools/kernel_flash/l4t_initrd_flash.sh is faked inside that script, and
# flashing over USB with flash.sh alone is not.
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
