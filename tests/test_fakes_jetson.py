"""The Jetson fakes (tests/fakes/jetson) against the real tools' interfaces: each one
rejects a wrong invocation the way the real one does and produces the real outputs for a
right one. These keep the fakes honest; the builder's own tests use them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

import pytest
from fakes.jetson.fake_l4t import (
    BOARD_CONFIGS,
    deb_version,
    make_bsp,
    make_sample_rootfs,
    nv_tegra_release_line,
)
from fakes.jetson.fake_sysfs import make_usb_sysfs
from fakes.jetson.fake_trtllm import install_fake_trtllm

RELEASE = "36.4.3"
INITRD = "./tools/kernel_flash/l4t_initrd_flash.sh"
NANO_NVME = ["--external-device", "nvme0n1p1", "-c", "tools/kernel_flash/flash_l4t_t234_nvme.xml",
             "-p", "-c bootloader/generic/cfg/flash_t234_qspi.xml", "--network", "usb0"]
NANO_IDS = {"BOARDID": "3767", "BOARDSKU": "0003", "FAB": "300"}
QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
            "tie_word_embeddings": True}


def run(cmd: list[str], cwd: Path, env: dict[str, str], *, uid: int | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=(lambda: os.setuid(uid))
                          if uid is not None else None)


def out(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout + p.stderr


# ------------------------------------------------------------------ fixtures

# What the real L4T scripts need on the build host (tools/l4t_flash_prerequisites.sh installs
# them), and so do their fakes: tools looked up on PATH, and qemu at its fixed path.
HOST_TOOLS = ("sshpass", "abootimg", "xmllint", "exportfs", "dpkg", "lbzip2", "xmlstarlet",
              "zstd")  # the last two: R38 and later
HOST_FILES = ("/usr/bin/qemu-aarch64-static", "/usr/bin/xmllint")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def missing_host_tools() -> list[str]:
    missing = [t for t in HOST_TOOLS if not shutil.which(t, path=HOST_PATH)]
    if shutil.which("dpkg", path=HOST_PATH) and subprocess.run(
            ["dpkg", "-s", "qemu-user-static"], capture_output=True).returncode:
        missing.append("qemu-user-static (dpkg -s)")
    return missing + [f for f in HOST_FILES if not Path(f).is_file()]


def host_env(home: Path) -> dict[str, str]:
    """The build host's PATH (the real sshpass, abootimg, xmllint, exportfs, dpkg, lbzip2,
    xmlstarlet, zstd)
    with this python3 first, USER=root as sudo sets."""
    hostbin = home / "hostbin"
    hostbin.mkdir()
    (hostbin / "python3").symlink_to(sys.executable)
    return {"PATH": f"{hostbin}:{HOST_PATH}", "USER": "root", "HOME": str(home),
            "LANG": "C.UTF-8"}


def tiny_rootfs(root: Path) -> None:
    """The few files of a Debian rootfs the tools look at, owned by root."""
    for d in ("etc/skel", "usr/bin", "var/lib/dpkg", "etc/systemd/system", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:"
                      "/usr/sbin/nologin\n",
        "etc/shadow": "root:*:19700:0:99999:7:::\nnobody:*:19700:0:99999:7:::\n",
        "etc/group": "root:x:0:\nadm:x:4:\nsudo:x:27:\naudio:x:29:\nvideo:x:44:\n"
                     "render:x:105:\nnogroup:x:65534:\n",
        "etc/gshadow": "root:*::\nadm:*::\nsudo:*::\naudio:*::\nvideo:*::\nrender:!::\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n",
        "etc/hostname": "debian\n",
        "etc/skel/.bashrc": "# ~/.bashrc\n",
        "usr/bin/dpkg": "",
        "var/lib/dpkg/status": "Package: base-files\nStatus: install ok installed\n"
                               "Version: 12.4+deb12u8\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    (root / "etc/systemd/system/default.target").symlink_to(
        "/lib/systemd/system/graphical.target")


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Linux_for_Tegra trees made once: as unpacked (with a tiny rootfs), after
    apply_binaries.sh, and after generating an Orin Nano NVMe flash package."""
    if os.geteuid() != 0:
        pytest.skip("the L4T tools require root, and so do their fakes")
    if missing_host_tools():
        pytest.skip("the L4T tools need these on the host, and so do their fakes: "
                    + ", ".join(missing_host_tools()))
    base = tmp_path_factory.mktemp("l4t")
    env = host_env(base)
    bsp = make_bsp(base, RELEASE)
    with tarfile.open(bsp) as tar:
        tar.extractall(base / "fresh", numeric_owner=True, filter="fully_trusted")
    fresh = base / "fresh/Linux_for_Tegra"
    tiny_rootfs(fresh / "rootfs")
    applied = base / "applied/Linux_for_Tegra"
    shutil.copytree(fresh, applied, symlinks=True)
    p = run(["./apply_binaries.sh"], applied, env)
    assert p.returncode == 0, out(p)
    generated = base / "generated/Linux_for_Tegra"
    shutil.copytree(applied, generated, symlinks=True)
    p = run([INITRD, *NANO_NVME, "--no-flash", "jetson-orin-nano-devkit", "internal"],
            generated, {**env, **NANO_IDS})
    assert p.returncode == 0, out(p)
    return {"bsp": bsp, "fresh": fresh, "applied": applied, "generated": generated}


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory other users can enter (tmp_path cannot), for the non-root runs."""
    path = Path(tempfile.mkdtemp(prefix="jetson-fakes-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def env(work: Path) -> dict[str, str]:
    return host_env(work)


def copy(trees: dict[str, Path], which: str, work: Path) -> Path:
    return Path(shutil.copytree(trees[which], work / "Linux_for_Tegra", symlinks=True))


@pytest.fixture
def l4t(trees: dict[str, Path], work: Path) -> Path:
    return copy(trees, "fresh", work)


@pytest.fixture
def applied(trees: dict[str, Path], work: Path) -> Path:
    return copy(trees, "applied", work)


@pytest.fixture
def generated(trees: dict[str, Path], work: Path) -> Path:
    return copy(trees, "generated", work)


def load_tool(name: str) -> ModuleType:
    path = Path(__file__).parent / "fakes/jetson/tools" / f"{name}.py"
    spec = spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ the BSP and rootfs

def test_bsp_tarball_is_laid_out_like_nvidias(trees: dict[str, Path]) -> None:
    bsp_tarball = trees["bsp"]
    assert bsp_tarball.name == f"Jetson_Linux_R{RELEASE}_aarch64.tbz2"
    with tarfile.open(bsp_tarball, "r:bz2") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert all(n == "Linux_for_Tegra" or n.startswith("Linux_for_Tegra/") for n in members)
    for rel in ("apply_binaries.sh", "flash.sh", "tools/l4t_create_default_user.sh",
                "tools/kernel_flash/l4t_initrd_flash.sh",
                "tools/kernel_flash/flash_l4t_t234_nvme.xml",
                "tools/kernel_flash/flash_l4t_t234_nvme_rootfs_ab.xml",
                "bootloader/generic/cfg/flash_t234_qspi.xml", "nv_tegra/nv_tegra_release"):
        m = members[f"Linux_for_Tegra/{rel}"]
        assert m.isfile(), rel
        if rel.endswith(".sh"):
            assert m.mode & 0o111, rel
    assert members["Linux_for_Tegra/rootfs"].isdir()
    for board, target in BOARD_CONFIGS.items():
        link = members[f"Linux_for_Tegra/{board}.conf"]
        assert link.issym() and link.linkname == target
        assert members[f"Linux_for_Tegra/{target}"].isfile()


def test_bsp_release_line_has_the_devices_format(l4t: Path) -> None:
    first = (l4t / "nv_tegra/nv_tegra_release").read_text().splitlines()[0]
    assert first == nv_tegra_release_line(RELEASE)
    assert re.fullmatch(r"# R36 \(release\), REVISION: 4\.3, GCID: \d+, BOARD: generic, "
                        r"EABI: aarch64, DATE: \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d UTC 2025",
                        first)
    with pytest.raises(ValueError, match="unknown L4T release"):
        make_bsp(l4t.parent / "x", "35.9.9")


def test_sample_rootfs_is_repacked_with_numeric_owners(tmp_path: Path) -> None:
    src = tmp_path / "rootfs.tar"
    with tarfile.open(src, "w") as tar:
        for name, uid, data in (("./etc/hostname", 0, b"debian\n"), ("./var/mail/x", 8, b"")):
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.size = uid, uid, len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./bin")
        link.type, link.linkname = tarfile.SYMTYPE, "usr/bin"
        tar.addfile(link)
    got = make_sample_rootfs(src, tmp_path / "out", RELEASE)
    assert got.name == f"Tegra_Linux_Sample-Root-Filesystem_R{RELEASE}_aarch64.tbz2"
    with tarfile.open(got, "r:bz2") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("./etc/hostname").read() == b"debian\n"  # type: ignore[union-attr]
    assert (members["./var/mail/x"].uid, members["./etc/hostname"].uid) == (8, 0)
    assert members["./bin"].issym() and members["./bin"].linkname == "usr/bin"


@pytest.mark.parametrize(("release", "line"), [
    ("39.2.0", "# R39 (release), REVISION: 2.0, GCID: 45755727, BOARD: generic, EABI: aarch64, "
     "DATE: Mon Jun  1 09:28:48 PM UTC 2026"),
    ("39.2.1", "# R39 (release), REVISION: 2.1, GCID: 46758480, BOARD: generic, EABI: aarch64, "
     "DATE: Fri Aug  7 05:54:22 AM UTC 2026"),
])
def test_an_r39_bsp_is_jetpack_72s(tmp_path: Path, release: str, line: str) -> None:
    """JetPack 7.2's BSP prints the line its boards print (public notes quote it), lists
    NVIDIA's common and som repositories for r39.2, keeps the Super devkit config, and the
    builder reads its release from it (and refuses it for another)."""
    from builder.errors import BuilderError
    from builder.targets.jetson_orin.l4t import bsp_release, unpack_bsp

    bsp = make_bsp(tmp_path, release)
    assert nv_tegra_release_line(release) == line
    l4t = unpack_bsp(bsp, tmp_path, release, None)
    assert bsp_release(l4t) == release
    assert (l4t / "nv_tegra/nv_tegra_release").read_text().splitlines()[0] == line
    assert "BSP_BRANCH=39\nBSP_MAJOR=2\n" in (l4t / "nv_tegra/bsp_version").read_text()
    with tarfile.open(l4t / "nv_tegra/nvidia_drivers.tbz2") as tar:
        sources = tar.extractfile("etc/apt/sources.list.d/nvidia-l4t-apt-source.list")
        assert sources is not None
        assert sources.read().decode() == (
            "deb https://repo.download.nvidia.com/jetson/common r39.2 main\n"
            "deb https://repo.download.nvidia.com/jetson/som r39.2 main\n")
    debs = sorted(p.name for p in (l4t / "nv_tegra/l4t_deb_packages").glob("*.deb"))
    assert f"nvidia-l4t-core_{deb_version(release)}_arm64.deb" in debs
    assert "nvidia-l4t-cuda-nvgpu" in " ".join(debs)
    assert os.readlink(l4t / "jetson-orin-nano-devkit-super.conf") == \
        "p3768-0000-p3767-0000-super.conf"
    (tmp_path / "again").mkdir()
    with pytest.raises(BuilderError, match=rf"^Jetson_Linux_R{release}_aarch64.tbz2 is Jetson "
                       rf"Linux {release}, the profile asks for 36.4.3 \(jetson.l4t_release\)$"):
        unpack_bsp(bsp, tmp_path / "again", "36.4.3", None)
    with tarfile.open(tmp_path / "tree.tar", "w"):
        pass
    assert make_sample_rootfs(tmp_path / "tree.tar", tmp_path / "r", release).name == (
        f"Tegra_Linux_Sample-Root-Filesystem_R{release}_aarch64.tbz2")


# ------------------------------------------------------------------ apply_binaries.sh

def test_apply_binaries_rejects_bad_command_lines(l4t: Path, env: dict[str, str]) -> None:
    for args, rc, text in [
        (["--foo"], 1, "apply_binaries.sh: unrecognized option '--foo'"),
        (["-t"], 1, "option requires an argument -- 't'"),  # the real getopt string: "t:"
        (["extra"], 1, "Use: apply_binaries.sh"),
        (["-t", "x", "--dgpu"], 1,
         "Error: --dgpu option is not supported with tar installation"),
    ]:
        p = run(["./apply_binaries.sh", *args], l4t, env)
        assert p.returncode == rc and text in out(p), (args, out(p))
        assert not (l4t / "rootfs/etc/nv_tegra_release").exists()


def test_apply_binaries_needs_root_qemu_and_a_root_owned_rootfs(l4t: Path, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    noqemu = tmp_path / "noqemu"
    noqemu.mkdir()
    (noqemu / "python3").symlink_to(sys.executable)
    p = run(["./apply_binaries.sh"], l4t, {**env, "PATH": str(noqemu)})
    assert p.returncode == 1
    assert "The required qemu-user-static is not installed" in p.stdout
    p = run(["./apply_binaries.sh"], l4t, env, uid=65534)
    assert p.returncode == 1 and "This script requires root privilege" in p.stdout
    os.chown(l4t / "rootfs/etc/passwd", 1000, 1000)
    p = run(["./apply_binaries.sh"], l4t, env)
    assert p.returncode == 1 and "||||||||||||||||||||||| ERROR |||||||||||||||||||||||" in p.stdout
    (l4t / "rootfs/etc/passwd").unlink()
    p = run(["./apply_binaries.sh", "-r", str(l4t / "rootfs")], l4t, env)
    assert p.returncode == 1 and f"   {l4t / 'rootfs'}" in p.stdout


def test_apply_binaries_needs_a_runnable_rootfs(l4t: Path, env: dict[str, str]) -> None:
    (l4t / "rootfs/usr/bin/dpkg").unlink()
    p = run(["./apply_binaries.sh"], l4t, env)
    assert p.returncode == 127 and "chroot: failed to run command 'dpkg'" in p.stderr


def test_apply_binaries_installs_the_nvidia_userspace(applied: Path) -> None:
    root = applied / "rootfs"
    release = (root / "etc/nv_tegra_release").read_text().splitlines()
    assert release[0] == nv_tegra_release_line(RELEASE)
    assert (root / "etc/ld.so.conf.d/nvidia-tegra.conf").read_text() == \
        "/usr/lib/aarch64-linux-gnu/nvidia\n"
    libs = root / "usr/lib/aarch64-linux-gnu/nvidia"
    assert b"FAKE" in (libs / "libnvrm_gpu.so").read_bytes()
    assert (libs / "libcuda.so").resolve() == (libs / "libcuda.so.1.1").resolve()
    assert (root / "etc/nv").is_dir()
    assert (root / "boot/extlinux/extlinux.conf").is_file()
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: base-files" in status
    assert "Package: nvidia-l4t-core\nStatus: install ok installed" in status
    assert "Package: nvidia-l4t-dgpu-config" not in status  # skipped, as nv-apply-debs does


def test_apply_binaries_target_overlay(l4t: Path, env: dict[str, str]) -> None:
    p = run(["./apply_binaries.sh", "--target-overlay"], l4t, env)
    assert p.returncode == 0, out(p)
    assert p.stdout.splitlines()[-1] == "Success!"
    assert "Extracting the NVIDIA user space components to" in p.stdout
    assert (l4t / "rootfs/lib/modules/5.15.148-tegra/updates/nvgpu.ko").is_file()


# ------------------------------------------------------------------ l4t_create_default_user.sh

def test_create_default_user_rejects(applied: Path, env: dict[str, str]) -> None:
    before = (applied / "rootfs/etc/passwd").read_text()
    for args, rc, text in [
        (["-u", "edge", "-p", "pw"], 255, "--accept-license"),  # whiptail without a terminal
        (["--bogus"], 1, "ERROR: Invalid parameter. Exiting..."),
        (["-u"], 1, "Usage:"),
    ]:
        p = run(["./tools/l4t_create_default_user.sh", *args], applied, env)
        assert p.returncode == rc and text in out(p), (args, out(p))
        assert (applied / "rootfs/etc/passwd").read_text() == before


def test_create_default_user_checks_like_the_real_one(l4t: Path, env: dict[str, str]) -> None:
    cmd = ["./tools/l4t_create_default_user.sh", "-u", "edge", "-p", "pw", "--accept-license"]
    p = run(cmd, l4t, env)  # apply_binaries.sh has not installed the EULA yet
    assert p.returncode == 1
    assert "ERROR: Cannot find the Tegra software license agreement" in p.stdout
    p = run(cmd, l4t, env, uid=65534)
    assert p.returncode == 1 and "ERROR: please run as sudo or root user" in p.stderr
    assert run(["./apply_binaries.sh"], l4t, env).returncode == 0
    group = l4t / "rootfs/etc/group"
    group.write_text(group.read_text().replace("render:x:105:\n", ""))
    p = run(cmd, l4t, env)
    assert p.returncode == 6 and "useradd: group 'render' does not exist" in p.stderr


def test_create_default_user_adds_the_user(applied: Path, env: dict[str, str]) -> None:
    p = run(["./tools/l4t_create_default_user.sh", "-u", "edge", "-p", "s3cret", "-a",
             "-n", "orin-17", "--accept-license"], applied, env)
    assert p.returncode == 0, out(p)
    assert "Creating: Username - edge, Password - s3cret, Autologin - true" in p.stdout
    root = applied / "rootfs"
    assert "edge:x:1000:1000::/home/edge:/bin/bash" in (root / "etc/passwd").read_text()
    groups = {line.split(":")[0]: line.split(":")[3]
              for line in (root / "etc/group").read_text().splitlines()}
    for g in ("sudo", "video", "audio", "adm", "render", "weston-launch"):
        assert "edge" in groups[g].split(","), g
    assert groups["edge"] == ""
    hashed = next(line for line in (root / "etc/shadow").read_text().splitlines()
                  if line.startswith("edge:")).split(":")[1]
    salt = hashed.split("$")[2]
    if shutil.which("openssl"):
        want = subprocess.run(["openssl", "passwd", "-1", "-salt", salt, "s3cret"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert hashed == want
    assert load_tool("l4t_create_default_user").md5_crypt("password", "saltsalt") == \
        "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"  # openssl passwd -1 -salt saltsalt password
    home = root / "home/edge"
    assert (home / ".bashrc").is_file() and home.stat().st_uid == 1000
    assert not (root / "etc/systemd/system/default.target").is_symlink()
    assert (root / "etc/nv/nvautoconfig").is_file()
    assert (root / "etc/hostname").read_text() == "orin-17\n"
    assert "127.0.1.1 orin-17" in (root / "etc/hosts").read_text().splitlines()
    assert "--autologin edge" in (
        root / "etc/systemd/system/serial-getty@ttyTCU0.service.d/autologin.conf").read_text()
    again = ["./tools/l4t_create_default_user.sh", "-u", "edge", "--accept-license"]
    p = run(again, applied, env)  # the home exists: the real script ignores useradd failing
    assert p.returncode == 0 and "useradd: user 'edge' already exists" in p.stderr
    shutil.rmtree(home)
    p = run(again, applied, env)
    assert p.returncode == 9 and "useradd: user 'edge' already exists" in p.stderr


def test_create_default_user_without_p_makes_a_weak_password_and_prints_it(
        applied: Path, env: dict[str, str]) -> None:
    """As R36.2's script does (lines 70-73, 164-166, 220): the build's second through
    `date +%s | sha256sum | base64 | head -c 8`, printed in clear, and that is the
    account's password. (Long option names work too, --hostname included.)"""
    tool = load_tool("l4t_create_default_user")
    before = int(time.time())
    p = run(["./tools/l4t_create_default_user.sh", "--username", "edge", "--hostname",
             "orin-18", "--accept-license"], applied, env)
    after = int(time.time())
    assert p.returncode == 0, out(p)
    shown = re.search(r"Creating: Username - edge, Password - (\S+), Autologin - false",
                      p.stdout).group(1)
    assert shown in {tool.time_password(t) for t in range(before, after + 1)}
    root = applied / "rootfs"
    hashed = next(line for line in (root / "etc/shadow").read_text().splitlines()
                  if line.startswith("edge:")).split(":")[1]
    assert hashed == tool.md5_crypt(shown, hashed.split("$")[2])
    assert (root / "etc/hostname").read_text() == "orin-18\n"
    assert "Creating: Hostname - orin-18" in p.stdout
    # the pipeline itself, where the host has it, for one second
    if shutil.which("sha256sum") and shutil.which("base64"):
        real = subprocess.run("printf '%s\\n' 1700000000 | sha256sum | base64 | head -c 8",
                              shell=True, capture_output=True, text=True, check=True).stdout
        assert tool.time_password(1700000000) == real


