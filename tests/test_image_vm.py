"""Disk image and VM: pure layout/command tests, then a real rootfs built, imaged and booted.

The slow tests build a minimal bookworm rootfs with mmdebstrap (about 95 s), make a
UEFI disk image of it and boot it in QEMU (TCG here: about a minute to SSH)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from builder import image, resolve, vm
from builder.cache import sha256_file
from builder.errors import BuilderError
from builder.image import uefi_gpt
from builder.run import run
from builder.units import GiB, MiB

SEED = "test-image"
EPOCH = "1700000000"
LAYOUT = uefi_gpt.UefiLayout(root_type=uefi_gpt.ROOT_X86_64_TYPE,
                             efi_loader="usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                             efi_name="BOOTX64.EFI", kernel_cmdline="console=ttyS0 quiet")
def _machine(*levels: str):
    return resolve.target_named("x86-gateway").vm_machine(
        Path("."), {"inputs": {"profile": {"x86": {"cpu_levels": list(levels)}}}})


MACHINE = _machine("x86-64-v2", "x86-64-v3")


# --- pure ----------------------------------------------------------------------------------

def test_ids_derive_from_the_seed_only():
    a, b, c = (uefi_gpt.GptIds.from_seed(s) for s in ("x", "x", "y"))
    assert a == b
    assert a != c
    assert len({a.disk, a.esp_partuuid, a.root_partuuid, a.root_fs_uuid}) == 4
    assert len(a.esp_volid) == 8
    int(a.esp_volid, 16)


def test_layout_is_mib_aligned_with_room_for_both_gpts():
    plan = uefi_gpt.plan_disk(image.Usage(bytes=700 * MiB, inodes=30000), LAYOUT)
    assert plan.esp_offset == 1 * MiB
    assert plan.root_offset == plan.esp_offset + 256 * MiB
    assert plan.root_size >= 700 * MiB * 1.25
    assert all(n % MiB == 0 for n in (plan.esp_offset, plan.root_offset, plan.root_size))
    assert plan.disk_size == plan.root_offset + plan.root_size + 1 * MiB
    assert plan.root_inodes >= 30000


def test_sfdisk_script_fixes_every_id_and_type():
    ids = uefi_gpt.GptIds.from_seed(SEED)
    plan = uefi_gpt.plan_disk(image.Usage(bytes=100 * MiB, inodes=5000), LAYOUT)
    script = uefi_gpt.sfdisk_script(plan, ids, LAYOUT)
    assert "label: gpt" in script
    assert f"label-id: {ids.disk.upper()}" in script
    assert f"start=2048, size={256 * 2048}, type={uefi_gpt.ESP_TYPE}" in script
    assert f"type={uefi_gpt.ROOT_X86_64_TYPE}, uuid={ids.root_partuuid.upper()}" in script


def test_boot_entry_names_the_root_by_partuuid():
    entry = uefi_gpt.boot_entry("1234", "console=ttyS0 quiet")
    assert "linux /vmlinuz\ninitrd /initrd.img\n" in entry
    assert entry.endswith("options root=PARTUUID=1234 rw console=ttyS0 quiet\n")
    assert uefi_gpt.loader_conf().startswith("default edge.conf\ntimeout 0\n")


def test_newest_kernel_wins():
    names = ["config-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-9-cloud-amd64",
             "vmlinuz-6.1.0-10-cloud-amd64", "initrd.img-6.1.0-10-cloud-amd64"]
    assert uefi_gpt.pick_kernel(names) == "6.1.0-10-cloud-amd64"
    assert uefi_gpt.pick_kernel(["System.map-6.1"]) is None


def test_too_small_a_disk_is_one_line_naming_the_field():
    plan = uefi_gpt.plan_disk(image.Usage(bytes=2 * GiB, inodes=50000), LAYOUT)
    with pytest.raises(BuilderError) as err:
        uefi_gpt.check_fits(plan, 1 * GiB)
    msg = str(err.value)
    assert msg.startswith("disk too small for the rootfs: needs ")
    assert "device storage is 1GiB" in msg
    assert "device.storage.size" in msg
    assert "\n" not in msg
    uefi_gpt.check_fits(plan, 64 * GiB)


def test_boot_files_that_do_not_fit_the_esp_are_reported():
    plan = uefi_gpt.plan_disk(image.Usage(bytes=100 * MiB, inodes=5000),
                              dataclasses.replace(LAYOUT, esp_size=64 * MiB))
    with pytest.raises(BuilderError, match="ESP too small: kernel, initrd and systemd-boot"):
        uefi_gpt.check_fits(plan, None, boot_size=60 * MiB)


def test_measure_counts_blocks_and_hard_links_once(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 5000)
    os.link(tmp_path / "d" / "a", tmp_path / "d" / "b")
    (tmp_path / "empty").touch()
    (tmp_path / "short").symlink_to("d/a")
    usage = image.measure(tmp_path)
    assert usage.inodes == 1 + 4  # root, d, a(=b), empty, short
    assert usage.bytes == 2 * 4096 + 8192  # two directories, a's two blocks


def test_missing_kernel_is_reported(tmp_path: Path):
    (tmp_path / "boot").mkdir()
    with pytest.raises(BuilderError, match=r"no kernel in .*linux-image-amd64"):
        uefi_gpt.make_image(tmp_path, tmp_path / "out", LAYOUT, disk_size=None, seed=SEED)


def test_qemu_command_forwards_on_loopback_only(tmp_path: Path):
    spec = vm.VmSpec(image=tmp_path / "image.raw", machine=MACHINE, ssh_port=2222,
                     state_dir=tmp_path, forwards={8080: 8080})
    cmd = vm.qemu_command(spec, "tcg")
    netdev = cmd[cmd.index("-netdev") + 1]
    assert netdev == ("user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,"
                      "hostfwd=tcp:127.0.0.1:8080-:8080")
    assert cmd[cmd.index("-cpu") + 1] == MACHINE.tcg_cpu
    assert f"file={tmp_path / 'overlay.qcow2'},format=qcow2,if=virtio" in \
        cmd[cmd.index("-drive") + 1]
    assert "-daemonize" in cmd
    assert vm.qemu_command(spec, "kvm")[cmd.index("-cpu") + 1] == "host"


def test_under_tcg_the_vm_cpu_stops_at_the_engines_lowest_level():
    """QEMU emulates AVX2 about ten times slower than SSE4.2 (x86_gateway.TCG_CPU_V2):
    a build with a v2 backend boots a CPU without AVX under TCG; a v3-only build needs
    AVX2, so it keeps QEMU's max."""
    v2 = MACHINE.tcg_cpu.split(",")
    assert v2[0] == "max" and {"-avx", "-avx2", "-fma", "-f16c", "-bmi2"} <= set(v2)
    assert _machine("x86-64-v3").tcg_cpu == "max"


