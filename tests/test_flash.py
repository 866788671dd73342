"""`builder flash` for disk images: the device checks (lsblk views made from fixtures,
as a host with a system disk, a mounted card, a small stick and a fixed disk shows
them), a dry run, and a real write to a file read back byte for byte. Nothing here
writes to a real device: the refusals come first, and the one block node a CLI test
makes is refused before anything is opened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.flash import BlockView, Image, Request, check_device, flash
from builder.run import run

GiB = 1 << 30
LSBLK = {"blockdevices": [
    {"name": "nvme0n1", "path": "/dev/nvme0n1", "size": 512 * GiB, "rm": False,
     "type": "disk", "tran": "nvme", "model": "Samsung SSD 980", "serial": "S1",
     "mountpoints": [None], "children": [
         {"name": "nvme0n1p1", "path": "/dev/nvme0n1p1", "mountpoints": ["/boot/efi"]},
         {"name": "nvme0n1p2", "path": "/dev/nvme0n1p2", "mountpoints": ["/"]}]},
    {"name": "sda", "path": "/dev/sda", "size": 2000 * GiB, "rm": False, "type": "disk",
     "tran": "sata", "model": "WDC WD20", "serial": "W2", "mountpoints": [None],
     "children": [{"name": "sda1", "path": "/dev/sda1", "mountpoints": ["/srv/data"]}]},
    {"name": "sdb", "path": "/dev/sdb", "size": 32 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "SD Card Reader", "serial": "R3", "mountpoints": [None],
     "children": [{"name": "sdb1", "path": "/dev/sdb1",
                   "mountpoints": ["/media/me/bootfs"]}]},
    {"name": "sdc", "path": "/dev/sdc", "size": 1 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "Tiny Stick", "serial": "T4", "mountpoints": [None]},
    {"name": "mmcblk0", "path": "/dev/mmcblk0", "size": 64 * GiB, "rm": False,
     "type": "disk", "tran": None, "model": None, "serial": "0x1234", "mountpoints": [None]},
    {"name": "sdd", "path": "/dev/sdd", "size": 64 * GiB, "rm": True, "type": "disk",
     "tran": "usb", "model": "Card", "serial": "C5", "mountpoints": [None]},
]}
VIEW = BlockView.from_lsblk(json.dumps(LSBLK))


def _block(_: str) -> bool:
    return True


@pytest.mark.parametrize(("device", "message"), [
    ("/dev/nvme0n1", "this machine runs from it (/boot/efi is on it)"),
    ("/dev/sdb", "/media/me/bootfs mounted from it; unmount it first"),
    ("/dev/sdc", "1GiB is smaller than the image (4GiB)"),
    ("/dev/mmcblk0", "a fixed disk (/dev/mmcblk0 (64GiB, serial 0x1234)); if you really "
                     "mean to overwrite it, add --force-fixed"),
    ("/dev/sda", "/srv/data mounted from it"),
    ("/dev/sdd1", "not a whole disk lsblk knows"),
], ids=["system-disk", "mounted", "too-small", "fixed", "data-disk", "partition"])
def test_a_device_that_is_not_safe_to_write_is_refused(device: str, message: str) -> None:
    with pytest.raises(BuilderError, match="^--device " + device):
        try:
            check_device(device, 4 * GiB, VIEW, force_fixed=False, is_block=_block)
        except BuilderError as e:
            assert message in str(e) and "\n" not in str(e), str(e)
            raise


def test_a_removable_card_is_taken_and_a_fixed_one_only_when_forced() -> None:
    assert check_device("/dev/sdd", 4 * GiB, VIEW, force_fixed=False, is_block=_block).serial \
        == "C5"
    assert check_device("/dev/mmcblk0", 4 * GiB, VIEW, force_fixed=True, is_block=_block)
    with pytest.raises(BuilderError, match="this machine runs from it"):
        check_device("/dev/nvme0n1", 4 * GiB, VIEW, force_fixed=True, is_block=_block)


def test_something_not_a_block_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuilderError, match=r"not a block device .*--to-file PATH"):
        check_device(str(tmp_path), 1, VIEW, force_fixed=False,
                     is_block=lambda p: False)


# --- a real image, written to a file and read back -----------------------------------------

@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """A build's output as `builder build` leaves it: image, bmap, compressed copy and a
    manifest whose delivery names them (an MBR image with a boot and a root partition)."""
    d = tmp_path_factory.mktemp("build")
    raw = d / "dev.img"
    run(["truncate", "-s", "64M", raw], what="truncate")
    run(["sh", "-c", 'printf "label: dos\\nlabel-id: 0x1a2b3c4d\\nstart=16384, size=32768, '
         'type=c\\nstart=49152, type=83\\n" | sfdisk -q "$1"', "sh", raw], what="sfdisk")
    with raw.open("r+b") as f:  # some data to copy (bmaptool skips holes)
        f.seek(49152 * 512)
        f.write(os.urandom(3 << 20))
    run(["bmaptool", "-q", "create", "-o", d / "dev.bmap", raw], what="bmaptool create")
    run(["zstd", "-q", "-f", raw, "-o", d / "dev.img.zst"], what="zstd")
    (d / "manifest.json").write_text(json.dumps({"release_id": "rtest", "delivery": {
        "kind": "disk-image", "files": {"image": "dev.img", "bmap": "dev.bmap",
                                        "compressed": "dev.img.zst"},
        "bytes": raw.stat().st_size, "sha256": "x", "root_partuuid": "1a2b3c4d-02"}}))
    return d


def _image(build_dir: Path) -> Image:
    return Image.of_build(build_dir, json.loads((build_dir / "manifest.json").read_text()))


def test_writing_to_a_file_round_trips_and_checks_the_root(build_dir: Path,
                                                           tmp_path: Path) -> None:
    dest = tmp_path / "card.img"
    said: list[str] = []
    where = flash(_image(build_dir), Request(to_file=dest, say=said.append))
    assert where == str(dest)
    assert dest.read_bytes() == (build_dir / "dev.img").read_bytes()


def test_a_written_copy_without_the_root_partuuid_is_reported(build_dir: Path,
                                                              tmp_path: Path) -> None:
    m = json.loads((build_dir / "manifest.json").read_text())
    m["delivery"]["root_partuuid"] = "deadbeef-02"
    with pytest.raises(BuilderError, match="not root PARTUUID deadbeef-02"):
        flash(Image.of_build(build_dir, m), Request(to_file=tmp_path / "x.img"))


def test_a_dry_run_says_the_exact_command_and_writes_nothing(build_dir: Path,
                                                             tmp_path: Path) -> None:
    said: list[str] = []
    flash(_image(build_dir), Request(device="/dev/sdd", dry_run=True, say=said.append),
          view=VIEW, is_block=_block)
    assert said[1].strip() == (f"bmaptool copy --bmap {build_dir / 'dev.bmap'} "
                               f"{build_dir / 'dev.img.zst'} /dev/sdd")
    assert "1a2b3c4d-02" in said[2]


def test_no_answer_to_the_question_writes_nothing(build_dir: Path) -> None:
    with pytest.raises(BuilderError, match="no confirmation"):
        flash(_image(build_dir), Request(device="/dev/sdd", confirm=lambda q: False),
              view=VIEW, is_block=_block)


def test_the_cli_refuses_in_one_line_and_writes_nothing(build_dir: Path,
                                                        tmp_path: Path) -> None:
    """The real command with a real block node and lsblk (a fake on PATH) saying the card
    is mounted: refused before anything is opened."""
    node = tmp_path / "sdz"
    os.mknod(node, 0o600 | 0o060000, os.makedev(7, 255))  # S_IFBLK: a loop device's number
    fake = tmp_path / "bin"
    fake.mkdir()
    view = {"blockdevices": [{"name": "sdz", "path": str(node), "size": 64 * GiB, "rm": True,
                              "type": "disk", "tran": "usb", "model": "Card", "serial": "Z",
                              "mountpoints": [None], "children": [
                                  {"name": "sdz1", "mountpoints": ["/media/card"]}]}]}
    (fake / "lsblk").write_text(f"#!/bin/sh\necho '{json.dumps(view)}'\n")
    (fake / "lsblk").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    (out / "x86-gateway").symlink_to(build_dir)
    exe = Path(sys.executable).with_name("builder")
    r = subprocess.run([str(exe), "flash", "--profile", "x86-gateway", "--out", str(out),
                        "--device", str(node), "--yes"], capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"},
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr == (f"error: --device {node}: /media/card mounted from it; unmount it "
                        f"first (umount {node}*)\n")