# ------------------------------------------------------------------ l4t_initrd_flash.sh

def test_initrd_flash_rejects(applied: Path, env: dict[str, str]) -> None:
    for args, extra_env, text in [
        (["-x", "jetson-orin-nano-devkit", "internal"], {}, "illegal option -- x"),
        (["--external-device=nvme0n1", "jetson-orin-nano-devkit", "internal"], {}, "Usage:"),
        (["--no-flash", "jetson-orin-nano-devkit", "internal"], {"USER": ""},
         "l4t_create_images_for_kernel_flash.sh requires root privilege"),
        (["--no-flash", "jetson-foo", "internal"], NANO_IDS,
         "Error: Invalid target board - jetson-foo."),
        (["--no-flash", "jetson-orin-nano-devkit", "usb0"], NANO_IDS,
         "Error: Invalid target rootdev(usb0)."),
        (["--external-device", "nvme0n1p1", "--no-flash", "jetson-orin-nano-devkit", "internal"],
         NANO_IDS, "Flashing external device requires -c option"),
        (["--external-device", "hda1", "-c", "tools/kernel_flash/flash_l4t_t234_nvme.xml",
          "--no-flash", "jetson-orin-nano-devkit", "internal"], NANO_IDS,
         "hda1 is not a supported external storage device"),
        (["--external-device", "nvme0n1p1", "-c", "missing.xml", "--no-flash",
          "jetson-orin-nano-devkit", "internal"], NANO_IDS, "Error: missing cfgfile ("),
        (["-p", "-c bootloader/generic/cfg/missing.xml", "--no-flash",
          "jetson-orin-nano-devkit", "internal"], NANO_IDS, "Error: missing cfgfile ("),
        ([*NANO_NVME, "--no-flash", "jetson-orin-nano-devkit", "internal"], {},
         "Error: Unrecognized module SKU "),
        (["--no-flash", "jetson-agx-orin-devkit", "internal"],
         {"BOARDID": "3701", "BOARDSKU": "0008", "FAB": "500"}, "Unrecognized module SKU 0008"),
    ]:
        p = run([INITRD, *args], applied, {**env, **extra_env})
        assert p.returncode == 1 and text in out(p), (args, out(p))
        assert not (applied / "tools/kernel_flash/images/internal/flash.idx").exists()


