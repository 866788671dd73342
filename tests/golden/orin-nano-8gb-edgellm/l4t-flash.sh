# build (offline, no board): in Linux_for_Tegra
BOARDID=3767 BOARDSKU=0005 FAB=300 CHIP_SKU=00:00:00:D5 USER=root ./tools/kernel_flash/l4t_initrd_flash.sh --no-flash --external-device nvme0n1p1 -c tools/kernel_flash/flash_l4t_t234_nvme.xml -p '-c bootloader/generic/cfg/flash_t234_qspi.xml' --showlogs --network usb0 jetson-orin-nano-devkit-super internal
# builder flash: from the package
USER=root ./tools/kernel_flash/l4t_initrd_flash.sh --flash-only