def test_last_console_line_strips_escape_codes():
    text = "Booting\r\n\x1b[0;32m  OK  \x1b[0m] Reached target ssh.\r\n\x1b[2J\r\n"
    assert vm.last_console_line(text) == "OK  ] Reached target ssh."
    assert vm.last_console_line("") == "(nothing on the serial console)"


def test_stop_without_a_vm_says_none_was_running(tmp_path: Path):
    (tmp_path / vm.PIDFILE).write_text(f"{os.getpid()}\n")  # not a qemu: never signalled
    assert vm.stop(tmp_path) is False
    assert not (tmp_path / vm.PIDFILE).exists()


# --- real: rootfs, image, boot -------------------------------------------------------------

NETWORK = "[Match]\nName=en*\n\n[Network]\nDHCP=yes\n"


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-test", "-f", key],
        what="ssh-keygen")
    return key


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory, ssh_key: Path, artifact_cache) -> Path:
    """The x86 gateway's Debian rootfs (the cached one the appliance build also uses),
    made to boot on its own: an address by DHCP and root let in by key."""
    from builder.profiles import ProfileStore
    from builder.rootfs import debian

    p = ProfileStore().load("x86-gateway").concrete()
    tarball = debian.build(resolve.target_named("x86-gateway").debian_spec(
        p, resolve.engine_named(p.engine.kind)), artifact_cache).tarball
    tree = tmp_path_factory.mktemp("rootfs") / "tree"
    tree.mkdir()
    run(["tar", "--numeric-owner", "-xpf", tarball, "-C", tree], what="unpacking the rootfs")
    (tree / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    (tree / "root/.ssh").chmod(0o700)
    (tree / "root/.ssh/authorized_keys").write_text(ssh_key.with_suffix(".pub").read_text())
    (tree / "root/.ssh/authorized_keys").chmod(0o600)
    (tree / "etc/systemd/network/20-wired.network").write_text(NETWORK)
    wants = tree / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "systemd-networkd.service").symlink_to(
        "/lib/systemd/system/systemd-networkd.service")
    (tree / "etc/hostname").write_text("edge-test\n")
    return tree


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, rootfs: Path) -> image.ImageResult:
    out = tmp_path_factory.mktemp("image")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", EPOCH)
        return uefi_gpt.make_image(rootfs, out, LAYOUT, disk_size=8 * GiB, seed=SEED,
                                   log_file=out.parent / "image.log")


