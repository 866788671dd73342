"""The Jetson Orin target's choices, without a build: the board configuration NVIDIA's
offline flashing guides give each module (CHIP_SKU, the Super devkit config), power modes
as the module's nvpmodel names them, JetPack's packages for what the engine runs on, the
engine's software installed offline, and the host tools NVIDIA's scripts check first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import stand_ins

from builder import doctor
from builder.errors import BuilderError
from builder.profiles import ProfileStore
from builder.rootfs import offline
from builder.targets.jetson_orin import L4T_HOST_TOOLS, MODULES, jetpack_packages


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def resolved(workdir: Path, yaml: str, name: str = "j"):
    write(workdir / f"profiles/{name}.yaml", yaml)
    rp = ProfileStore().load(name)
    from builder import resolve

    return resolve.resolve(rp, rp.concrete())


def test_the_orin_nano_devkit_is_generated_as_a_nano_not_an_orin_nx() -> None:
    """Without CHIP_SKU, NVIDIA's p3767.conf.common assumes D3 (Orin NX) and packs the
    TE980M boot firmware; the Orin Nano developer kit's module (SKU 0005) is D5, and
    JetPack 6.2 flashes it with the Super board config."""
    d = stand_ins.device("orin-nano-8gb")
    env = d.target.flash_env(d.profile)
    assert env == {"BOARDID": "3767", "BOARDSKU": "0005", "FAB": "300",
                   "CHIP_SKU": "00:00:00:D5", "USER": "root"}
    args = d.target.flash_args(d.profile)
    assert args[-2:] == ["jetson-orin-nano-devkit-super", "internal"]


@pytest.mark.parametrize(("storage", "rootdev", "layouts"), [
    ("emmc", "internal", []),
    # NVIDIA's quick start (R36.5, R39.2.1) and README_initrd_flash.txt: an AGX Orin's
    # "internal" is its eMMC, so on NVMe the root device is "external"
    ("nvme", "external", ["--external-device", "nvme0n1p1", "-c",
                          "tools/kernel_flash/flash_l4t_t234_nvme.xml"]),
])
def test_an_agx_orin_is_flashed_to_the_storage_it_boots_from(workdir: Path, storage: str,
                                                              rootdev: str,
                                                              layouts: list[str]) -> None:
    d = resolved(workdir, f"extends: orin-agx-64gb\ndevice:\n  storage:\n    kind: {storage}\n"
                 "    size: 64GiB\n")
    args = d.target.flash_args(d.profile)
    assert args == [*layouts, "--showlogs", "--network", "usb0", "jetson-agx-orin-devkit",
                    rootdev]


@pytest.mark.parametrize(("module", "sku", "chip"), [
    ("orin-nano-8gb", "0003", "00:00:00:D6"), ("orin-nano-4gb", "0004", "00:00:00:D6"),
    ("orin-nx-16gb", "0000", "00:00:00:D3"), ("orin-nx-8gb", "0001", "00:00:00:D4"),
])
def test_each_module_sku_is_flashed_with_its_chip_sku(workdir: Path, module: str, sku: str,
                                                      chip: str) -> None:
    m = MODULES[module]
    d = resolved(workdir, f"extends: orin-nano-8gb\ndevice:\n  ram: {m.ram}\n"
                 f"jetson:\n  module: {module}\n  module_sku: \"{sku}\"\n"
                 "  super_board: false\n")
    env = d.target.flash_env(d.profile)
    assert (env["BOARDSKU"], env["CHIP_SKU"]) == (sku, chip)
    assert d.target.flash_args(d.profile)[-2] == "jetson-orin-nano-devkit"


@pytest.mark.parametrize(("yaml", "message"), [
    ("jetson:\n  power_mode: 9\n", "jetson.power_mode: the orin-nano-8gb (Super board "
     "config) has nvpmodel modes 0 15W, 1 25W, 2 MAXN_SUPER, 3 7W; not 9"),
    ("jetson:\n  super_board: false\n  power_mode: MAXN_SUPER\n", "has nvpmodel modes 0 "
     "15W, 1 7W; not MAXN_SUPER"),
    ("jetson:\n  module_sku: \"0000\"\n", "jetson.module_sku: the orin-nano-8gb module is "
     "SKU 0003 or 0005, not 0000"),
    ("jetson:\n  l4t_release: 36.4.0\n", "jetson.super_board: the Super board config came "
     "with JetPack 6.2: l4t_release 36.4.3 or later, not 36.4.0"),
    ("jetson:\n  chip_sku: D5\n", "jetson.chip_sku"),
])
def test_a_board_setting_the_module_does_not_have_is_refused_in_one_line(
        workdir: Path, cli, yaml: str, message: str) -> None:
    write(workdir / "profiles/j.yaml", "extends: orin-nano-8gb\n" + yaml)
    r = cli("profiles", "validate", "profiles/j.yaml")
    assert r.code != 0 and message in r.err and r.err.count("\n") == 1, r.err


def test_the_super_config_is_only_for_the_nano_and_nx_devkits(workdir: Path, cli) -> None:
    write(workdir / "profiles/j.yaml", "extends: orin-agx-64gb\njetson:\n  super_board: true\n")
    r = cli("profiles", "validate", "profiles/j.yaml")
    assert r.code != 0 and "the agx-orin-64gb has no Super board config" in r.err


@pytest.mark.parametrize(("mode", "mode_id"), [("MAXN_SUPER", 2), ("maxn_super", 2),
                                                ("25W", 1), (3, 3)])
def test_a_power_mode_is_named_or_numbered_and_reaches_the_role_as_its_id(
        workdir: Path, mode, mode_id: int) -> None:
    d = resolved(workdir, f"extends: orin-nano-8gb\njetson:\n  power_mode: {mode}\n")
    assert d.target.settings_of(d.profile).power_mode_id() == mode_id


def test_jetpack_packages_follow_what_the_engine_runs_on(workdir: Path) -> None:
    """TensorRT-LLM needs CUDA, cuDNN and TensorRT from JetPack; llama.cpp built on the
    board needs CUDA and its toolkit (nvcc); neither takes the whole nvidia-jetpack."""
    trt = stand_ins.device("orin-nano-8gb")
    assert jetpack_packages("36.4.3", trt.engine.gpu_stack(trt.profile, trt.platform)) == (
        "nvidia-cuda", "nvidia-cudnn", "nvidia-tensorrt", "python3-libnvinfer")
    # JetPack 6.0 has cuDNN 8, under another meta package
    assert "nvidia-cudnn8" in jetpack_packages("36.3.0", trt.engine.gpu_stack(
        trt.profile, trt.platform))
    llama = resolved(workdir, "extends: orin-nano-8gb\nengine:\n  kind: llama.cpp\nmodel:\n"
                     "  quant: Q4_K_M\n  source: {hf_repo: Qwen/Qwen2.5-1.5B-Instruct-GGUF}\n")
    assert jetpack_packages("36.4.3", llama.engine.gpu_stack(llama.profile, llama.platform)) \
        == ("nvidia-cuda", "nvidia-cuda-dev")


def test_tensorrt_llm_is_installed_from_the_profiles_files_each_checked(workdir: Path) -> None:
    (workdir / "nv").mkdir()
    wheel = workdir / "nv/tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"
    wheel.write_bytes(b"wheel")
    examples = workdir / "nv/TensorRT-LLM-0.12.0-jetson.tar.gz"
    examples.write_bytes(b"tar")
    (workdir / "nv/wheels").mkdir()
    base = ("extends: orin-nano-8gb\nengine:\n  tensorrt_llm:\n"
            "    wheel: {path: ../nv/tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl}\n"
            "    examples: {path: ../nv/TensorRT-LLM-0.12.0-jetson.tar.gz, sha256: "
            f"{'a' * 64}}}\n")
    d = resolved(workdir, base)
    with pytest.raises(BuilderError, match=r"^engine.tensorrt_llm.wheelhouse: name a directory"
                       r" .*pip download --dest WHEELHOUSE .*--python-version 3.10 "
                       r"tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"):
        d.engine.offline_install(d)
    d = resolved(workdir, base + "    wheelhouse: ../nv/wheels\n")
    sw = d.engine.offline_install(d)
    assert sw.wheels[0].path.resolve() == wheel and sw.wheelhouse.resolve() == workdir / "nv/wheels"
    assert sw.trees[0][1] == "/opt/TensorRT-LLM"
    with pytest.raises(BuilderError, match=r"^engine.tensorrt_llm.examples: .* has sha256 "
                       r"[0-9a-f]{64}, expected a{64}$"):
        offline.key(sw)
    d = resolved(workdir, "extends: orin-nano-8gb\n")
    with pytest.raises(BuilderError, match=r"^engine.tensorrt_llm.wheel.path: name the "
                       "TensorRT-LLM 0.12.0-jetson wheel"):
        d.engine.offline_install(d)


def test_doctor_names_what_nvidias_scripts_check_before_they_make_anything(
        tmp_path: Path) -> None:
    """l4t_initrd_flash.sh stops before anything is made without sshpass or abootimg
    (and exportfs for --network usb0); the BSP's scripts use xmllint and lbzip2 and look
    for /usr/bin/qemu-aarch64-static."""
    assert {t.command for t in L4T_HOST_TOOLS} >= {
        "sshpass", "abootimg", "exportfs", "xmllint", "lbzip2", "/usr/bin/qemu-aarch64-static",
        "xmlstarlet", "zstd"}  # the last two: R38's script checks them first
    assert {n.tool for n in doctor.NEEDS if n.stage == "jetson"} == \
        {t.command for t in L4T_HOST_TOOLS}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = Path(sys.executable).with_name("builder")
    r = subprocess.run([str(exe), "doctor", "--stage", "jetson"], capture_output=True,
                       text=True, env={**os.environ, "PATH": str(bin_dir)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    for tool, package in (("sshpass", "sshpass"), ("abootimg", "abootimg"),
                          ("exportfs", "nfs-kernel-server"), ("xmllint", "libxml2-utils"),
                          ("lbzip2", "lbzip2"), ("xmlstarlet", "xmlstarlet")):
        assert tool in r.stdout + r.stderr and package in r.stdout + r.stderr


@pytest.mark.parametrize(("yaml", "field"), [
    # an apt option where a package name goes (apt-get install takes it as an option)
    ("os:\n  packages: [-o=APT::Get::AllowUnauthenticated=true]\n", "os.packages[0]"),
    ("jetson:\n  jetpack:\n    packages: [--allow-unauthenticated]\n",
     "jetson.jetpack.packages[0]"),
    # a second sources line smuggled into the repository's URL
    ("jetson:\n  jetpack:\n    url: \"http://mirror/jetson r36.4 main\\ndeb [trusted=yes] "
     "http://evil/ x main\"\n", "jetson.jetpack.url"),
    # where the checkout is unpacked: outside the rootfs
    ("engine:\n  tensorrt_llm:\n    checkout: ../../etc\n", "engine.tensorrt_llm.checkout"),
    ("engine:\n  tensorrt_llm:\n    checkout: /opt/../../etc\n",
     "engine.tensorrt_llm.checkout"),
])
def test_profile_values_that_reach_apt_or_a_path_are_typed(workdir: Path, cli, yaml: str,
                                                           field: str) -> None:
    write(workdir / "profiles/j.yaml", "extends: orin-nano-8gb\n" + yaml)
    r = cli("profiles", "validate", "profiles/j.yaml")
    assert r.code != 0 and f"{field}: " in r.err and r.err.count("\n") == 1, r.err


def _tarball(path: Path, members: list[tuple[str, str, str | None]]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as t:
        for name, kind, extra in members:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif kind == "file":
                ti.size, ti.mode = 1, 0o4755
                t.addfile(ti, io.BytesIO(b"x"))
            elif kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra or ""
                t.addfile(ti)
            else:
                ti.type, ti.devmajor = tarfile.CHRTYPE, 8
                t.addfile(ti)
    return path


@pytest.mark.parametrize(("member", "refused"), [
    (("T/x", "link", "/etc/cron.d"), "a link to an absolute path"),
    (("T/x", "link", "../../etc"), "outside the destination"),
    (("T/sda", "char", None), "a special file"),
])
def test_a_checkout_tarball_cannot_place_links_out_or_device_nodes(
        tmp_path: Path, member: tuple[str, str, str | None], refused: str) -> None:
    """The examples tarball is unpacked as root into the rootfs: through the "data"
    filter, its top directory stripped, setuid bits dropped; a link leaving the tree or a
    device node (a readable eMMC in /opt) is refused in one line naming the setting."""
    from builder.contracts import Pinned

    good = Pinned(_tarball(tmp_path / "good.tar.gz", [
        ("T/", "dir", None), ("T/examples/a.py", "file", None),
        ("T/examples/b.py", "link", "a.py")]), None, "engine.tensorrt_llm.examples")
    where = tmp_path / "ok"
    where.mkdir()
    offline._unpack(good, where)
    assert sorted(str(p.relative_to(where)) for p in where.rglob("*")) == [
        "examples", "examples/a.py", "examples/b.py"]
    assert (where / "examples/a.py").stat().st_mode & 0o7777 == 0o755
    bad = Pinned(_tarball(tmp_path / "bad.tar.gz", [member]), None,
                 "engine.tensorrt_llm.examples")
    (tmp_path / "bad").mkdir()
    with pytest.raises(BuilderError, match=rf"^engine.tensorrt_llm.examples: .*{refused}"):
        offline._unpack(bad, tmp_path / "bad")


def test_a_checkout_goes_only_where_the_devices_own_software_lives(tmp_path: Path) -> None:
    """Unpacking replaces the directory: /usr, /etc or /tmp (where the wheels wait) would
    lose the rootfs's own files."""
    from builder.contracts import OfflineInstall, Pinned

    tar = Pinned(_tarball(tmp_path / "t.tar.gz", [("T/a", "file", None)]), None,
                 "engine.tensorrt_llm.examples")
    for dest in ("/usr", "/etc/x", "/tmp"):
        with pytest.raises(BuilderError, match=r"is not under /opt/, /srv/, /usr/local/"):
            offline.apply(tmp_path / "root", OfflineInstall(trees=((tar, dest),)), None)


