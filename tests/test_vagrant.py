"""The lab's Vagrantfile and `builder vagrant-box`: boxes packed from small builds shaped
like real ones (an x86 UEFI disk image; an arm64 image booted with the build's VM kernel
and initramfs), checked for vagrant-libvirt's box format (a tar of metadata.json, a
qcow2 box.img of the image's size, a Vagrantfile) with qemu-img, then added to a
throwaway Vagrant home and the whole lab validated by `vagrant validate` (the boxes'
own Vagrantfiles merged in, the libvirt provider's settings checked). Booting the boxes
(`vagrant up`) needs a libvirt daemon: a manual step, docs/lab.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from builder.run import run

REPO = Path(__file__).resolve().parent.parent
IMAGE_BYTES = (64 << 20) + 4096  # not a whole GiB: metadata.json rounds it up


def _fake_build(out: Path, profile: str, target: str, *, vm_boot: bool = False) -> Path:
    """OUT/<profile>/ as `builder build` leaves it, as far as a box needs: the raw disk
    image, (arm64) the VM kernel and initramfs, and manifest.json naming them."""
    d = out / profile
    d.mkdir(parents=True)
    raw = d / f"{profile}.img"
    with raw.open("wb") as f:
        f.truncate(IMAGE_BYTES)
        f.seek(1 << 20)
        f.write(os.urandom(1 << 20))  # some data: a qcow2 keeps only what is allocated
    files = {"image": raw.name, "bmap": f"{profile}.bmap",
             "compressed": f"{profile}.img.zst"}
    if vm_boot:
        (d / "vm-kernel").write_bytes(b"MZ kernel" + os.urandom(1000))
        (d / "vm-initrd").write_bytes(b"070701 initramfs" + os.urandom(1000))
        files |= {"vm-kernel": "vm-kernel", "vm-initrd": "vm-initrd"}
    (d / "manifest.json").write_text(json.dumps({
        "profile": profile, "release_id": "rtest", "target": target,
        "delivery": {"kind": "disk-image", "files": files, "bytes": IMAGE_BYTES,
                     "sha256": "x", "root_partuuid": "1a2b3c4d-02"},
        "inputs": {"profile": {"x86": {"cpu_levels": ["x86-64-v2", "x86-64-v3"]}}},
        "provision_vars": {"edge_llm_image_build": True, "release_id": "rtest",
                           "base_admin_user": "edge"}}))
    return d


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    """OUT with an x86-gateway and a pi5-4gb build, each packed into a box."""
    from builder.cli.main import main

    out = tmp_path_factory.mktemp("out")
    _fake_build(out, "x86-gateway", "x86-gateway")
    _fake_build(out, "pi5-4gb", "raspberry-pi5", vm_boot=True)
    for profile in ("x86-gateway", "pi5-4gb"):
        try:
            main(["vagrant-box", "--profile", profile, "--out", str(out)])
        except SystemExit as e:
            assert not e.code, f"builder vagrant-box --profile {profile}: exit {e.code}"
    return out


def _box(out: Path, profile: str, tmp: Path) -> tuple[dict[str, tarfile.TarInfo], Path]:
    box = out / profile / "vagrant-libvirt.box"
    with tarfile.open(box) as tf:  # a plain tar, as bsdtar (vagrant box add) reads it
        members = {m.name: m for m in tf.getmembers()}
        tf.extractall(tmp, filter="data")
    return members, tmp


@pytest.mark.parametrize("profile", ["x86-gateway", "pi5-4gb"])
def test_a_box_is_a_vagrant_libvirt_box_of_the_image(boxes: Path, profile: str,
                                                     tmp_path: Path) -> None:
    members, d = _box(boxes, profile, tmp_path)
    extra = {"vm-kernel", "vm-initrd"} if profile == "pi5-4gb" else set()
    assert set(members) == {"metadata.json", "Vagrantfile", "box.img"} | extra
    assert json.loads((d / "metadata.json").read_text()) == {
        "provider": "libvirt", "format": "qcow2", "virtual_size": 1}
    info = json.loads(run(["qemu-img", "info", "--output=json", d / "box.img"],
                          what="qemu-img info"))
    assert info["format"] == "qcow2" and info["virtual-size"] == IMAGE_BYTES
    raw = boxes / profile / f"{profile}.img"
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, d / "box.img"],
        what="qemu-img compare")  # the same disk, byte for byte
    for name in extra:
        assert (d / name).read_bytes() == (boxes / profile / name).read_bytes()
    text = (boxes / profile / "vagrant-vars.yml").read_text()
    assert "release_id: !unsafe 'rtest'" in text  # a value, never a template
    loader = type("Unsafe", (yaml.SafeLoader,), {})
    loader.add_constructor("!unsafe", lambda ld, node: ld.construct_scalar(node))
    pv = yaml.load(text, Loader=loader)
    assert pv["edge_llm_image_build"] is False and pv["release_id"] == "rtest"


def test_the_x86_box_boots_uefi_and_the_arm64_box_the_builds_kernel(boxes: Path,
                                                                    tmp_path: Path) -> None:
    _, x86 = _box(boxes, "x86-gateway", tmp_path / "x86")
    vf = (x86 / "Vagrantfile").read_text()
    assert 'lv.loader = "/usr/share/ovmf/OVMF.fd"' in vf  # the GPT image boots UEFI
    assert 'lv.machine_type = "q35"' in vf and 'lv.driver = kvm ? "kvm" : "qemu"' in vf
    # under TCG, as under `builder vm`: QEMU's max CPU without AVX (x86_gateway.TCG_CPU_V2)
    assert '  lv.cpu_mode = "maximum"' in vf
    assert '  lv.cpu_feature :name => "avx2", :policy => "disable"' in vf
    _, arm = _box(boxes, "pi5-4gb", tmp_path / "arm")
    vf = (arm / "Vagrantfile").read_text()
    assert 'lv.kernel = File.join(box, "vm-kernel")' in vf
    assert 'lv.initrd = File.join(box, "vm-initrd")' in vf
    assert 'lv.cmd_line = "root=/dev/vda2 rw rootwait console=ttyAMA0"' in vf
    assert 'lv.machine_arch = "aarch64"' in vf and 'lv.driver = "qemu"' in vf
    assert 'lv.cpu_model = "cortex-a76"' in vf and "loader" not in vf


def test_the_lab_validates_with_the_boxes_added(boxes: Path, tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed; `builder doctor --install --stage test` "
                    "installs Debian's vagrant and vagrant-libvirt")
    from builder.cache import Cache
    from builder.sshkey import builder_key

    cache = tmp_path / "cache"
    builder_key(Cache(cache))  # config.ssh.private_key_path must exist
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"), "VAGRANT_CWD": str(REPO),
           "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1",
           "EDGE_LLM_OUT": str(boxes), "EDGE_LLM_CACHE": str(cache)}

    def vagrant(*args: str) -> str:
        r = subprocess.run(["vagrant", *args], env=env, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    for profile in ("x86-gateway", "pi5-4gb"):
        vagrant("box", "add", "--name", f"edge-llm/{profile}",
                str(boxes / profile / "vagrant-libvirt.box"))
    assert "Vagrantfile validated successfully." in vagrant("validate")


def test_no_build_is_one_line(cli, tmp_path: Path) -> None:
    r = cli("vagrant-box", "--profile", "x86-gateway", "--out", str(tmp_path))
    assert r.code == 2 and r.err.count("\n") == 1
    assert "x86-gateway/manifest.json: no build of x86-gateway here; run `sudo builder " \
           "build --profile x86-gateway` first" in r.err


def test_a_build_without_a_vm_image_is_one_line(cli, tmp_path: Path) -> None:
    _fake_build(tmp_path, "pi5-4gb", "raspberry-pi5")  # built without --with-vm-image
    r = cli("vagrant-box", "--profile", "pi5-4gb", "--out", str(tmp_path))
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "build with `builder build --with-vm-image`" in r.err
    assert not (tmp_path / "pi5-4gb" / "vagrant-libvirt.box").exists()