@pytest.mark.slow
def test_image_has_a_gpt_with_esp_and_root(built: image.ImageResult):
    table = json.loads(run(["sfdisk", "--json", built.raw], what="sfdisk --json"))
    pt = table["partitiontable"]
    ids = uefi_gpt.GptIds.from_seed(SEED)
    assert pt["label"] == "gpt"
    assert pt["id"] == ids.disk.upper()
    esp, root = pt["partitions"]
    assert (esp["type"], esp["uuid"]) == (uefi_gpt.ESP_TYPE, ids.esp_partuuid.upper())
    assert (root["type"], root["uuid"]) == (uefi_gpt.ROOT_X86_64_TYPE,
                                            built.root_partuuid.upper())
    assert esp["start"] == 2048 and esp["size"] == 256 * 2048
    assert built.raw.stat().st_size == built.size


@pytest.mark.slow
def test_esp_holds_systemd_boot_kernel_and_entry(built: image.ImageResult):
    esp = f"{built.raw}@@{1 * MiB}"
    listing = run(["mdir", "-i", esp, "-b", "-/", "::/"], what="mdir")
    for name in ("EFI/BOOT/BOOTX64.EFI", "vmlinuz", "initrd.img", "loader/loader.conf"):
        assert f"::/{name}" in listing
    entry = run(["mtype", "-i", esp, "::/loader/entries/edge.conf"], what="mtype")
    assert f"options root=PARTUUID={built.root_partuuid} rw console=ttyS0 quiet" in entry


@pytest.mark.slow
def test_bmap_and_zst_describe_the_same_image(built: image.ImageResult):
    bmap = built.bmap.read_text()
    assert "<bmap" in bmap and f"<ImageSize> {built.size} </ImageSize>" in bmap
    assert built.sha256 == sha256_file(built.raw)
    listing = run(["zstd", "-l", "-v", built.zst], what="zstd -l")
    assert f"({built.size} B)" in listing


@pytest.mark.slow
def test_same_inputs_give_the_same_image(built: image.ImageResult, rootfs: Path,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Compared after `built`: mkfs.ext4 1.47.0 copies atimes, which its first read of a
    # fresh tree updates (relatime); 1.47.1 clamps them to SOURCE_DATE_EPOCH.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    a, b = (uefi_gpt.make_image(rootfs, tmp_path / name, LAYOUT, disk_size=None, seed=SEED)
            for name in ("a", "b"))
    assert a.sha256 == b.sha256
    assert a.root_partuuid == built.root_partuuid