def test_the_keyring_suffix_follows_its_content_not_its_name(tmp_path: Path) -> None:
    """apt reads signed-by=...asc as armored and anything else as binary; a key file
    named "k. trusted=yes" must not put `trusted=yes` into the sources line."""
    from builder.rootfs.debian import AptSource

    armored = tmp_path / "k. trusted=yes"
    armored.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nx\n")
    binary = tmp_path / "key.asc"
    binary.write_bytes(b"\x99\x02\r\x04")
    for key, suffix in ((armored, ".asc"), (binary, ".gpg")):
        src = AptSource(name="nvidia-jetpack-common", uri="/m/common", suite="r36.4",
                        components=("main",), keyring=key, device_uri="https://r/common")
        assert src.keyring_inside == f"/etc/apt/keyrings/nvidia-jetpack-common{suffix}"
        assert "trusted" not in src.line(src.device_uri, src.keyring_inside)


def test_a_local_jetpack_mirror_without_nvidias_layout_is_one_line(workdir: Path) -> None:
    from builder.contracts import BuildContext

    (workdir / "mirror/common/dists/r36.4").mkdir(parents=True)
    (workdir / "mirror/common/dists/r36.4/Release").write_text("Suite: r36.4\n")
    d = resolved(workdir, "extends: orin-nano-8gb\njetson:\n  jetpack: {url: ../mirror}\n")
    ctx = BuildContext(device=d, cache=None, out_root=workdir)  # type: ignore[arg-type]
    with pytest.raises(BuilderError, match=r"jetson.jetpack.url: .*mirror has no "
                       r"t234/dists/r36.4/Release: mirror NVIDIA's common and t234"):
        d.target._jetpack(ctx)


