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
from fakes.jetson.fake_jetpack_repo import KEY_NAME, make_repo
from fakes.jetson.fake_l4t import make_bsp, make_sample_rootfs
from fakes.jetson.fake_sysfs import make_usb_sysfs
from fakes.jetson.fake_trtllm_wheel import make_examples, make_wheel, make_wheelhouse

from builder.cache import sha256_file

pytestmark = pytest.mark.slow
PROFILE = "orin-test"
RELEASE = "36.4.3"
NANO_8GB, AGX_64GB = "7523", "7023"  # USB product ids in recovery mode


def stand_in_repo(artifact_cache, release: str = RELEASE, arch: str = "amd64") -> Path:
    """The JetPack repository stand-in for a Debian 12 sample rootfs of `arch` (Python
    3.11), kept while the stand-in's sources are the same (harness.kept_stand_in)."""
    from harness import kept_stand_in

    fakes = Path(__file__).parent / "fakes"
    return kept_stand_in(
        artifact_cache, f"jetpack-{release}-{arch}",
        [fakes / "jetson/fake_jetpack_repo.py", fakes / "apt_repo.py"],
        lambda d: make_repo(d, release, arch=arch, python="3.11"))


@pytest.fixture(scope="module")
def orin(tmp_path_factory, manifest: dict, artifact_cache, run_builder_session) -> Path:
    """OUT root of one orin-test build (orin-nano-8gb, NVMe, TensorRT-LLM) with the tiny
    Qwen2 checkpoint, JetPack's runtime from a stand-in of NVIDIA's Jetson apt repository
    and TensorRT-LLM from stand-ins of its wheel, wheelhouse and checkout. They are built
    for the stand-in sample rootfs (amd64, Debian 12's Python 3.11), not a Jetson's
    (arm64, Ubuntu 22.04's 3.10): the files land at the same places."""
    from builder.model import synth

    base = tmp_path_factory.mktemp("orin")
    nvidia = base / "nvidia"
    bsp = make_bsp(nvidia, RELEASE)
    rootfs_tar = next(e.out / "rootfs.tar" for e in artifact_cache.entries()
                      if e.kind == "rootfs" and e.key == manifest["inputs"]["rootfs_key"])
    sample = make_sample_rootfs(rootfs_tar, nvidia, RELEASE)
    repo = stand_in_repo(artifact_cache)
    wheel = make_wheel(nvidia, python_tag="cp311", platform="linux_x86_64")
    examples = make_examples(nvidia)
    wheelhouse = make_wheelhouse(nvidia / "wheelhouse")
    profiles = base / "profiles"
    profiles.mkdir()
    # int8_wo: convert_checkpoint.py quantizes the tiny fp16 checkpoint (int4_gptq, the
    # profile's, takes a GPTQ checkpoint's qweight tensors, which it has not)
    (profiles / f"{PROFILE}.yaml").write_text(
        "extends: orin-nano-8gb\nmodel:\n  quant: int8_wo\n"
        "jetson:\n  power_mode: 25W\n  massflash: 2\n"
        f"  jetpack: {{url: {repo}, keyring: {repo / KEY_NAME}}}\n"
        "engine:\n  tensorrt_llm:\n"
        f"    wheel: {{path: {wheel}, sha256: {sha256_file(wheel)}}}\n"
        f"    examples: {{path: {examples}, sha256: {sha256_file(examples)}}}\n"
        f"    wheelhouse: {wheelhouse}\n")
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
    assert d["board"] == "jetson-orin-nano-devkit-super"  # the developer kit, JetPack 6.2
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
    assert "p3767-0005-nv-super.dtb" in cmd  # the developer kit module's, Super config
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
    settings = json.loads((release / "engine/build.json").read_text())
    assert settings["sm"] == "87" and settings["quant"] == "int8_wo"
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
    assert "\nExecStart=/usr/local/lib/edge-llm/edge-llm-engine-build " in build
    assert "\nUser=edge-llm\n" in build and "DeviceAllow=/dev/nvmap rw" in build
    power = (root / "etc/systemd/system/edge-llm-power.service").read_text()
    assert "nvpmodel -m 1" in power  # 25W, by its name
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


