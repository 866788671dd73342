"""The bootloader EEPROM update an NVMe Pi 5 image carries on its boot partition
(builder/targets/raspberry_pi5/eeprom.py), made with the stand-in rpi-eeprom package
(tests/fakes/rpi: real image format, the tools as the package ships them) and read back
here by an EEPROM reader written from the format's description, independent of both; and
the Compute Module 5 device trees on the boot partition.

Fast: the package is unpacked into a tree (no rootfs build, no VM). Needs dpkg-deb,
apt-ftparchive, gpg, xz; the image test also mkfs.ext4, mkfs.vfat, mtools, sfdisk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import pytest
from fakes.rpi import CM5_DTBS, kernel_version, make_repo
from fakes.rpi._eeprom import RELEASES
from host_tools import need, sh

from builder.errors import BuilderError
from builder.profiles import ProfileStore
from builder.targets.raspberry_pi5 import TARGET, disk, eeprom

EPOCH = 1767225600  # 2026-01-01T00:00:00Z: the update's timestamp
MiB = 1 << 20
K2712 = kernel_version("2712")
IMAGE_2712 = "usr/lib/firmware/raspberrypi/bootloader-2712/default/" + RELEASES["2712"][0]


def bootconf_of(image: bytes) -> str:
    """bootconf.txt of a BCM2712 EEPROM image: sections of a big-endian u32 magic and u32
    length, each at the 8-byte boundary after the last; a file section (0x55aaf11f) has a
    12-byte NUL-padded name at +8 and its data at +24, length - 16 bytes of it."""
    assert len(image) == 2 * MiB
    off = 0
    while off < len(image):
        magic, length = struct.unpack_from(">II", image, off)
        if magic in (0, 0xFFFFFFFF):
            break
        assert magic & 0xFFFFF00F == 0x55AAF00F, f"not a section at {off:#x}: {magic:#x}"
        if magic == 0x55AAF11F and image[off + 8:off + 20].rstrip(b"\0") == b"bootconf.txt":
            return image[off + 24:off + 8 + length].decode()
        off = (off + 8 + length + 7) // 8 * 8
    raise AssertionError("no bootconf.txt section")


def settings(bootconf: str) -> dict[str, str]:
    """The [all] section's KEY=VALUE settings (lines before any section count)."""
    out, section = {}, "all"
    for line in bootconf.splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        elif section == "all" and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    need("dpkg-deb", "apt-ftparchive", "gpg", "xz")
    return make_repo(tmp_path_factory.mktemp("rpi-repo"))


def unpack(repo, root: Path, *names: str) -> Path:
    for name in names:
        sh("dpkg-deb", "-x", repo.debs[name], root)
    return root


@pytest.fixture
def tree(repo, tmp_path: Path) -> Path:
    """A rootfs with rpi-eeprom installed (its files, as dpkg unpacks them)."""
    return unpack(repo, tmp_path / "root", "rpi-eeprom")


# --- the update ------------------------------------------------------------------------

