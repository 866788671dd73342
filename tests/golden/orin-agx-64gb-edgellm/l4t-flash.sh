# build (offline, no board): in Linux_for_Tegra
BOARDID=3701 BOARDSKU=0005 FAB=500 CHIP_SKU=00:00:00:D0 USER=root ./tools/kernel_flash/l4t_initrd_flash.sh --no-flash --showlogs --network usb0 jetson-agx-orin-devkit internal
# builder flash: from the package
USER=root ./tools/kernel_flash/l4t_initrd_flash.sh --flash-only