def test_initrd_flash_needs_root_the_bsp_dir_and_an_applied_rootfs(
        l4t: Path, env: dict[str, str]) -> None:
    args = [*NANO_NVME, "--no-flash", "jetson-orin-nano-devkit", "internal"]
    e = {**env, **NANO_IDS}
    p = run([INITRD, *args], l4t, e, uid=65534)
    assert p.returncode == 1 and "/etc/udev/rules.d/99-l4t-host.rules" in p.stderr
    p = run([str(l4t / INITRD), *args], l4t.parent, e)  # flash.sh reads ./<board>.conf
    assert p.returncode == 1 and "Invalid target board - jetson-orin-nano-devkit." in p.stdout
    p = run([INITRD, *args], l4t, e)  # apply_binaries.sh has not run
    assert p.returncode == 1
    assert "rootfs/boot/extlinux/extlinux.conf is not found, exiting..." in p.stdout


def test_initrd_flash_no_flash_and_flash_only_together_do_nothing(
        applied: Path, env: dict[str, str]) -> None:
    p = run([INITRD, "--no-flash", "--flash-only", *NANO_NVME, "jetson-orin-nano-devkit",
             "internal"], applied, {**env, **NANO_IDS})
    assert p.returncode == 0
    assert p.stdout.splitlines() == [
        "Put device in recovery mode, run with option --flash-only to flash device."]
    assert not (applied / "tools/kernel_flash/images").exists()


