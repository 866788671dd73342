"""The bootloader EEPROM update an NVMe image carries on its boot partition, so a Pi 5
boots NVMe first without anyone running `rpi-eeprom-config --edit` on it.

Made with Raspberry Pi's own rpi-eeprom package (installed in the rootfs from pi5.apt, or
already in a Raspberry Pi OS image) the way its rpi-eeprom-update stages an update
(rpi-eeprom 27.0-1, branch debian/bookworm, rpi-eeprom-update:147-190 and 237-252): the
newest image of the package's `default` release for BCM2712 with its bootconf.txt's
BOOT_ORDER set (`rpi-eeprom-config --config --timestamp --out pieeprom.upd`), and
pieeprom.sig beside it (`rpi-eeprom-digest`: the image's sha256 and "ts: <seconds>").
Pi 5 bootloaders apply it by self-update at the next boot from any medium and reboot;
no recovery.bin (firmware-2712/release-notes.md:387-390: rpi-eeprom-update uses
self-update on a Pi 5, recovery.bin is only for Imager's bootloader SD cards). The
update is skipped by a bootloader whose last update is newer than "ts:".

Both tools are architecture-independent scripts (Python, sh): they run on the build host
from the rootfs tree, so nothing here reads or writes the EEPROM format itself.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ...errors import BuilderError
from ...run import run

NVME_FIRST = "0xf416"  # NVMe, then SD, then USB, then again: Raspberry Pi's docs, "Boot from PCIe"
PACKAGE = "rpi-eeprom"
EEPROM_SIZE = 2 * 1024 * 1024  # rpi-eeprom-update:433, BCM2712
RELEASE = "default"  # /etc/default/rpi-eeprom-update: FIRMWARE_RELEASE_STATUS
# rpi-eeprom-update:17-20: /usr/lib before /lib
FIRMWARE_ROOTS = ("usr/lib/firmware/raspberrypi", "lib/firmware/raspberrypi")
IMAGE_NAME = re.compile(r"pieeprom-\d{4}-\d{2}-\d{2}\.bin")  # rpi-eeprom-update:394
TOOLS = {"config": "usr/bin/rpi-eeprom-config", "digest": "usr/bin/rpi-eeprom-digest"}
WHERE = ("the rpi-eeprom package (pi5.apt, or the os.base raspios image) is needed with "
         "device.storage.kind: nvme, or set pi5.eeprom: leave")


def _inside(rootfs: Path, rel: str) -> Path | None:
    """rootfs/rel if it exists and resolves inside the rootfs (a link in the tree cannot
    lead the build host's tools to one of the host's files)."""
    path = (rootfs / rel).resolve()
    return path if path.is_relative_to(rootfs.resolve()) and path.exists() else None


def newest_image(rootfs: Path) -> Path:
    """The image rpi-eeprom-update would pick (rpi-eeprom-update:391-400): the last by name
    of the release's pieeprom-YYYY-MM-DD.bin files of the chip's size."""
    top = rootfs.resolve()
    for root in FIRMWARE_ROOTS:
        release = _inside(rootfs, f"{root}/bootloader-2712/{RELEASE}")
        if release is None or not release.is_dir():
            continue
        found = sorted((p for p in release.iterdir() if IMAGE_NAME.fullmatch(p.name)
                        and p.resolve().is_relative_to(top) and p.is_file()
                        and p.stat().st_size == EEPROM_SIZE), reverse=True)
        if found:
            return found[0]
    raise BuilderError(
        f"{PACKAGE}: no BCM2712 bootloader image (/{FIRMWARE_ROOTS[0]}/bootloader-2712/"
        f"{RELEASE}/pieeprom-*.bin) in the rootfs: {WHERE}")


def with_boot_order(bootconf: str, order: str) -> str:
    """bootconf.txt with BOOT_ORDER=`order` for every board: a BOOT_ORDER of its [all]
    section (lines before any section count as [all]) is replaced, else one is added after
    that section's last setting. Conditional sections ([gpio4=1], ...) stay as they are."""
    out: list[str] = []
    section, replaced, last_all = "all", False, None
    for line in bootconf.splitlines():
        head = line.strip()
        if head.startswith("[") and head.endswith("]"):
            section = head[1:-1].strip().lower()
        elif section == "all":
            if head.startswith("BOOT_ORDER="):
                line, replaced = f"BOOT_ORDER={order}", True
            if head:
                last_all = len(out)
        out.append(line)
    if not replaced:
        out.insert(0 if last_all is None else last_all + 1, f"BOOT_ORDER={order}")
    return "\n".join(out) + "\n"


def stage_update(rootfs: Path, boot: Path, *, boot_order: str = NVME_FIRST,
                 epoch: int | None = None, log_file: Path | None = None) -> None:
    """pieeprom.upd and pieeprom.sig in `boot` (the boot partition's files), from the
    rpi-eeprom installed in the tree at `rootfs`. `epoch`: the update's timestamp (the
    image's SOURCE_DATE_EPOCH), else now, as rpi-eeprom-update takes it."""
    image = newest_image(rootfs)
    tools = {k: _inside(rootfs, rel) for k, rel in TOOLS.items()}
    missing = [TOOLS[k] for k, v in tools.items() if v is None or not v.is_file()]
    if missing:
        raise BuilderError(f"{PACKAGE}: no /{', /'.join(missing)} in the rootfs: {WHERE}")
    ts = str(epoch if epoch is not None else int(time.time()))
    config = [sys.executable, str(tools["config"])]
    with tempfile.TemporaryDirectory(prefix="edge-llm-eeprom-") as tmp:
        work = Path(tmp)
        run([*config, "--out", work / "default.conf", image],
            what=f"rpi-eeprom-config (reading {image.name})", log_file=log_file)
        current = (work / "default.conf").read_text()
        (work / "boot.conf").write_text(with_boot_order(current, boot_order))
        run([*config, "--config", work / "boot.conf", "--timestamp", ts,
             "--out", work / "pieeprom.upd", image],
            what=f"rpi-eeprom-config (BOOT_ORDER={boot_order} into {image.name})",
            log_file=log_file)
        run(["sh", tools["digest"], "-i", work / "pieeprom.upd", "-o", work / "pieeprom.sig"],
            what="rpi-eeprom-digest", env={"SOURCE_DATE_EPOCH": ts}, log_file=log_file)
        # read back with the package's reader: what the bootloader will apply
        run([*config, "--out", work / "check.conf", work / "pieeprom.upd"],
            what="rpi-eeprom-config (reading pieeprom.upd back)", log_file=log_file)
        got = [ln.strip() for ln in (work / "check.conf").read_text().splitlines()]
        if f"BOOT_ORDER={boot_order}" not in got:
            raise BuilderError(f"{PACKAGE}: pieeprom.upd made from {image.name} does not "
                               f"carry BOOT_ORDER={boot_order}")
        for name in ("pieeprom.upd", "pieeprom.sig"):
            shutil.copyfile(work / name, boot / name)
