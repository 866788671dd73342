"""A fake sysfs USB tree, for the Jetson recovery-mode scan of l4t_initrd_flash.sh.

    from fakes.jetson.fake_sysfs import make_usb_sysfs
    make_usb_sysfs(tmp_path / "sys", [("7523", "1-4")])   # an Orin Nano in recovery mode
    env["FAKE_SYSFS"] = str(tmp_path / "sys")

Laid out like the kernel's: device directories under devices/pci0000:00/0000:00:14.0/
(the root hub usbN, hubs and devices nested by port), and symlinks to them in
bus/usb/devices/ (usbN, N-P, N-P.Q). Each device has idVendor, idProduct, serial,
product, manufacturer, busnum, devnum, devpath, dev and uevent. The real script finds
boards with `find /sys/bus/usb/devices/usb*/ -name devnum` and reads idVendor, idProduct,
busnum and devpath next to it: vendor 0955 and the products in RECOVERY (a Jetson in
recovery mode, "NVIDIA Corp. APX"). 0955:7020 is a Jetson running L4T (USB device mode),
which the script does not flash. A mouse receiver and a Bluetooth adapter are always
there too, so a scan that does not filter by vendor and product is caught.
"""

from __future__ import annotations

from pathlib import Path

# product id -> module, in recovery mode (vendor 0955); fill_devpaths() in the script
RECOVERY = {
    "7023": "AGX Orin (P3701-0000/0005)",
    "7223": "AGX Orin 32GB (P3701-0004)",
    "7323": "Orin NX 16GB (P3767-0000)",
    "7423": "Orin NX 8GB (P3767-0001)",
    "7523": "Orin Nano 8GB (P3767-0003/0005)",
    "7623": "Orin Nano 4GB (P3767-0004)",
}
RUNNING_L4T = "7020"  # a Jetson booted into L4T, its USB device port in gadget mode
CONTROLLER = "devices/pci0000:00/0000:00:14.0"
OTHERS = [("046d", "c52b", "USB Receiver", "Logitech", ""),
          ("8087", "0026", "Bluetooth", "Intel Corp.", "")]


def _device(d: Path, bus: int, devnum: int, devpath: str, vendor: str, product: str,
            name: str, maker: str, serial: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    attrs = {"idVendor": vendor, "idProduct": product, "product": name,
             "manufacturer": maker, "busnum": str(bus), "devnum": str(devnum),
             "devpath": devpath, "dev": f"189:{(bus - 1) * 128 + devnum - 1}",
             "bDeviceClass": "09" if product in ("0002", "0610") else "00",
             "speed": "480", "version": " 2.00",
             "uevent": f"MAJOR=189\nMINOR={(bus - 1) * 128 + devnum - 1}\n"
                       f"DEVNAME=bus/usb/{bus:03d}/{devnum:03d}\nDEVTYPE=usb_device\n"
                       f"DRIVER=usb\nPRODUCT={int(vendor, 16):x}/{int(product, 16):x}/100\n"
                       f"TYPE=0/0/0\nBUSNUM={bus:03d}\nDEVNUM={devnum:03d}\n"}
    if serial:
        attrs["serial"] = serial
    for k, v in attrs.items():
        (d / k).write_text(v if k == "uevent" else f"{v}\n")


def make_usb_sysfs(root: Path, boards: list[tuple[str, str]]) -> Path:
    """Create ROOT/bus/usb/devices/<port>/... for each (product_id, port) in BOARDS
    (e.g. ("7523", "1-4"), ("7023", "2-1.3")) as NVIDIA Jetsons (vendor 0955), plus a root
    hub per bus, intermediate hubs, and two unrelated USB devices. Return ROOT."""
    root = Path(root)
    links = root / "bus/usb/devices"
    links.mkdir(parents=True, exist_ok=True)
    taken = {port for _, port in boards}
    devnums: dict[int, int] = {}
    buses = sorted({int(port.split("-")[0]) for _, port in boards} | {1})

    def add(port: str, vendor: str, product: str, name: str, maker: str, serial: str) -> None:
        bus_s, path = port.split("-", 1)
        bus = int(bus_s)
        parts = path.split(".")
        rel = Path(CONTROLLER) / f"usb{bus}"
        for k in range(1, len(parts)):  # hubs on the way
            hub = f"{bus}-{'.'.join(parts[:k])}"
            rel = rel / hub
            if not (root / rel).exists():
                devnums[bus] += 1
                _device(root / rel, bus, devnums[bus], ".".join(parts[:k]), "05e3", "0610",
                        "USB2.0 Hub", "GenesysLogic", "")
                (links / hub).symlink_to(Path("../../..") / rel)
        rel = rel / port
        devnums[bus] += 1
        _device(root / rel, bus, devnums[bus], path, vendor, product, name, maker, serial)
        (links / port).symlink_to(Path("../../..") / rel)

    for bus in buses:
        hub = Path(CONTROLLER) / f"usb{bus}"
        _device(root / hub, bus, 1, "0", "1d6b", "0002", "xHCI Host Controller",
                "Linux 6.1.0-27-amd64 xhci-hcd", "0000:00:14.0")
        (links / f"usb{bus}").symlink_to(Path("../../..") / hub)
        devnums[bus] = 1
    free = (f"1-{n}" for n in range(1, 16) if f"1-{n}" not in taken)
    for vendor, product, name, maker, serial in OTHERS:
        add(next(free), vendor, product, name, maker, serial)
    for i, (product, port) in enumerate(boards):
        if product == RUNNING_L4T:
            add(port, "0955", product, "Linux for Tegra", "NVIDIA", f"142182203{3040 + i}")
        else:
            add(port, "0955", product, "APX", "NVIDIA Corp.", f"142182203{3040 + i}")
    return root