def test_initrd_flash_generates_the_flash_package(applied: Path, env: dict[str, str]) -> None:
    p = run([INITRD, *NANO_NVME, "--no-flash", "jetson-orin-nano-devkit", "internal"],
            applied, {**env, **NANO_IDS})
    assert p.returncode == 0, out(p)
    lines = p.stdout.splitlines()
    assert "*  Step 1: Generate flash packages *" in lines
    assert "*  Step 2: Generate rcm boot commandline *" in lines
    assert lines[-4:] == ["Success", "Cleaning up...", "Finish generating flash package.",
                          "Put device in recovery mode, run with option --flash-only to "
                          "flash device."]
    images = applied / "tools/kernel_flash/images"
    for sub in ("internal", "external"):
        for line in (images / sub / "flash.idx").read_text().splitlines():
            fields = [f.strip() for f in line.split(",")]
            if fields[4]:
                f = images / sub / fields[4]
                assert f.stat().st_size == int(fields[5]), line
                assert hashlib.sha1(f.read_bytes()).hexdigest() == fields[7]
    internal = (images / "internal/flash.idx").read_text()
    assert ", 3:0:A_mb1, " in internal and ":APP," not in internal  # QSPI only
    assert (images / "internal/flash.cfg").read_text() == \
        "external_device=nvme0n1p1\nCHIPID=0x23\n"
    assert (images / "external/flash.cfg").read_text().splitlines()[0] == "APP_ext=system.img"
    system = images / "external/system.img"
    with tarfile.open(system) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 for m in tar.getmembers())
        nvrel = tar.extractfile("./etc/nv_tegra_release").read().decode()  # type: ignore[union-attr]
    assert "./boot/extlinux/extlinux.conf" in names
    assert nvrel.startswith(nv_tegra_release_line(RELEASE))
    assert (images / "external/system.img.sha1sum").read_text().strip() == \
        hashlib.sha1(system.read_bytes()).hexdigest()
    assert (applied / "bootloader/flashcmd.txt").read_text().startswith("./tegraflash.py ")
    assert "TNSPEC 3767-300-0003--1-0-jetson-orin-nano-devkit-" in \
        (applied / "rootfs/etc/nv_boot_control.conf").read_text()
    assert (applied / "tools/kernel_flash/initrdflashparam.txt").read_text().split()[-2:] == \
        ["jetson-orin-nano-devkit", "internal"]