def test_the_orin_nano_package_boots_with_the_orin_nano_firmware(orin: Path,
                                                                 built: dict) -> None:
    """NVIDIA's script, told CHIP_SKU, packs the Orin Nano's BPMP firmware (TE950M), not
    the Orin NX's it assumes without it, and the Super devkit config's device tree."""
    cmd = (orin / PROFILE / built["delivery"]["files"]["flashcmd"]).read_text()
    assert "bpmp_fw bpmp_t234-TE950M-A1_prod.bin;" in cmd and "TE980M" not in cmd
    assert built["delivery"]["board"] == "jetson-orin-nano-devkit-super"
    assert (built["delivery"]["module_sku"], built["delivery"]["chip_sku"]) == (
        "0005", "00:00:00:D5")


def test_the_image_carries_jetpack_and_tensorrt_llm(package: Path) -> None:
    """What the first boot's engine build runs on is in the image, from the profile's
    sources: JetPack's CUDA, cuDNN and TensorRT (with its Python binding) from the Jetson
    apt repository, TensorRT-LLM's wheel and its dependencies installed with the image's
    pip, the branch's checkout; not the CUDA toolkit, which TensorRT-LLM does not need."""
    from builder.rootfs import parse_dpkg_status

    root = package / "rootfs"
    for f in ("usr/local/cuda-12.6/targets/aarch64-linux/lib/libcudart.so.12",
              "usr/lib/aarch64-linux-gnu/libcudnn.so.9",
              "usr/lib/aarch64-linux-gnu/libnvinfer.so.10",
              "usr/lib/python3.11/dist-packages/tensorrt/__init__.py",
              "usr/local/bin/trtllm-build",
              "opt/TensorRT-LLM/examples/qwen/convert_checkpoint.py",
              "opt/TensorRT-LLM/examples/apps/openai_server.py"):
        assert (root / f).exists(), f
    assert list((root / "usr/local/lib").glob("python3*/dist-packages/tensorrt_llm/"
                                              "commands/build.py"))
    assert list((root / "usr/local/lib").glob("python3*/dist-packages/janus/__init__.py"))
    assert not (root / "usr/local/cuda-12.6/bin/nvcc").exists()
    have = parse_dpkg_status((root / "var/lib/dpkg/status").read_text())
    assert {"nvidia-cuda", "nvidia-cudnn", "nvidia-tensorrt", "python3-libnvinfer"} <= set(have)
    # the device's apt names NVIDIA's repository once: the BSP's own entry (set aside
    # while the build installed from the mirror, apt refusing one repository with two
    # keys); the build's entry (a local directory), its indices and its mount are gone
    lists = root / "etc/apt/sources.list.d"
    assert sorted(f.name for f in lists.glob("nvidia*")) == ["nvidia-l4t-apt-source.list"]
    assert "https://repo.download.nvidia.com/jetson/t234 r36.4 main" in (
        lists / "nvidia-l4t-apt-source.list").read_text()
    assert not list((root / "var/lib/apt/lists").rglob("*edge-llm-apt*"))
    assert not (root / "run/edge-llm-apt").exists()
    assert not (root / "tmp/edge-llm-offline").exists()


