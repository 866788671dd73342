"""The Raspberry Pi stand-ins in tests/fakes/rpi behave like the real things.

Fast (a few seconds), no network. Needs these Debian packages on the host: dpkg, apt,
apt-utils (apt-ftparchive), gnupg + gpgv, dosfstools, mtools, e2fsprogs, fdisk, xz-utils;
device-tree-compiler (fdtget) for one check. A test whose tool is missing is skipped and
says which package to install.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from fakes.rpi import (
    CM5_DTBS,
    DISK_ID,
    KERNEL_DEB_VERSION,
    RaspiosLayout,
    kernel_version,
    make_raspios_image,
    make_repo,
)
from fakes.rpi._eeprom import RELEASES
from fakes.rpi.fake_raspios import CONFIG_TXT, IMAGE_KERNEL_ABI
from host_tools import need, sh

K2712 = kernel_version("2712")
KV8 = kernel_version("v8")






def stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs; continuation lines are joined with newlines."""
    out = []
    for para in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):
    need("dpkg-deb", "apt-ftparchive", "gpg", "xz")
    return make_repo(tmp_path_factory.mktemp("rpi-repo"))


# ------------------------------------------------------------------------- repository


def test_release_is_signed_and_verifies_with_the_keyring(repo, tmp_path: Path) -> None:
    need("gpgv")
    dist = repo.root / "dists" / "bookworm"
    sh("gpgv", "--keyring", repo.keyring, dist / "InRelease")
    sh("gpgv", "--keyring", repo.keyring, dist / "Release.gpg", dist / "Release")
    assert repo.armored_key.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")

    tampered = tmp_path / "InRelease"
    tampered.write_text((dist / "InRelease").read_text().replace("bookworm", "trixie", 1))
    assert sh("gpgv", "--keyring", repo.keyring, tampered, check=False).returncode != 0


def test_release_fields_and_index_hashes(repo) -> None:
    dist = repo.root / "dists" / "bookworm"
    release = stanzas((dist / "Release").read_text())[0]
    assert release["Origin"] == release["Label"] == "Raspberry Pi Foundation"
    assert (release["Suite"], release["Codename"]) == ("stable", "bookworm")
    assert release["Architectures"] == "arm64"
    assert release["Components"] == "main"
    listed = {}
    for line in release["SHA256"].splitlines()[1:]:
        digest, size, name = line.split()
        listed[name] = (digest, int(size))
    for name in ("main/binary-arm64/Packages", "main/binary-arm64/Packages.gz",
                 "main/binary-arm64/Packages.xz"):
        data = (dist / name).read_bytes()
        assert listed[name] == (hashlib.sha256(data).hexdigest(), len(data)), name
    assert repo.url == repo.root.as_uri() + "/"
    assert (repo.suite, repo.components) == ("bookworm", ["main"])


def test_packages_index_has_the_raspberry_pi_packages(repo) -> None:
    index = (repo.root / "dists/bookworm/main/binary-arm64/Packages").read_text()
    assert gzip.decompress(
        (repo.root / "dists/bookworm/main/binary-arm64/Packages.gz").read_bytes()
    ).decode() == index
    pkgs = {p["Package"]: p for p in stanzas(index)}
    assert {n: p["Version"] for n, p in pkgs.items()} == repo.packages
    assert set(pkgs) == {
        "raspberrypi-archive-keyring", "raspi-firmware",
        "linux-image-rpi-2712", f"linux-image-{K2712}",
        "linux-image-rpi-v8", f"linux-image-{KV8}", "rpi-eeprom",
    }
    for p in pkgs.values():
        assert p["Architecture"] in ("arm64", "all")
        deb = repo.root / p["Filename"]
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == p["SHA256"]
    assert pkgs["raspi-firmware"]["Architecture"] == "all"
    assert pkgs["raspi-firmware"]["Version"].startswith("1:1.2024")
    for kver, flavour in ((K2712, "2712"), (KV8, "v8")):
        depends = pkgs[f"linux-image-rpi-{flavour}"]["Depends"]
        assert depends == f"linux-image-{kver} (= {KERNEL_DEB_VERSION})"
    assert KERNEL_DEB_VERSION == "1:6.6.74-1+rpt1" and K2712 == "6.6.74+rpt-rpi-2712"
    assert pkgs[f"linux-image-{K2712}"]["Depends"].startswith("kmod, linux-base")
    assert pkgs[f"linux-image-{K2712}"]["Filename"] == (
        f"pool/main/l/linux/linux-image-{K2712}_6.6.74-1+rpt1_arm64.deb")
    assert pkgs["raspi-firmware"]["Depends"] == "dosfstools, rsync"
    eeprom = pkgs["rpi-eeprom"]
    assert (eeprom["Version"], eeprom["Architecture"]) == ("27.0-1", "all")
    assert eeprom["Depends"] == "raspi-utils, python3, binutils, pciutils, python3-pycryptodome"
    assert eeprom["Filename"] == "pool/main/r/rpi-eeprom/rpi-eeprom_27.0-1_all.deb"