def test_initrd_flash_agx_emmc_package_has_the_rootfs_internally(
        applied: Path, env: dict[str, str]) -> None:
    p = run([INITRD, "--no-flash", "jetson-agx-orin-devkit", "mmcblk0p1"], applied,
            {**env, "BOARDID": "3701", "BOARDSKU": "0005", "FAB": "500"})
    assert p.returncode == 0, out(p)
    internal = applied / "tools/kernel_flash/images/internal"
    assert (internal / "flash.cfg").read_text().splitlines()[0] == "APP=system.img"
    assert ", 1:0:APP, " in (internal / "flash.idx").read_text()  # sdmmc_user
    assert not any((applied / "tools/kernel_flash/images/external").iterdir())


def test_initrd_flash_only_finds_boards_in_recovery_mode(generated: Path, env: dict[str, str],
                                                         tmp_path: Path) -> None:
    e = {**env, "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys0", []))}
    p = run([INITRD, "--flash-only"], generated, e)
    assert p.returncode == 1 and p.stdout.splitlines()[-1] == "No devices to flash"
    e["FAKE_SYSFS"] = str(make_usb_sysfs(tmp_path / "sys1", [("7020", "1-4")]))  # running L4T
    p = run([INITRD, "--flash-only"], generated, e)
    assert p.returncode == 1 and p.stdout.splitlines()[-1] == "No devices to flash"
    e["FAKE_SYSFS"] = str(make_usb_sysfs(tmp_path / "sys2", [("7523", "1-4"), ("7523", "1-5")]))
    p = run([INITRD, "--flash-only"], generated, e)
    assert p.returncode == 1 and "Too many devices in RCM mode" in p.stdout
    p = run([INITRD, "--flash-only", "--usb-instance", "1-5"], generated, e)
    assert p.returncode == 0 and "--usb-instance 1-5 " in p.stdout


