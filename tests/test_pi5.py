"""The Raspberry Pi 5 image, built here with the apt stand-in (tests/fakes/rpi: a signed
repository laid out like Raspberry Pi's, with a raspi-firmware whose kernel hook fills
/boot/firmware as theirs does), checked statically (partition table, FAT contents,
config.txt / cmdline.txt / fstab agreeing on PARTUUIDs, the kernel and DTB config.txt
names present), booted in QEMU's virt machine with Debian's cloud kernel
(--with-vm-image; no QEMU emulates a Pi 5) and verified with `builder verify`, and
written to a file with `builder flash --to-file`. The raspios base is checked on a
synthetic image with Raspberry Pi OS's partition layout. One arm64 build is shared."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fakes.rpi import CM5_DTBS, make_raspios_image

from builder.cache import sha256_file
from builder.run import run

# Most of half an hour of emulated arm64 work on 2 cores (rootfs, cross-built engine,
# Ansible under qemu-user, a virt VM), built in the background while the x86 tests run.
pytestmark = [pytest.mark.slow, pytest.mark.emulated]
PROFILE = "pi5-test"  # conftest.pi5_appliance
SECTOR = 512


@pytest.fixture(scope="module")
def pi5(pi5_appliance: Path) -> Path:
    return pi5_appliance


@pytest.fixture(scope="module")
def built(pi5: Path) -> dict:
    return json.loads((pi5 / PROFILE / "manifest.json").read_text())


def _files(pi5: Path, built: dict) -> dict[str, Path]:
    return {k: pi5 / PROFILE / v for k, v in built["delivery"]["files"].items()}


def _table(image: Path) -> dict:
    return json.loads(run(["sfdisk", "--json", image], what="sfdisk"))["partitiontable"]


def _fat(image: Path, table: dict) -> str:
    return f"{image}@@{table['partitions'][0]['start'] * SECTOR}"


def test_the_disk_is_an_mbr_with_a_fat_bootfs_and_an_ext4_rootfs(pi5: Path,
                                                                 built: dict) -> None:
    image = _files(pi5, built)["image"]
    t = _table(image)
    assert t["label"] == "dos"
    boot, root = t["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True
    assert boot["start"] * SECTOR == 8 << 20 and boot["size"] * SECTOR == 512 << 20
    assert root["type"] == "83" and root["start"] * SECTOR % (8 << 20) == 0
    disk = t["id"].removeprefix("0x")
    assert built["delivery"]["root_partuuid"] == f"{disk}-02"
    ext4 = run(["sh", "-c", f'dumpe2fs -h "$1?offset={root["start"] * SECTOR}"', "sh", image],
               what="dumpe2fs")
    assert "Block size:               4096" in ext4
    assert "Filesystem volume name:   rootfs" in ext4


def test_config_cmdline_and_fstab_agree_on_the_partuuids(pi5: Path, built: dict) -> None:
    image = _files(pi5, built)["image"]
    t = _table(image)
    disk = t["id"].removeprefix("0x")
    fat = _fat(image, t)
    config = run(["mtype", "-i", fat, "::/config.txt"], what="mtype")
    cmdline = run(["mtype", "-i", fat, "::/cmdline.txt"], what="mtype")
    assert cmdline.startswith(f"root=PARTUUID={disk}-02 ") and cmdline.count("\n") == 1
    assert "rootwait" in cmdline
    kernel = next(ln.split("=", 1)[1] for ln in config.splitlines()
                  if ln.startswith("kernel="))
    listing = run(["mdir", "-i", fat, "-b", "-/", "::/"], what="mdir")
    assert f"::/{kernel}" in listing  # the kernel config.txt names, from raspi-firmware's hook
    assert "::/bcm2712-rpi-5-b.dtb" in listing and "::/initramfs_2712" in listing
    assert all(f"::/{dtb}" in listing for dtb in CM5_DTBS)  # Compute Module 5 boards too
    assert "::/pieeprom.upd" not in listing  # an sd profile leaves the EEPROM alone
    overlays = [ln.split("=", 1)[1].split(",")[0] for ln in config.splitlines()
                if ln.startswith("dtoverlay=")]
    assert all(f"::/overlays/{o}.dtbo" in listing for o in overlays), overlays
    assert "::/overlays/vc4-kms-v3d-pi5.dtbo" in listing  # the firmware's overlays came along
    root_at = t["partitions"][1]["start"] * SECTOR
    fstab = run(["debugfs", "-R", "cat /etc/fstab", f"{image}?offset={root_at}"],
                what="debugfs")
    assert f"PARTUUID={disk}-01  /boot/firmware" in fstab
    assert f"PARTUUID={disk}-02  /" in fstab
    machine_id = run(["debugfs", "-R", "cat /etc/machine-id", f"{image}?offset={root_at}"],
                     what="debugfs")  # (with debugfs's banner: run() keeps stderr)
    assert [ln for ln in machine_id.splitlines() if not ln.startswith("debugfs ")] == []
    # an empty machine-id: every device makes its own at first boot
    sources = run(["debugfs", "-R", "cat /etc/apt/sources.list.d/raspi.list",
                   f"{image}?offset={root_at}"], what="debugfs")
    assert "archive.raspberrypi.com" in sources and "signed-by=/etc/apt/keyrings/" in sources


def test_the_pi_world_gets_img_bmap_packages_and_hashes(pi5: Path, built: dict) -> None:
    """(The suite's profile asks for .img.zst; the default .img.xz: test_image_publish.)"""
    f = _files(pi5, built)
    assert f["image"].name == f"{PROFILE}.img" and f["compressed"].name == f"{PROFILE}.img.zst"
    assert sha256_file(f["image"]) == built["delivery"]["sha256"]
    assert "<bmap" in f["bmap"].read_text()
    listed = dict(line.split(" ", 1) for line in f["packages"].read_text().splitlines())
    assert {"raspi-firmware", "linux-image-rpi-2712", "systemd"} <= set(listed)
    assert run(["zstd", "-tq", f["compressed"]], what="zstd -t") == ""


def test_flash_to_a_file_writes_the_image_byte_for_byte(pi5: Path, built: dict,
                                                        run_builder_session,
                                                        tmp_path: Path) -> None:
    card = tmp_path / "card.img"
    r = run_builder_session("flash", "--profile", PROFILE, "--profiles-dir",
                            str(pi5 / "profiles"), "--out", str(pi5), "--to-file", str(card))
    assert r.returncode == 0, r.stderr
    assert sha256_file(card) == built["delivery"]["sha256"]


def test_the_image_boots_in_qemu_virt_and_passes_builder_verify(pi5: Path, built: dict,
                                                                start_vm,
                                                                run_builder_session) -> None:
    """And the medium got its own disk id at this first boot (edge-llm-disk-ids):
    cmdline.txt and fstab name the new PARTUUIDs. (QEMU's -append names the root
    /dev/vda2 here, so the next boot's by-id root is the x86 double-boot test's.)"""
    from builder import vm

    image_id = _table(_files(pi5, built)["image"])["id"].removeprefix("0x").lower()
    spec, key = start_vm(pi5, "pi5", profile=PROFILE, memory_mb=2048, disk_size=6 << 30)
    try:
        api_port = next(iter(spec.forwards))
        r = run_builder_session("verify", "--profile", PROFILE, "--profiles-dir",
                                str(pi5 / "profiles"), "--out", str(pi5),
                                "--host", f"ssh://edge@127.0.0.1:{spec.ssh_port}",
                                "--api-url", f"http://127.0.0.1:{api_port}",
                                "--select", "not a_second_ansible_run")
        assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-2000:]
        on_device = subprocess.run(vm.ssh_command(
            spec.ssh_port, "edge", key, "sudo sfdisk --disk-id /dev/vda; echo @@; "
            "cat /boot/firmware/cmdline.txt; echo @@; cat /etc/fstab"),
            capture_output=True, text=True, timeout=120)
        assert on_device.returncode == 0, on_device.stderr
    finally:
        vm.stop(spec.state_dir)
    disk_id, cmdline, fstab = on_device.stdout.split("@@\n")
    new_id = disk_id.strip().removeprefix("0x").lower()
    assert len(new_id) == 8 and new_id != image_id
    assert cmdline.startswith(f"root=PARTUUID={new_id}-02 ")
    assert f"PARTUUID={new_id}-01  /boot/firmware" in fstab
    assert f"PARTUUID={new_id}-02  /" in fstab
    assert image_id not in cmdline + fstab


# --- the raspios base: a Raspberry Pi OS image customised ----------------------------------

def test_a_raspios_image_gives_its_rootfs_and_boot_files(arm64_rootfs_tar: Path,
                                                        artifact_cache, tmp_path: Path) -> None:
    from builder.targets.raspberry_pi5 import raspios

    tarball = arm64_rootfs_tar
    img = make_raspios_image(tarball, tmp_path / "raspios", compress=True)
    got = raspios.build(raspios.ImageSpec(
        image=img, sha256=sha256_file(img), arch="arm64", qemu="aarch64",
        packages=["python3", "openssh-server"]), artifact_cache)
    names = subprocess.run(["tar", "-tf", str(got.tarball)], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert "./etc/rpi-issue" in names  # Raspberry Pi OS's own rootfs
    assert "./boot/firmware/kernel_2712.img" in names  # its boot partition, kept
    assert "./boot/firmware/bcm2712-rpi-5-b.dtb" in names
    assert got.entry.manifest["added"] == []  # nothing was missing: no apt run
    assert got.entry.manifest["base_image"] == img.name