def test_apt_takes_the_repo_only_with_its_key(repo, tmp_path: Path) -> None:
    """apt run the way mmdebstrap runs it (Dir = the new root, signed-by read on the host)."""
    need("apt-get")

    def update(signed_by: Path) -> subprocess.CompletedProcess[str]:
        root = tmp_path / f"apt-{signed_by.stem}"
        for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
                  "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                  "var/lib/dpkg"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "var/lib/dpkg/status").touch()
        (root / "etc/apt/sources.list").write_text(repo.sources_line(signed_by) + "\n")
        conf = root / "apt.conf"
        conf.write_text(
            f'Dir "{root}/";\nDir::State::Status "{root}/var/lib/dpkg/status";\n'
            'APT::Architecture "arm64";\nAPT::Architectures "arm64";\n'
            'Dir::Etc::TrustedParts "/nonexistent";\nDir::Etc::Trusted "/nonexistent";\n'
        )
        env = {"APT_CONFIG": str(conf)}
        proc = sh("apt-get", "update", env=env, check=False)
        if proc.returncode == 0:
            proc = sh("apt-cache", "policy", "linux-image-rpi-2712", env=env)
        return proc

    ok = update(repo.keyring)
    assert f"Candidate: {KERNEL_DEB_VERSION}" in ok.stdout
    # the keyring was read from the host path: nothing of it is inside apt's Dir
    assert not (tmp_path / f"apt-{repo.keyring.stem}" / str(repo.keyring).lstrip("/")).exists()

    other = tmp_path / "other.gpg"
    other.write_bytes(b"")  # an empty keyring: nothing can verify the Release
    bad = update(other)
    assert bad.returncode != 0
    assert "NO_PUBKEY" in bad.stdout + bad.stderr or "not signed" in bad.stdout + bad.stderr


def test_keyring_package_ships_the_signing_key(repo, tmp_path: Path) -> None:
    sh("dpkg-deb", "-x", repo.debs["raspberrypi-archive-keyring"], tmp_path)
    shipped = tmp_path / "usr/share/keyrings/raspberrypi-archive-keyring.gpg"
    assert shipped.read_bytes() == repo.keyring.read_bytes()
    assert (tmp_path / "etc/apt/trusted.gpg.d/raspberrypi-archive-stable.gpg").exists()


# ------------------------------------------------------------------------- kernel + hooks