def test_initrd_flash_only_flashes_a_board(generated: Path, env: dict[str, str],
                                           tmp_path: Path) -> None:
    e = {**env, "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys", [("7523", "1-4")]))}
    p = run([INITRD, "--flash-only"], generated, e)
    assert p.returncode == 0, out(p)
    lines = p.stdout.splitlines()
    assert "*  Step 3: Start the flashing process *" in lines
    assert lines[-5:-1] == ["[ 203]: l4t_flash_from_kernel: Flashing success",
                            "Flash is successful", "Reboot device", "Cleaning up..."]
    log = re.fullmatch(r"Log is saved to Linux_for_Tegra/initrdlog/(flash_1-4_0_\d{8}-\d{6}"
                       r"\.log) ", lines[-1])
    assert log and "Flash is successful" in (generated / "initrdlog" / log[1]).read_text()


@pytest.mark.parametrize(("mode", "lines"), [
    ("boot-timeout", ["Waiting for target to boot-up...", "Timeout",
                      "Device ping failed after RCM boot."]),
    ("nvme-missing", ["Error: Could not stat device /dev/nvme0n1 - No such file or directory.",
                      "Flash failure"]),
    ("ssh-timeout", []),
])
def test_initrd_flash_only_fails_like_the_real_one(generated: Path, env: dict[str, str],
                                                   tmp_path: Path, mode: str,
                                                   lines: list[str]) -> None:
    e = {**env, "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys", [("7523", "1-4")])),
         "FAKE_FLASH_FAIL": mode, "FAKE_FLASH_WAIT_LINES": "3"}
    p = run([INITRD, "--flash-only"], generated, e)
    assert p.returncode == 1
    got = p.stdout.splitlines()
    assert got[-1] == "Cleaning up..." and "Flash is successful" not in got
    assert all(line in got for line in lines)
    assert not any(line.startswith("Log is saved to") for line in got)


def test_initrd_flash_only_fails_on_a_board_of_another_module(
        generated: Path, env: dict[str, str], tmp_path: Path) -> None:
    e = {**env, "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys", [("7023", "1-4")]))}
    p = run([INITRD, "--flash-only"], generated, e)  # an AGX Orin, an Orin Nano package
    assert p.returncode == 1 and "ERROR: might be timeout in USB write." in p.stdout


def test_initrd_flash_only_needs_a_generated_package(applied: Path, env: dict[str, str],
                                                     tmp_path: Path) -> None:
    e = {**env, "FAKE_SYSFS": str(make_usb_sysfs(tmp_path / "sys", [("7523", "1-4")]))}
    p = run([INITRD, "--flash-only"], applied, e)
    assert p.returncode == 1 and "initrdflashparam.txt: No such file or directory" in p.stderr


def test_initrd_flash_massflash_package_and_parallel_flash(applied: Path, env: dict[str, str],
                                                           tmp_path: Path) -> None:
    p = run([INITRD, *NANO_NVME, "--massflash", "3", "--no-flash",
             "jetson-orin-nano-devkit", "internal"], applied, {**env, **NANO_IDS})
    assert p.returncode == 0, out(p)
    tgz = applied / "mfi_jetson-orin-nano-devkit.tar.gz"
    assert f"Massflash package is generated at {tgz}" in p.stdout.splitlines()
    with tarfile.open(tgz) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "factory", numeric_owner=True, filter="fully_trusted")
    assert "./mfi_jetson-orin-nano-devkit/tools/kernel_flash/images/external/system.img" \
        in names
    mfi = tmp_path / "factory/mfi_jetson-orin-nano-devkit"
    sysfs = make_usb_sysfs(tmp_path / "sys", [("7523", "1-4"), ("7523", "1-5"),
                                              ("7623", "2-1.3")])
    e = {**env, "FAKE_SYSFS": str(sysfs)}
    p = run([INITRD, "--flash-only", "--massflash", "3", "--network", "usb0"], mfi, e)
    assert p.returncode == 0, out(p)
    started = re.findall(r"Start flashing device: (\S+), rcm instance: (\d)", p.stdout)
    assert started == [("1-4", "0"), ("1-5", "1"), ("2-1.3", "2")]
    assert len(list((mfi / "initrdlog").glob("flash_*.log"))) == 3
    p = run([INITRD, "--flash-only", "--massflash", "3", "--network", "usb0"], mfi,
            {**e, "FAKE_FLASH_FAIL": "nvme-missing", "FAKE_FLASH_FAIL_USB": "1-5"})
    assert p.returncode == 1
    assert p.stdout.splitlines()[-1] == "Flash complete (WITH FAILURES)"
    p = run([INITRD, "--flash-only", "--massflash", "2"], mfi, e)
    assert p.returncode == 1 and "Too many devices in RCM mode" in p.stdout


def test_flash_sh_checks_then_refuses(l4t: Path, env: dict[str, str]) -> None:
    p = run(["./flash.sh", "jetson-foo", "internal"], l4t, env)
    assert p.returncode == 1 and "Error: Invalid target board - jetson-foo." in p.stdout
    p = run(["./flash.sh", "jetson-orin-nano-devkit", "internal"], l4t, env)
    assert p.returncode == 1 and "# R36 , REVISION: 4.3" in p.stdout
    assert "l4t_initrd_flash.sh" in p.stderr


def test_usb_sysfs_looks_like_the_kernels(tmp_path: Path) -> None:
    root = make_usb_sysfs(tmp_path / "sys", [("7523", "1-4"), ("7023", "2-1.3")])
    devices = root / "bus/usb/devices"
    board = devices / "2-1.3"
    assert board.is_symlink() and (devices / "2-1").is_dir() and (devices / "usb2").is_dir()
    attrs = {a: (board / a).read_text().strip() for a in (
        "idVendor", "idProduct", "serial", "product", "busnum", "devnum", "devpath")}
    assert attrs["idVendor"] == "0955" and attrs["idProduct"] == "7023"
    assert (attrs["busnum"], attrs["devpath"], attrs["product"]) == ("2", "1.3", "APX")
    assert board.resolve().parent == (devices / "2-1").resolve()  # under its hub
    vendors = {(d / "idVendor").read_text().strip() for d in devices.iterdir()}
    assert {"1d6b", "046d", "8087", "0955"} <= vendors