def test_an_nvme_image_carries_the_update_with_nvme_first(tree: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    eeprom.stage_update(tree, boot, epoch=EPOCH)
    assert sorted(p.name for p in boot.iterdir()) == ["pieeprom.sig", "pieeprom.upd"]

    upd = (boot / "pieeprom.upd").read_bytes()
    shipped = (tree / IMAGE_2712).read_bytes()
    conf = bootconf_of(upd)
    assert settings(conf)["BOOT_ORDER"] == "0xf416"
    # the release's own settings stay; only BOOT_ORDER changed
    assert conf == bootconf_of(shipped).replace("BOOT_ORDER=0xf461", "BOOT_ORDER=0xf416")
    assert settings(bootconf_of(shipped))["BOOT_ORDER"] == "0xf461"
    # the bootloader itself is the package's, byte for byte, up to bootconf.txt
    assert upd[:0xB0000] == shipped[:0xB0000]
    # the update timestamp and its complement in the last 8 bytes, as rpi-eeprom-config
    # --timestamp writes them; the same value as the .sig's ts: (no re-flash loop)
    assert struct.unpack_from("<II", upd, len(upd) - 8) == (~EPOCH & 0xFFFFFFFF, EPOCH)
    sig = (boot / "pieeprom.sig").read_text()
    assert sig == f"{hashlib.sha256(upd).hexdigest()}\nts: {EPOCH}\n"


def test_the_newest_default_image_is_taken_and_nothing_outside_the_tree(
        tree: Path, tmp_path: Path) -> None:
    default = (tree / IMAGE_2712).parent
    shipped = (tree / IMAGE_2712).read_bytes()
    newer = bytearray(shipped)
    newer[200:204] = b"NEW!"
    (default / "pieeprom-2025-03-10.bin").write_bytes(newer)
    (default / "pieeprom-2098-01-01.bin").write_bytes(shipped[:MiB])  # not a 2712's size
    (default.parent / "latest/pieeprom-2099-01-01.bin").write_bytes(shipped)  # not default
    host_file = tmp_path / "host-file.bin"  # outside the tree: a link must not reach it
    host_file.write_bytes(shipped)
    (default / "pieeprom-2097-01-01.bin").symlink_to(host_file)
    boot = tmp_path / "boot"
    boot.mkdir()
    eeprom.stage_update(tree, boot, epoch=EPOCH)
    assert (boot / "pieeprom.upd").read_bytes()[:0xB0000] == bytes(newer[:0xB0000])


def test_a_package_without_the_2712_image_is_refused_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    need("dpkg-deb", "apt-ftparchive", "gpg", "xz")
    only_2711 = make_repo(tmp_path_factory.mktemp("rpi-repo-2711"), eeprom_chips=("2711",))
    root = unpack(only_2711, tmp_path / "root", "rpi-eeprom")
    assert (root / "usr/lib/firmware/raspberrypi/bootloader-2711/default").is_dir()
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(BuilderError) as err:
        eeprom.stage_update(root, boot, epoch=EPOCH)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("rpi-eeprom: no BCM2712 bootloader image")
    assert "device.storage.kind: nvme" in msg and "pi5.eeprom: leave" in msg
    assert list(boot.iterdir()) == []


def test_tools_linked_out_of_the_tree_are_not_run(tree: Path, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    host_tool = tmp_path / "host-tool"
    host_tool.write_text(f"import pathlib; pathlib.Path({str(ran)!r}).touch()\n")
    config = tree / "usr/bin/rpi-eeprom-config"
    config.unlink()
    config.symlink_to(host_tool)
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(BuilderError, match=r"^rpi-eeprom: no /usr/bin/rpi-eeprom-config"):
        eeprom.stage_update(tree, boot, epoch=EPOCH)
    assert not ran.exists() and list(boot.iterdir()) == []


def test_a_corrupt_image_fails_where_the_package_tool_does(tree: Path, tmp_path: Path) -> None:
    image = tree / IMAGE_2712
    data = bytearray(image.read_bytes())
    data[0xB0000:0xB0004] = b"\x12\x34\x56\x78"  # bootconf.txt's section header
    image.write_bytes(data)
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(BuilderError, match="rpi-eeprom-config") as err:
        eeprom.stage_update(tree, boot, epoch=EPOCH)
    assert "EEPROM is corrupted" in str(err.value)
    assert list(boot.iterdir()) == []


@pytest.mark.parametrize(("conf", "want"), [
    pytest.param("[all]\nBOOT_UART=1\nBOOT_ORDER=0xf461\n",
                 "[all]\nBOOT_UART=1\nBOOT_ORDER=0xf416\n", id="replaced"),
    pytest.param("[all]\nBOOT_UART=1\n\n[gpio4=1]\nBOOT_ORDER=0xf41\n",
                 "[all]\nBOOT_UART=1\nBOOT_ORDER=0xf416\n\n[gpio4=1]\nBOOT_ORDER=0xf41\n",
                 id="added-to-all-conditional-kept"),
    pytest.param("BOOT_UART=1\n", "BOOT_UART=1\nBOOT_ORDER=0xf416\n", id="no-section"),
    pytest.param("[pi5]\nBOOT_UART=1\n", "BOOT_ORDER=0xf416\n[pi5]\nBOOT_UART=1\n",
                 id="only-a-conditional-section"),
])
def test_boot_order_goes_in_the_all_section(conf: str, want: str) -> None:
    assert eeprom.with_boot_order(conf, "0xf416") == want


# --- the profile ----------------------------------------------------------------------

def _profile(workdir: Path, text: str):
    path = workdir / "profiles/p.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    p = ProfileStore().load("p").profile
    assert p is not None
    return p


@pytest.mark.parametrize(("text", "order"), [
    pytest.param("extends: pi5-4gb\ndevice:\n  storage:\n    kind: nvme\n", "0xf416",
                 id="nvme"),
    pytest.param("extends: pi5-4gb\n", None, id="sd"),
    pytest.param("extends: pi5-4gb\ndevice:\n  storage:\n    kind: usb\n", None, id="usb"),
    pytest.param("extends: pi5-4gb\ndevice:\n  storage:\n    kind: nvme\n"
                 "pi5:\n  eeprom: leave\n", None, id="nvme-leave"),
])
def test_only_nvme_profiles_get_the_update_and_its_package(workdir: Path, text: str,
                                                           order: str | None) -> None:
    p = _profile(workdir, text)
    assert TARGET.layout(p).eeprom_boot_order == order
    assert ("rpi-eeprom" in TARGET.rootfs_packages(p)) == (order is not None)


def test_a_bad_eeprom_value_is_one_line_naming_the_field(workdir: Path, cli) -> None:
    (workdir / "bad.yaml").write_text("extends: pi5-4gb\npi5:\n  eeprom: nvme\n")
    r = cli("profiles", "validate", "bad.yaml")
    assert r.code == 2
    assert r.err.startswith("error: bad.yaml:3:11: pi5.eeprom:"), r.err
    assert "nvme-first" in r.err and r.err.count("\n") == 1 and r.out == ""


# --- the boot partition ------------------------------------------------------------------

def _rootfs(repo, root: Path) -> Path:
    """A tree with the 2712 kernel and raspi-firmware unpacked and the kernel hook run, as
    the package install leaves /boot/firmware, plus rpi-eeprom."""
    unpack(repo, root, "raspi-firmware", f"linux-image-{K2712}", "rpi-eeprom")
    (root / "etc").mkdir(exist_ok=True)
    sh(root / "etc/kernel/postinst.d/z50-raspi-firmware", K2712, f"/boot/vmlinuz-{K2712}",
       env={"DPKG_ROOT": str(root), "DEB_MAINT_PARAMS": "configure"})
    return root


def _fat_files(image: Path) -> set[str]:
    table = sh("sfdisk", "--json", image).stdout
    start = int(table.split('"start":', 1)[1].split(",", 1)[0]) * 512
    return set(sh("mdir", "-b", "-i", f"{image}@@{start}", "::/").stdout.split())


@pytest.mark.parametrize("kind", ["nvme", "sd"])
def test_the_boot_partition_has_the_update_only_for_nvme_and_the_cm5_trees(
        repo, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    need("mkfs.ext4", "mkfs.vfat", "mcopy", "mdir", "sfdisk")
    if os.geteuid() != 0:
        pytest.skip("mkfs.ext4 -d keeps root's owners only as root")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    root = _rootfs(repo, tmp_path / "root")
    layout = disk.RpiLayout(kernel_image="kernel_2712.img", config_txt="[pi5]\n",
                            cmdline="rootwait", boot_size=64 * MiB, compress="zst",
                            eeprom_boot_order="0xf416" if kind == "nvme" else None)
    img = disk.make_image(root, tmp_path / "out", layout, name="t.img", disk_size=None,
                          seed="eeprom-test")
    names = {n.removeprefix("::/") for n in _fat_files(img.raw)}
    assert {*CM5_DTBS, "bcm2712-rpi-5-b.dtb", "kernel_2712.img"} <= names
    assert len(CM5_DTBS) == 4
    assert ({"pieeprom.upd", "pieeprom.sig"} <= names) == (kind == "nvme")
    assert "recovery.bin" not in names and "pieeprom.bin" not in names


def test_a_refused_update_leaves_the_rootfs_and_the_output_untouched(
        repo, tmp_path: Path) -> None:
    root = _rootfs(repo, tmp_path / "root")
    shutil.rmtree(root / "usr/lib/firmware/raspberrypi/bootloader-2712")
    before = sorted(p.name for p in (root / "boot/firmware").iterdir())
    layout = disk.RpiLayout(kernel_image="kernel_2712.img", config_txt="[pi5]\n",
                            cmdline="rootwait", boot_size=64 * MiB, compress="zst",
                            eeprom_boot_order="0xf416")
    with pytest.raises(BuilderError, match="no BCM2712 bootloader image"):
        disk.make_image(root, tmp_path / "out", layout, name="t.img", disk_size=None,
                        seed="eeprom-test")
    assert sorted(p.name for p in (root / "boot/firmware").iterdir()) == before
    assert not (tmp_path / "out/t.img").exists()
