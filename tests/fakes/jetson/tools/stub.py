#!/usr/bin/env python3
# Test stand-in for a Linux_for_Tegra helper script that tests/fakes/jetson/fake_l4t.py
# ships so the tree has the real file names, but that the fakes do not run separately:
# tools/kernel_flash/l4t_initrd_flash.sh does its work itself. It refuses to run.
"""A Linux_for_Tegra helper that is not run on its own in this test BSP."""

import sys
from pathlib import Path

if __name__ == "__main__":
    print(f"{Path(sys.argv[0]).name}: not available on its own in this test BSP; use "
          "apply_binaries.sh and tools/kernel_flash/l4t_initrd_flash.sh", file=sys.stderr)
    sys.exit(1)