# ------------------------------------------------------------------ TensorRT-LLM

@pytest.fixture(scope="session")
def trt_install(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fake install, two Qwen2.5-0.5B directories (plain and GPTQ), and an int8
    weight-only checkpoint built into an engine, made once."""
    base = tmp_path_factory.mktemp("trtllm")
    paths = install_fake_trtllm(base / "trtllm")
    model = base / "Qwen2.5-0.5B-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN_05B))
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    (model / "tokenizer.json").write_text("{}")
    (model / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for message in messages %}{{ message.content }}{% endfor %}"}))
    gptq = base / "Qwen2.5-0.5B-Instruct-GPTQ-Int4"
    shutil.copytree(model, gptq)
    (gptq / "config.json").write_text(json.dumps(
        {**QWEN_05B, "quantization_config": {"bits": 4, "group_size": 128,
                                             "quant_method": "gptq"}}))
    got = {**paths, "model": model, "gptq": gptq, "ckpt": base / "ckpt",
           "engine": base / "engine"}
    p = py(got, "convert_checkpoint", "--model_dir", str(model), "--output_dir",
           str(got["ckpt"]), "--dtype", "float16", "--use_weight_only",
           "--weight_only_precision", "int8")
    assert p.returncode == 0, out(p)
    p = py(got, "trtllm_build", "--checkpoint_dir", str(got["ckpt"]), "--output_dir",
           str(got["engine"]), "--gemm_plugin", "float16", "--max_batch_size", "4",
           "--max_input_len", "2048", "--max_seq_len", "4096", "--max_num_tokens", "8192",
           "--workers", "1")
    assert p.returncode == 0, out(p)
    got["build_log"] = base / "build.log"
    got["build_log"].write_text(p.stdout)
    return got


@pytest.fixture
def trt(trt_install: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {**trt_install, "tmp": tmp_path}


def py(trt: dict[str, Path], script: str, *args: str,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(trt[script]), *args], trt["root"],
               {"PATH": os.environ["PATH"], **(env or {})})


def safetensors_header(path: Path) -> dict:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def test_convert_checkpoint_rejects(trt: dict[str, Path]) -> None:
    for args, rc, text in [
        ([], 2, "the following arguments are required: --model_dir"),
        (["--model_dir", "{model}", "--weight_only_precision", "int4_awq"], 2, "invalid choice"),
        (["--model_dir", "{tmp}"], 1, "does not appear to have a file named config.json"),
        (["--model_dir", "{model}", "--use_weight_only", "--weight_only_precision", "int4_gptq"],
         1, "KeyError: 'model.layers.0.self_attn.q_proj.qweight'"),
        (["--model_dir", "{gptq}"], 1, "KeyError: 'model.layers.0.self_attn.q_proj.weight'"),
        (["--model_dir", "{model}", "--int8_kv_cache"], 1,
         "ConnectionError: Couldn't reach 'ccdv/cnn_dailymail' on the Hub"),
    ]:
        args = [a.format(**{k: str(v) for k, v in trt.items()}) for a in args]
        p = py(trt, "convert_checkpoint", *args, "--output_dir", str(trt["tmp"] / "ckpt"))
        assert p.returncode == rc and text in out(p), (args, out(p))
        assert not (trt["tmp"] / "ckpt/config.json").exists()


def test_convert_checkpoint_writes_a_trtllm_checkpoint(trt: dict[str, Path]) -> None:
    ckpt = trt["ckpt"]
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["architecture"], config["dtype"]) == ("Qwen2ForCausalLM", "float16")
    assert config["quantization"]["quant_algo"] == "W8A16"
    assert config["mapping"]["world_size"] == 1
    size = (ckpt / "rank0.safetensors").stat().st_size
    assert 700 << 20 < size < 1100 << 20  # int8 GEMMs, fp16 embedding and lm_head
    header = safetensors_header(ckpt / "rank0.safetensors")
    assert header["transformer.weights_placeholder"]["data_offsets"][1] + 8 + len(
        json.dumps(header)) <= size
    gptq = trt["tmp"] / "ckpt-gptq"
    p = py(trt, "convert_checkpoint", "--model_dir", str(trt["gptq"]), "--output_dir",
           str(gptq), "--use_weight_only", "--weight_only_precision", "int4_gptq",
           "--per_group", "--tp_size", "2")
    assert p.returncode == 0, out(p)
    config = json.loads((gptq / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A16_GPTQ"
    assert sorted(f.name for f in gptq.iterdir()) == [
        "config.json", "rank0.safetensors", "rank1.safetensors"]


def test_quantize_awq_needs_calibration_data_offline(trt: dict[str, Path]) -> None:
    args = ["--model_dir", str(trt["model"]), "--dtype", "float16", "--qformat", "int4_awq",
            "--awq_block_size", "128", "--calib_size", "32"]
    out_dir = trt["tmp"] / "awq"
    p = py(trt, "quantize", *args, "--output_dir", str(out_dir))
    assert p.returncode == 1
    assert "ConnectionError: Couldn't reach 'cnn_dailymail' on the Hub" in p.stderr
    assert not out_dir.exists()
    p = py(trt, "quantize", *args, "--qformat", "nvfp4", "--output_dir", str(out_dir))
    assert p.returncode == 2 and "invalid choice: 'nvfp4'" in p.stderr
    calib = trt["tmp"] / "cnn_dailymail"
    calib.mkdir()
    (calib / "train.jsonl").write_text('{"article": "x", "highlights": "y"}\n')
    p = py(trt, "quantize", *args, "--calib_dataset", str(calib), "--output_dir", str(out_dir))
    assert p.returncode == 0, out(p)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A16_AWQ"
    assert config["quantization"]["group_size"] == 128
    assert (out_dir / "rank0.safetensors").stat().st_size > 200 << 20


def test_trtllm_build_rejects(trt: dict[str, Path]) -> None:
    engine = trt["tmp"] / "engine"
    p = py(trt, "trtllm_build", "--output_dir", str(engine))
    assert p.returncode == 1 and "'NoneType' object has no attribute 'lower'" in p.stderr
    p = py(trt, "trtllm_build", "--checkpoint_dir", str(trt["model"]), "--output_dir",
           str(engine))  # a Hugging Face directory, not a TensorRT-LLM checkpoint
    assert p.returncode == 1 and "KeyError: 'architecture'" in p.stderr
    p = py(trt, "trtllm_build", "--checkpoint_dir", str(trt["model"]), "--gemm_plugin", "fp16")
    assert p.returncode == 2 and "invalid choice: 'fp16'" in p.stderr
    ckpt = trt["tmp"] / "ckpt"
    ckpt.mkdir()
    shutil.copy(trt["ckpt"] / "config.json", ckpt)  # without its rank0.safetensors
    p = py(trt, "trtllm_build", "--checkpoint_dir", str(ckpt), "--output_dir", str(engine))
    assert p.returncode == 1 and "rank0.safetensors" in p.stderr
    assert not (engine / "rank0.engine").exists()


def test_trtllm_build_writes_an_engine_directory(trt: dict[str, Path]) -> None:
    ckpt, engine = trt["ckpt"], trt["engine"]
    assert re.search(r"\[TRT-LLM\] \[I\] Total time of building all engines: \d\d:\d\d:\d\d$",
                     trt["build_log"].read_text().strip())
    config = json.loads((engine / "config.json").read_text())
    assert config["version"] == "0.12.0"
    assert config["pretrained_config"]["architecture"] == "Qwen2ForCausalLM"
    build = config["build_config"]
    assert (build["max_batch_size"], build["max_input_len"], build["max_seq_len"],
            build["max_num_tokens"]) == (4, 2048, 4096, 8192)
    assert build["plugin_config"]["gemm_plugin"] == "float16"
    assert (engine / "rank0.engine").stat().st_size > (ckpt / "rank0.safetensors").stat().st_size


# ------------------------------------------------------------------ openai_server.py

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str, body: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body
                                 is not None else "GET", data=json.dumps(body).encode()
                                 if body is not None else None,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def engine_dir(trt: dict[str, Path]) -> Path:
    return trt["engine"]


def test_openai_server_rejects_at_startup(trt: dict[str, Path], engine_dir: Path) -> None:
    p = py(trt, "openai_server")
    assert p.returncode == 2 and "Error: Missing argument 'MODEL_DIR'." in p.stderr
    p = py(trt, "openai_server", str(engine_dir), "--max_seq_len", "4096")  # not in 0.12
    assert p.returncode == 2 and "Error: No such option: --max_seq_len" in p.stderr
    p = py(trt, "openai_server", str(engine_dir), "--port", "http")
    assert p.returncode == 2 and "'http' is not a valid integer" in p.stderr
    p = py(trt, "openai_server", str(engine_dir))  # no tokenizer in an engine directory
    assert p.returncode == 1 and "Unrecognized model in" in p.stderr
    broken = trt["tmp"] / "engine"
    broken.mkdir()
    shutil.copy(engine_dir / "config.json", broken)  # without rank0.engine
    p = py(trt, "openai_server", str(broken), "--tokenizer", str(trt["model"]))
    assert p.returncode == 1 and "Unknown model format for" in p.stderr


def test_openai_server_serves_the_012_api(trt: dict[str, Path], engine_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(trt["openai_server"]), str(engine_dir), "--tokenizer",
         str(trt["model"]), "--host", "127.0.0.1", "--port", str(port)], cwd=trt["root"],
        env={"PATH": os.environ["PATH"], "FAKE_TRTLLM_LOAD_SECONDS": "0.3"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(urllib.error.URLError):  # loading: the port is not open yet
            http(port, "/health")
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = http(port, "/health")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert (status, body) == (200, "")
        assert json.loads(http(port, "/version")[1]) == {"version": "0.12.0"}
        models = json.loads(http(port, "/v1/models")[1])
        assert models["data"][0]["id"] == "engine" and models["object"] == "list"
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        status, body = http(port, "/v1/chat/completions", {"model": "qwen", "messages": msgs})
        chat = json.loads(body)
        assert status == 200 and chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"] == {"role": "assistant", "tool_calls": [],
                                                 "content": "Paris is the capital of France."}
        assert chat["usage"]["completion_tokens"] == 7 and chat["model"] == "qwen"
        status, body = http(port, "/v1/chat/completions",
                            {"model": "qwen", "messages": msgs, "stream": True,
                             "max_tokens": 3})
        events = [e for e in body.split("\n\n") if e]
        chunks = [json.loads(e.removeprefix("data: ")) for e in events]
        assert all(e.startswith("data: {") for e in events)  # no "data: [DONE]" in 0.12 chat
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["choices"][0]["delta"]["content"] for c in chunks[1:]] == \
            ["Paris", " is", " the"]
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        status, body = http(port, "/v1/completions",
                            {"model": "qwen", "prompt": "The capital of France",
                             "stream": True, "max_tokens": 2})
        events = [e for e in body.split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]] == \
            ["Paris", " is"]
        status, body = http(port, "/v1/chat/completions",
                            {"model": "qwen", "messages": msgs, "cache_prompt": True})
        assert status == 400 and "Extra inputs are not permitted" in body
        assert json.loads(body)["type"] == "BadRequestError"
        status, body = http(port, "/v1/completions", {"model": "qwen", "prompt": "x",
                                                      "logprobs": 1})
        assert status == 400 and "returning log probs is not supported" in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "Uvicorn running on http://127.0.0.1:" in proc.stderr.read()  # type: ignore[union-attr]