def dpkg_root(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return sh("dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
              "--force-unsafe-io", *args)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """An empty image tree with a dpkg database and an existing /boot/firmware."""
    if os.geteuid() != 0:
        pytest.skip("dpkg --root needs root")
    need("dpkg", "run-parts")
    root = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log", "boot/firmware"):
        (root / d).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    sh("dpkg", f"--root={root}", "--add-architecture", "arm64")
    (root / "boot/firmware/config.txt").write_text(CONFIG_TXT)
    (root / "boot/firmware/cmdline.txt").write_text("console=tty1 root=PARTUUID=0-02 rootwait\n")
    return root


def test_installing_the_kernel_fills_boot_firmware(repo, target: Path) -> None:
    fw = target / "boot/firmware"
    before = {n: ((fw / n).read_bytes(), (fw / n).stat().st_mtime_ns)
              for n in ("config.txt", "cmdline.txt")}
    debs = [repo.debs[n] for n in ("raspi-firmware", f"linux-image-{K2712}",
                                   "linux-image-rpi-2712", f"linux-image-{KV8}",
                                   "linux-image-rpi-v8")]
    out = dpkg_root(target, "-i", *debs)
    assert "kernel_2712.img" in out.stdout + out.stderr

    assert (fw / "kernel_2712.img").read_bytes() == (target / f"boot/vmlinuz-{K2712}").read_bytes()
    assert (fw / "kernel8.img").read_bytes() == (target / f"boot/vmlinuz-{KV8}").read_bytes()
    for dtb in ("bcm2712-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb", "bcm2711-rpi-4-b.dtb",
                *CM5_DTBS):
        assert (fw / dtb).read_bytes()[:4] == b"\xd0\x0d\xfe\xed", dtb
    assert (fw / "overlays/README").exists()
    assert (fw / "overlays/overlay_map.dtb").exists()
    assert (fw / "overlays/vc4-kms-v3d-pi5.dtbo").exists()
    assert (fw / "start4.elf").exists() and (fw / "bootcode.bin").exists()
    for name, (data, mtime) in before.items():
        assert (fw / name).read_bytes() == data and (fw / name).stat().st_mtime_ns == mtime
    assert not (target / f"lib/modules/{K2712}/.fresh-install").exists()

    # removing the last v8 kernel removes kernel8.img and nothing else
    dpkg_root(target, "-r", "linux-image-rpi-v8", f"linux-image-{KV8}")
    assert not (fw / "kernel8.img").exists()
    assert (fw / "kernel_2712.img").exists() and (fw / "config.txt").read_text() == CONFIG_TXT


def test_kernel_image_and_dtbs_look_real(repo, tmp_path: Path) -> None:
    sh("dpkg-deb", "-x", repo.debs[f"linux-image-{K2712}"], tmp_path)
    image = gzip.decompress((tmp_path / f"boot/vmlinuz-{K2712}").read_bytes())
    assert image[56:60] == b"ARM\x64"  # arm64 Image header magic
    flags = struct.unpack_from("<Q", image, 24)[0]
    assert (flags >> 1) & 3 == 2  # 16K pages, like the real 2712 kernel
    assert b"FAKE KERNEL" in image[:256]
    assert 200_000 < (tmp_path / f"boot/vmlinuz-{K2712}").stat().st_size < 600_000
    assert (tmp_path / f"lib/modules/{K2712}/modules.order").exists()
    assert "CONFIG_ARM64_16K_PAGES=y" in (tmp_path / f"boot/config-{K2712}").read_text()
    need("fdtget")
    dtb = tmp_path / f"usr/lib/linux-image-{K2712}/broadcom/bcm2712-rpi-5-b.dtb"
    assert sh("fdtget", dtb, "/", "compatible").stdout.split() == [
        "raspberrypi,5-model-b", "brcm,bcm2712"]


def test_rpi_eeprom_is_laid_out_like_the_real_package(repo, tmp_path: Path) -> None:
    sh("dpkg-deb", "-x", repo.debs["rpi-eeprom"], tmp_path)
    fw = tmp_path / "usr/lib/firmware/raspberrypi"
    for chip, size in (("2712", 2 << 20), ("2711", 512 << 10)):
        name, _, conf_at, _, bootconf = RELEASES[chip]
        for release in ("default", "latest"):
            image = fw / f"bootloader-{chip}/{release}/{name}"
            assert image.stat().st_size == size
            assert (fw / f"bootloader-{chip}/{release}/recovery.bin").is_file()
        assert os.readlink(fw / f"bootloader-{chip}/critical") == "default"
        assert os.readlink(fw / f"bootloader-{chip}/stable") == "latest"
        # the package's own reader finds bootconf.txt where the real image has it
        data = (fw / f"bootloader-{chip}/default/{name}").read_bytes()
        assert data[conf_at:conf_at + 20] == b"\x55\xaa\xf1\x1f" + struct.pack(
            ">I", len(bootconf) + 16) + b"bootconf.txt"
        assert b"BUILD_TIMESTAMP=" in data and b"FAKE BOOTLOADER" in data
        assert data[-8:] == b"\xff" * 8  # no update timestamp, as shipped
        out = sh("python3", tmp_path / "usr/bin/rpi-eeprom-config", image).stdout
        assert out == bootconf
    assert "BOOT_ORDER=0xf461" in RELEASES["2712"][4]  # Pi 5 factory order: SD, NVMe, USB
    assert (tmp_path / "etc/default/rpi-eeprom-update").read_text() == (
        'FIRMWARE_RELEASE_STATUS="default"\n')
    for tool in ("rpi-eeprom-config", "rpi-eeprom-digest", "rpi-eeprom-update"):
        assert os.access(tmp_path / f"usr/bin/{tool}", os.X_OK)


def test_rpi_eeprom_tools_fail_where_the_real_ones_do(repo, tmp_path: Path) -> None:
    sh("dpkg-deb", "-x", repo.debs["rpi-eeprom"], tmp_path)
    config, digest = tmp_path / "usr/bin/rpi-eeprom-config", tmp_path / "usr/bin/rpi-eeprom-digest"
    image = tmp_path / "usr/lib/firmware/raspberrypi/bootloader-2712/default" / RELEASES[
        "2712"][0]
    short = tmp_path / "short.bin"
    short.write_bytes(image.read_bytes()[:1000])
    r = sh("python3", config, short, check=False)
    assert (r.returncode, r.stderr) == (
        1, f"ERROR: {short}: Expected size 1000 bytes actual size 1000 bytes\n")
    big = tmp_path / "big.conf"
    big.write_text("A=1\n" * 1100)
    r = sh("python3", config, "--config", big, "--out", tmp_path / "x", image, check=False)
    assert r.returncode == 1 and "is too large (4400 bytes). The maximum size is 4076" in r.stderr
    r = sh("python3", config, "--config", tmp_path / "nope", "--out", tmp_path / "x", image,
           check=False)
    assert r.returncode == 1 and "config file" in r.stderr and "not found" in r.stderr
    r = sh("python3", config, "--edit", check=False)
    assert r.returncode == 1 and "must run on a Raspberry Pi 4 or Raspberry Pi 5" in r.stderr
    r = sh("sh", digest, "-i", tmp_path / "nope", "-o", tmp_path / "x.sig", check=False)
    assert (r.returncode, r.stderr) == (1, f'Source image "{tmp_path / "nope"}" not found\n')
    sh("sh", digest, "-i", image, "-o", tmp_path / "x.sig", env={"SOURCE_DATE_EPOCH": "7"})
    assert (tmp_path / "x.sig").read_text() == (
        f"{hashlib.sha256(image.read_bytes()).hexdigest()}\nts: 7\n")


def extract(repo, root: Path, *names: str) -> None:
    for name in names:
        sh("dpkg-deb", "-x", repo.debs[name], root)


def run_hook(root: Path, kind: str, *args: str, params: str = "configure"):
    hook = {"kernel": "etc/kernel/postinst.d", "initramfs": "etc/initramfs/post-update.d"}[kind]
    return sh(root / hook / "z50-raspi-firmware", *args, check=False,
              env={"DPKG_ROOT": str(root), "DEB_MAINT_PARAMS": params})


def test_hook_skips_non_raspberry_pi_kernels(repo, tmp_path: Path) -> None:
    extract(repo, tmp_path, "raspi-firmware")
    (tmp_path / "boot").mkdir(exist_ok=True)
    (tmp_path / "boot/vmlinuz-6.1.0-28-arm64").write_bytes(b"debian kernel")
    proc = run_hook(tmp_path, "kernel", "6.1.0-28-arm64", "/boot/vmlinuz-6.1.0-28-arm64")
    assert proc.returncode == 0
    assert "Unsupported kernel version (6.1.0-28-arm64) - skipping setup" in proc.stderr
    assert [p.name for p in (tmp_path / "boot/firmware").iterdir()] == ["overlays"]
    proc = run_hook(tmp_path, "initramfs", "6.1.0-28-arm64", "/boot/initrd.img-6.1.0-28-arm64",
                    params="")
    assert "Unsupported initramfs version (6.1.0-28-arm64)" in proc.stderr


def test_hooks_copy_only_the_newest_kernel_and_the_initramfs(repo, tmp_path: Path) -> None:
    extract(repo, tmp_path, "raspi-firmware", f"linux-image-{K2712}")
    fw = tmp_path / "boot/firmware"
    # outside configure/remove (e.g. run by hand without DEB_MAINT_PARAMS): nothing happens
    assert run_hook(tmp_path, "kernel", K2712, f"/boot/vmlinuz-{K2712}", params="").returncode == 0
    assert not (fw / "kernel_2712.img").exists()

    newer = "6.6.80+rpt-rpi-2712"
    (tmp_path / f"boot/vmlinuz-{newer}").write_bytes(b"newer")
    assert run_hook(tmp_path, "kernel", K2712, f"/boot/vmlinuz-{K2712}").returncode == 0
    assert not (fw / "kernel_2712.img").exists()  # 6.6.74 is not the newest 2712 kernel
    (tmp_path / f"boot/vmlinuz-{newer}").unlink()
    assert run_hook(tmp_path, "kernel", K2712, f"/boot/vmlinuz-{K2712}").returncode == 0
    assert (fw / "kernel_2712.img").exists()

    (tmp_path / f"boot/initrd.img-{K2712}").write_bytes(b"initrd")
    proc = run_hook(tmp_path, "initramfs", K2712, f"/boot/initrd.img-{K2712}", params="")
    assert proc.returncode == 0, proc.stderr
    assert (fw / "initramfs_2712").read_bytes() == b"initrd"
    assert not (fw / "config.txt").exists() and not (fw / "cmdline.txt").exists()


# ------------------------------------------------------------------------- OS image


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk")
    tmp = tmp_path_factory.mktemp("raspios")
    tar_path = tmp / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        def add(name: str, data: bytes | None = None, mode: int = 0o755, link: str = "") -> None:
            info = tarfile.TarInfo(f"./{name}")
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            elif data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size, mode = len(data), 0o644
            info.mode = mode
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for d in ("etc", "usr", "usr/bin", "usr/lib", "var", "root", "tmp", "dev"):
            add(d)
        add("bin", link="usr/bin")
        add("lib", link="usr/lib")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add("etc/os-release", b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    return make_raspios_image(tar_path, tmp / "out", root_margin_mib=8)


def test_image_has_the_raspberry_pi_os_partition_layout(image: Path) -> None:
    assert image.name == "2024-11-19-raspios-bookworm-arm64-lite.img.xz"
    raw = image.with_suffix("")
    table = json.loads(sh("sfdisk", "--json", raw).stdout)["partitiontable"]
    layout = RaspiosLayout()
    assert table["label"] == "dos" and table["id"] == "0x8a438930"
    p1, p2 = table["partitions"]
    assert (p1["start"], p1["size"], p1["type"]) == (8192, 1048576, "c")
    assert (p2["start"], p2["type"]) == (layout.root_start, "83") == (1056768, "83")
    assert (p2["start"] + p2["size"]) * 512 == raw.stat().st_size
    with open(raw, "rb") as f:
        f.seek(440)
        assert struct.unpack("<I", f.read(4))[0] == DISK_ID
        f.seek(510)
        assert f.read(2) == b"\x55\xaa"


def test_bootfs_can_be_read_with_mtools(image: Path) -> None:
    raw = image.with_suffix("")
    fat = f"{raw}@@{8192 * 512}"
    assert sh("mtype", "-i", fat, "::config.txt").stdout == CONFIG_TXT
    cmdline = sh("mtype", "-i", fat, "::cmdline.txt").stdout
    with open(raw, "rb") as f:
        f.seek(440)
        disk_id = f.read(4)[::-1].hex()
    assert f"root=PARTUUID={disk_id}-02 " in cmdline
    assert cmdline.startswith("console=serial0,115200 console=tty1 root=PARTUUID=")
    assert cmdline.rstrip().endswith("rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot")
    listing = [*sh("mdir", "-i", fat, "-b", "::/").stdout.split(),
               *sh("mdir", "-i", fat, "-b", "::/overlays").stdout.split()]
    names = {p.removeprefix("::/").rstrip("/") for p in listing}
    for want in ("kernel_2712.img", "kernel8.img", "initramfs_2712", "initramfs8",
                 "bcm2712-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb", "issue.txt", "overlays",
                 "overlays/README", "overlays/vc4-kms-v3d-pi5.dtbo", "overlays/overlay_map.dtb",
                 "start4.elf", "bootcode.bin"):
        assert want in names, want
    assert "is bootfs" in sh("mdir", "-i", fat, "::/").stdout
    assert sh("mtype", "-i", fat, "::issue.txt").stdout.startswith(
        "Raspberry Pi reference 2024-11-19\n")


def test_rootfs_has_the_tarball_and_the_raspberry_pi_os_markers(image: Path) -> None:
    need("debugfs", "e2fsck", "dumpe2fs")
    part = f"{image.with_suffix('')}?offset={1056768 * 512}"
    sh("e2fsck", "-fn", part)

    def cat(path: str) -> str:
        return sh("debugfs", "-R", f"cat {path}", part).stdout

    assert cat("/etc/passwd") == "root:x:0:0:root:/root:/bin/sh\n"  # from the tarball
    assert cat("/etc/rpi-issue").startswith("Raspberry Pi reference 2024-11-19\n")
    fstab = cat("/etc/fstab")
    assert "PARTUUID=8a438930-01  /boot/firmware  vfat" in fstab
    assert "PARTUUID=8a438930-02  /               ext4" in fstab
    stat = sh("debugfs", "-R", "stat /boot/firmware", part).stdout
    assert "Type: directory" in stat and "User:     0   Group:     0" in stat
    version = f"{IMAGE_KERNEL_ABI}-rpi-2712"
    modules = sh("debugfs", "-R", f"ls -p /usr/lib/modules/{version}", part).stdout
    assert "modules.order" in modules  # /lib is a symlink to usr/lib in the tarball
    assert 'Fast link dest: "usr/lib"' in sh("debugfs", "-R", "stat /lib", part).stdout
    dev = [line for line in sh("debugfs", "-R", "ls -p /dev", part).stdout.splitlines() if line]
    assert len(dev) == 2  # only . and ..: /dev is empty, as on the real image
    sb = sh("dumpe2fs", "-h", part).stdout
    assert "Filesystem volume name:   rootfs" in sb and "Block size:               4096" in sb


def test_compressed_image_is_a_standard_xz_of_the_image(image: Path) -> None:
    need("xz")
    raw = image.with_suffix("")
    robot = sh("xz", "--robot", "--list", image).stdout.splitlines()
    totals = next(line for line in robot if line.startswith("totals")).split("\t")
    assert int(totals[4]) == raw.stat().st_size
    with lzma.open(image) as xz, open(raw, "rb") as f:
        for _ in range(12):  # the MBR and the FAT's start (decompressing it all takes ~7 s)
            assert xz.read(1 << 20) == f.read(1 << 20)
