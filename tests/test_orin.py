"""The Jetson Orin target end to end against NVIDIA's tools' stand-ins (tests/fakes/jetson):
a BSP tarball whose apply_binaries.sh, l4t_create_default_user.sh and
l4t_initrd_flash.sh check their arguments and write what the real ones write, and a
sample rootfs. `builder build` makes the flash package; `builder flash` finds boards in a
fake sysfs and runs the package's l4t_initrd_flash.sh --flash-only. Real hardware:
test_hil.py.

The sample rootfs stand-in is the x86-gateway build's Debian rootfs, not an arm64 one:
what is under test is the builder's L4T flow (the BSP's scripts, the roles' Orin
choices, the package, flashing), which does not depend on the architecture of the
binaries in the tree, and the roles then run natively instead of under qemu-user, which
keeps the suite inside its time budget. Provisioning an arm64 tree under qemu-user is
what tests/test_pi5.py does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.jetson.fake_l4t import make_bsp, make_sample_rootfs
from fakes.jetson.fake_sysfs import make_usb_sysfs

pytestmark = pytest.mark.slow
PROFILE = "orin-test"
RELEASE = "36.4.3"
NANO_8GB, AGX_64GB = "7523", "7023"  # USB product ids in recovery mode


@pytest.fixture(scope="module")
def orin(tmp_path_factory, manifest: dict, artifact_cache, run_builder_session) -> Path:
    """OUT root of one orin-test build (orin-nano-8gb, NVMe, TensorRT-LLM) with the tiny
    Qwen2 checkpoint."""
    from builder.model import synth

    base = tmp_path_factory.mktemp("orin")
    bsp = make_bsp(base / "nvidia", RELEASE)
    rootfs_tar = next(e.out / "rootfs.tar" for e in artifact_cache.entries()
                      if e.kind == "rootfs" and e.key == manifest["inputs"]["rootfs_key"])
    sample = make_sample_rootfs(rootfs_tar, base / "nvidia", RELEASE)
    profiles = base / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE}.yaml").write_text("extends: orin-nano-8gb\njetson:\n"
                                              "  power_mode: 1\n")
    model = synth.cached("tiny", artifact_cache).out
    out = base / "out"
    r = run_builder_session("build", "--profile", PROFILE, "--profiles-dir", str(profiles),
                            "--model-file", str(model), "--l4t-bsp", str(bsp),
                            "--l4t-rootfs", str(sample), "--out", str(out))
    assert r.returncode == 0, r.stderr[-4000:]
    (out / "profiles").symlink_to(profiles)
    return out


@pytest.fixture(scope="module")
def built(orin: Path) -> dict:
    return json.loads((orin / PROFILE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def package(orin: Path, built: dict, tmp_path_factory) -> Path:
    """The flash package unpacked: Linux_for_Tegra/ as the flashing host gets it."""
    dest = tmp_path_factory.mktemp("package")
    subprocess.run(["tar", "--zstd", "-xpf",
                    str(orin / PROFILE / built["delivery"]["files"]["package"]), "-C",
                    str(dest)], check=True)
    return dest / "Linux_for_Tegra"


def flash(orin: Path, sysfs: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("builder")
    return subprocess.run(
        [str(exe), "flash", "--profile", PROFILE, "--profiles-dir", str(orin / "profiles"),
         "--out", str(orin), *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, "COLUMNS": "200", "EDGE_LLM_SYSFS": str(sysfs),
             "FAKE_SYSFS": str(sysfs), "FAKE_FLASH_WAIT_LINES": "3", **env})


def test_the_delivery_is_a_flash_package_for_the_module(built: dict) -> None:
    d = built["delivery"]
    assert d["kind"] == "flash-package"
    assert d["module"] == "orin-nano-8gb"
    assert d["board"] == "jetson-orin-nano-devkit"
    assert d["usb_product"] == f"0955:{NANO_8GB}"
    assert d["l4t_release"] == RELEASE
    assert built["engine"]["kind"] == "tensorrt-llm"


def test_the_package_was_generated_for_nvme_with_the_qspi_layout(orin: Path, built: dict,
                                                                 package: Path) -> None:
    """l4t_initrd_flash.sh --no-flash left the QSPI images (internal/) and the NVMe's
    (external/, with the appliance's rootfs as system.img), and tegraflash's command
    for the Orin Nano's T234 (bootloader/flashcmd.txt, kept beside the package)."""
    cmd = (orin / PROFILE / built["delivery"]["files"]["flashcmd"]).read_text()
    assert cmd.startswith("./tegraflash.py") and "--chip 0x23" in cmd
    assert "p3767-0003" in cmd  # the Orin Nano 8GB module's device tree
    images = package / "tools/kernel_flash/images"
    assert (images / "internal/flash.idx").is_file()
    idx = (images / "external/flash.idx").read_text()
    assert "A_kernel" in idx and (images / "external/system.img").stat().st_size > 0


def test_the_rootfs_has_nvidias_userspace_and_the_appliance(package: Path,
                                                            built: dict) -> None:
    root = package / "rootfs"
    assert (root / "etc/nv_tegra_release").read_text().startswith("# R36 (release), "
                                                                  "REVISION: 4.3")
    edge = built["provision_vars"]["base_admin_user"]
    assert f"\n{edge}:" in "\n" + (root / "etc/passwd").read_text()
    current = root / "opt/edge-llm/current"
    assert current.is_symlink()
    release = root / "opt/edge-llm" / os.readlink(current)
    settings = json.loads((release / "engine/trtllm.json").read_text())
    assert settings["sm"] == "87" and settings["quant"] == "int4_gptq"
    model = root / settings["model"].lstrip("/")
    assert (model / "config.json").is_file()  # the checkpoint the device builds from
    # the drop-in links the current release's (an absolute link, as the device sees it)
    dropin = (root / "etc/systemd/system/edge-llm-engine.service.d").glob("*.conf")
    text = "".join((root / os.readlink(f).lstrip("/")).read_text() for f in dropin)
    assert "edge-llm-trtllm serve" in text and "=+" not in text
    unit = (root / "etc/systemd/system/edge-llm-engine.service").read_text()
    assert "DeviceAllow=/dev/nvmap rw" in unit and "SupplementaryGroups=video render" in unit
    assert "Wants=edge-llm-engine-build.service" in unit
    # the engine is built before it starts, as the engine user, with the GPU
    build = (root / "etc/systemd/system/edge-llm-engine-build.service").read_text()
    assert "\nExecStart=/usr/local/lib/edge-llm/edge-llm-trtllm build " in build
    assert "\nUser=edge-llm\n" in build and "DeviceAllow=/dev/nvmap rw" in build
    power = (root / "etc/systemd/system/edge-llm-power.service").read_text()
    assert "nvpmodel -m 1" in power
    assert (root / "usr/local/lib/edge-llm/edge-llm-trtllm").is_file()


def test_the_default_user_has_no_usable_password_and_none_was_logged(
        built: dict, package: Path, artifact_cache) -> None:
    """NVIDIA's l4t_create_default_user.sh prints the password it sets, and without -p
    makes one anyone who knows the build's minute can guess; the admin it creates has
    sudo without a password, so that password would be root's on the console. The
    admin's password is random, in no log, and locked; so is every account's."""
    root = package / "rootfs"
    shadow = dict(line.split(":")[:2] for line in
                  (root / "etc/shadow").read_text().splitlines() if line)
    admin = built["provision_vars"]["base_admin_user"]
    assert [u for u, pw in shadow.items() if not pw.startswith(("!", "*"))] == []
    entry = next(e for e in artifact_cache.entries()
                 if e.kind == "rootfs" and e.key == built["inputs"]["rootfs_key"])
    log = (entry.path / "build.log").read_text(errors="replace")  # where the script ran
    shown = re.findall(r"Creating: Username - (\S+), Password - (\S+), Autologin", log)
    assert shown == [(admin, "(hidden)")]
    hashed = shadow[admin].lstrip("!")  # usermod -L keeps the hash behind the "!"
    if hashed.startswith("$1$"):  # no word of that log is the password it hashes
        md5_crypt = _fake_tool("l4t_create_default_user").md5_crypt
        salt = hashed.split("$")[2]
        words = set(re.findall(r"[^\s,'\"]{8,}", log))
        assert [w for w in words if md5_crypt(w, salt) == hashed] == []


def _fake_tool(name: str):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location(name, Path(__file__).parent / f"fakes/jetson/tools/{name}.py")
    assert spec and spec.loader
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flash_without_a_board_in_recovery_mode_says_how(orin: Path, tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [])
    r = flash(orin, sysfs)
    assert r.returncode != 0
    assert "no Jetson in recovery mode" in r.stderr and "0955:7523" in r.stderr
    assert "Traceback" not in r.stderr


def test_flash_refuses_a_board_of_another_module(orin: Path, tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(AGX_64GB, "1-4")])
    r = flash(orin, sysfs)
    assert r.returncode != 0
    assert "USB 1-4 is a agx-orin-64gb" in r.stderr and "orin-nano-8gb" in r.stderr