@pytest.mark.slow
def test_too_small_a_disk_leaves_nothing_behind(rootfs: Path, tmp_path: Path):
    with pytest.raises(BuilderError, match=r"^disk too small for the rootfs: needs .*"
                                           r"device storage is 256MiB; .*device\.storage\.size"):
        uefi_gpt.make_image(rootfs, tmp_path / "out", LAYOUT, disk_size=256 * MiB,
                            seed=SEED)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_detect_accel_answers_and_does_not_hang():
    # A hung KVM probe would block forever: run it aside and treat "still running after
    # several minutes" as a hang (a guard, not a speed measurement).
    import threading

    vm.detect_accel.cache_clear()
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(vm.detect_accel(MACHINE)), daemon=True)
    t.start()
    t.join(timeout=300)
    assert not t.is_alive(), "detect_accel() hung"
    assert result[0] in ("kvm", "tcg")


@pytest.mark.slow
def test_probe_sees_the_firmware_under_tcg():
    """The probe's signal (OVMF on the serial console) exists, so working KVM passes it."""
    assert vm._probe(MACHINE, "tcg", 60)


@pytest.mark.slow
def test_image_boots_to_ssh_and_ctrl_c_powers_it_off_cleanly(
        built: image.ImageResult, ssh_key: Path, tmp_path: Path):
    """`builder vm` in the foreground: it boots, waits for SSH, and Ctrl-C shuts the guest
    down through its power button (one boot: minutes under TCG)."""
    spec = vm.VmSpec(image=built.raw, machine=MACHINE, ssh_port=_free_port(),
                     state_dir=tmp_path / "vm", forwards={_free_port(): 8080})
    seen: dict = {}

    def on_ready() -> None:  # SSH is up by now; look around, then Ctrl-C
        handle = vm.VmHandle(spec, vm.running(spec.state_dir) or 0, "", time.monotonic())
        seen["pid"] = handle.pid
        seen["cmdline"] = vm.ssh(handle, "root", ssh_key, "cat /proc/cmdline")
        seen["root"] = vm.ssh(handle, "root", ssh_key, "findmnt -no FSTYPE,LABEL /").split()
        threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT)).start()

    vm.run_foreground(spec, on_ready, user="root", key=ssh_key, ssh_timeout=420)
    assert f"root=PARTUUID={built.root_partuuid}" in seen["cmdline"]
    assert seen["root"] == ["ext4", "edge-root"]
    assert "reboot: Power down" in (spec.state_dir / vm.SERIAL).read_text(errors="replace")
    assert not vm._is_qemu(seen["pid"])
    assert vm.running(spec.state_dir) is None
    assert not (spec.state_dir / vm.PIDFILE).exists()
    assert sha256_file(built.raw) == built.sha256  # the overlay took every write


@pytest.mark.slow
def test_wait_ssh_reports_a_dead_vm(built: image.ImageResult, ssh_key: Path, tmp_path: Path):
    spec = vm.VmSpec(image=built.raw, machine=MACHINE, ssh_port=_free_port(),
                     state_dir=tmp_path / "vm",
                     accel="tcg")
    handle = vm.start(spec)
    vm.stop(spec.state_dir, timeout=1)
    with pytest.raises(BuilderError, match="the VM stopped before SSH came up"):
        vm.wait_ssh(handle, "root", ssh_key, timeout=30)


@pytest.mark.slow
def test_run_foreground_stops_the_vm_on_ctrl_c(built: image.ImageResult, tmp_path: Path):
    spec = vm.VmSpec(image=built.raw, machine=MACHINE, ssh_port=_free_port(),
                     state_dir=tmp_path / "vm",
                     accel="tcg")
    seen: list[int | None] = []

    def on_ready() -> None:
        seen.append(vm.running(spec.state_dir))
        threading.Timer(1, os.kill, (os.getpid(), signal.SIGINT)).start()

    # Still in the firmware when Ctrl-C comes: the power button is ignored, so this
    # also covers the fall-back to SIGTERM after stop_timeout.
    vm.run_foreground(spec, on_ready, stop_timeout=3)
    assert seen and seen[0] is not None
    assert not vm._is_qemu(seen[0])
    assert vm.running(spec.state_dir) is None
    assert not (spec.state_dir / vm.PIDFILE).exists()