def test_the_bsps_own_entry_for_the_repository_is_set_aside_while_the_build_installs(
        tmp_path: Path) -> None:
    """NVIDIA's BSP lists repo.download.nvidia.com/jetson itself, keyed in trusted.gpg.d;
    apt refuses one repository with two keys (Conflicting values set for option
    Signed-By), and a build from a mirror must not reach for NVIDIA's: the entry waits
    aside during the install and comes back after, whatever happens."""
    from builder.rootfs.chroot_apt import _sources
    from builder.rootfs.debian import AptSource

    lists = tmp_path / "etc/apt/sources.list.d"
    lists.mkdir(parents=True)
    bsp = lists / "nvidia-l4t-apt-source.list"
    bsp.write_text("deb https://repo.download.nvidia.com/jetson/common r36.4 main\n")
    debian = lists / "debian.list"
    debian.write_text("deb http://deb.debian.org/debian bookworm main\n")
    key = tmp_path / "k.gpg"
    key.write_bytes(b"\x99")
    src = AptSource(name="nvidia-jetpack-common", uri="http://mirror.lab/jetson/common",
                    suite="r36.4", components=("main",), keyring=key,
                    device_uri="https://repo.download.nvidia.com/jetson/common")
    with pytest.raises(RuntimeError), _sources(tmp_path, (src,)):
        assert sorted(f.name for f in lists.glob("*.list")) == [
            "debian.list", "nvidia-jetpack-common.list"]
        assert "http://mirror.lab/jetson/common r36.4" in (
            lists / "nvidia-jetpack-common.list").read_text()
        raise RuntimeError("apt-get failed")
    assert bsp.read_text().startswith("deb https://repo.download.nvidia.com/jetson/common")
    assert (lists / "nvidia-jetpack-common.list").read_text() == (
        "deb [signed-by=/etc/apt/keyrings/nvidia-jetpack-common.gpg] "
        "https://repo.download.nvidia.com/jetson/common r36.4 main\n")