def test_flash_dry_run_says_what_it_would_run(orin: Path, tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4")])
    r = flash(orin, sysfs, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "l4t_initrd_flash.sh --flash-only" in r.stdout + r.stderr
    assert not (orin / PROFILE / "flash-logs").exists() or not list(
        (orin / PROFILE / "flash-logs").glob("*.log"))


def test_flash_flashes_the_board_and_keeps_the_logs(orin: Path, tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4")])
    r = flash(orin, sysfs)
    assert r.returncode == 0, r.stderr[-3000:]
    logs = sorted((orin / PROFILE / "flash-logs").glob("*.log"))
    assert logs and "Flash is successful" in "".join(f.read_text() for f in logs)
    assert not list((orin / PROFILE).glob(".flash-*"))  # the unpacked package is gone


@pytest.mark.parametrize(("failure", "advice"), [
    ("nvme-missing", "seat the SSD"),
    ("boot-timeout", "direct USB port"),
])
def test_a_failed_flash_says_what_went_wrong_and_what_to_do(orin: Path, tmp_path: Path,
                                                            failure: str, advice: str) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4")])
    r = flash(orin, sysfs, FAKE_FLASH_FAIL=failure)
    assert r.returncode != 0
    assert "flashing failed" in r.stderr and advice in r.stderr
    assert "Traceback" not in r.stderr