def in_rootfs(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    """A command in the built rootfs, as the board would run it (chroot; no systemd)."""
    return subprocess.run(["chroot", str(root), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                               "/sbin:/bin", "LANG": "C.UTF-8"}, **kw)


TOOL = "/usr/local/lib/edge-llm/edge-llm-trtllm"
BUILD = "/usr/local/lib/edge-llm/edge-llm-engine-build"  # what the build unit runs
SETTINGS = "/opt/edge-llm/current/engine/build.json"


def test_without_jetpacks_tensorrt_the_engine_build_stops_in_one_line(package: Path) -> None:
    """tensorrt_llm imports JetPack's TensorRT: take its library away and the first
    boot's build says so before it runs any step."""
    root = package / "rootfs"
    lib = root / "usr/lib/aarch64-linux-gnu/libnvinfer.so.10"
    hidden = lib.with_name("libnvinfer.so.10.hidden")
    os.replace(lib, hidden)
    try:
        r = in_rootfs(root, BUILD, SETTINGS, timeout=300)
    finally:
        os.replace(hidden, lib)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "libnvinfer.so.10: cannot open shared object file" in r.stderr
    assert "jetson.jetpack" in r.stderr
    assert not list((root / "var/lib/edge-llm/engines").glob("[!.]*"))


def test_the_first_boots_build_and_serve_run_in_the_built_rootfs(package: Path) -> None:
    """edge-llm-trtllm build and serve find everything they run in the image itself:
    the checkout's convert_checkpoint.py, the wheel's trtllm-build, then the server on
    loopback answering for the built engine."""
    import socket
    import time
    import urllib.request

    root = package / "rootfs"
    r = in_rootfs(root, BUILD, SETTINGS, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    [engine] = [d for d in (root / "var/lib/edge-llm/engines").iterdir()
                if not d.name.startswith(".")]
    assert (engine / "rank0.engine").is_file() and (engine / ".complete").is_file()
    assert json.loads((root / "run/edge-llm/engine-status.json").read_text())["state"] \
        == "ready"
    with socket.socket() as s:  # the release's port may be taken on a shared host
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = json.loads((root / SETTINGS.lstrip("/")).read_text())
    (root / "tmp/trtllm-test.json").write_text(json.dumps({**settings, "port": port}))
    server = subprocess.Popen(["chroot", str(root), TOOL, "serve", "/tmp/trtllm-test.json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                   "/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as h:
                    assert h.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the server never answered /health"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as m:
            assert json.loads(m.read())["data"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_massflash_reads_each_boards_result_from_its_log(orin: Path, tmp_path: Path) -> None:
    """With --massflash N (N != 1) NVIDIA's script writes each board's output only to
    initrdlog/, not stdout: one board flashed that way is a success, kept per board."""
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4")])
    logs = orin / PROFILE / "flash-logs"
    before = set(logs.glob("*")) if logs.is_dir() else set()
    r = flash(orin, sysfs, "--massflash", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    [kept] = [f for f in set(logs.glob("*-flash_1-4_0_*.log")) - before]
    assert "Flash is successful" in kept.read_text()
    assert "Flash is successful" not in r.stdout + r.stderr


def test_a_failed_massflash_names_the_board_and_why(orin: Path, tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4"), (NANO_8GB, "1-5")])
    r = flash(orin, sysfs, "--massflash", "2", FAKE_FLASH_FAIL="nvme-missing",
              FAKE_FLASH_FAIL_USB="1-5")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "flashing failed on 1-5" in r.stderr and "seat the SSD" in r.stderr


def test_no_package_flashes_one_board_as_nvidias_script_does(orin: Path,
                                                           tmp_path: Path) -> None:
    sysfs = make_usb_sysfs(tmp_path / "sys", [(NANO_8GB, "1-4"), (NANO_8GB, "1-5")])
    r = flash(orin, sysfs, "--no-package", "--massflash", "2")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "--no-package flashes one board at a time" in r.stderr
    r = flash(orin, sysfs, "--no-package")
    assert r.returncode != 0 and "2 boards in recovery mode" in r.stderr


def test_jetpack_from_a_repository_signed_by_another_key_is_refused(package: Path,
                                                                   tmp_path: Path) -> None:
    """The image takes JetPack only from a repository its configured key signs: one
    signed by another key (a mirror someone replaced) stops the install, installs
    nothing, and leaves the device's entry as it was, the build's mount gone."""
    from builder.rootfs import parse_dpkg_status
    from builder.rootfs.chroot_apt import install_missing
    from builder.run import ToolError
    from builder.targets.jetson_orin import l4t

    root = package / "rootfs"
    ours = make_repo(tmp_path / "ours", RELEASE, arch="amd64", python="3.11")
    theirs = make_repo(tmp_path / "theirs", RELEASE, arch="amd64", python="3.11")
    repo = l4t.JetPackRepo(url=theirs.url, device_url=l4t.JETSON_REPO, suite=ours.suite,
                           keyring=ours.key)
    listed = root / "etc/apt/sources.list.d/nvidia-l4t-apt-source.list"
    before = listed.read_text()
    with pytest.raises(ToolError):
        install_missing(root, ["nvidia-cuda-dev"], tmp_path / "apt.log",
                        repo.sources(ours.key))
    assert "nvidia-cuda-dev" not in parse_dpkg_status((root / "var/lib/dpkg/status")
                                                      .read_text())
    assert listed.read_text() == before and not (root / "run/edge-llm-apt").exists()
