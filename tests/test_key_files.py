"""Files that hold a key are the user's alone: 0600 in a 0700 directory. The builder's
SSH login and release signing keys (the cache), a VM's overlay (the guest writes its API
key and SSH host private keys there) and a lab device's logs (a failed verify check
prints its arguments, the device's API key among them). Each test starts from what an
older builder or a loose umask left: directories 0755, files 0644."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from pathlib import Path

import pytest

from builder import resolve, sshkey, vm
from builder.cache import Cache
from builder.fleet import deploy as fleet
from builder.lab import run as lab
from builder.lab.inventory import LabDevice
from builder.profiles import ProfileStore


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("which", ["login", "signing"])
def test_the_builders_private_keys_are_0600_in_0700_directories(
        tmp_path: Path, loose_umask, which: str) -> None:
    cache = Cache(tmp_path / "cache")
    make = sshkey.builder_key if which == "login" else sshkey.signing_key
    key, _ = make(cache)
    assert (_mode(key.parent), _mode(key)) == (0o700, 0o600)
    # a cache an older builder made: the directory readable by everyone
    key.parent.chmod(0o755)
    key.chmod(0o644)
    again, _ = make(cache)
    assert again == key
    assert (_mode(key.parent), _mode(key)) == (0o700, 0o600)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_vms_overlay_is_0600_in_a_0700_state_directory(tmp_path: Path,
                                                         loose_umask) -> None:
    """vm.start as `builder vm` runs it (QEMU under TCG, a blank disk: the firmware
    finds nothing to boot, which is enough), over a state directory an older builder
    left 0755."""
    machine = resolve.target_named("x86-gateway").vm_machine(
        Path("."), {"inputs": {"profile": {"x86": {"cpu_levels": ["x86-64-v2"]}}}})
    missing = [str(f) for f in machine.files if not f.is_file()]
    if shutil.which(machine.qemu) is None or shutil.which("qemu-img") is None or missing:
        pytest.skip(f"needs {machine.qemu}, qemu-img and {', '.join(missing) or 'OVMF'} "
                    "(`builder doctor --install --stage vm --stage vm-x86`)")
    image = tmp_path / "image.raw"
    with image.open("wb") as f:
        f.truncate(1 << 20)
    state = tmp_path / "out" / ".vm-x86-gateway"
    state.mkdir(parents=True, mode=0o755)
    spec = vm.VmSpec(image=image, machine=machine, ssh_port=_free_port(), state_dir=state,
                     accel="tcg", memory_mb=128, cpus=1)
    vm.start(spec)
    try:
        assert _mode(state) == 0o700
        assert _mode(state / vm.OVERLAY) == 0o600
    finally:
        vm.stop(state, timeout=1)


def test_a_lab_devices_logs_are_in_a_0700_directory(tmp_path: Path, loose_umask) -> None:
    rp = ProfileStore().load("x86-gateway")
    d = LabDevice(name="gw", profile="x86-gateway", flash="deploy-only", host="127.0.0.1")
    pl = lab.Plan(d, resolve.resolve(rp, rp.concrete()), Path("manifest.json"), {},
                  release=None)  # type: ignore[arg-type]
    run_dir = tmp_path / "run"
    (run_dir / "devices" / "gw").mkdir(parents=True, mode=0o755)  # an earlier attempt's
    c = lab.Ctx(pl, lab.Lab(run_dir=run_dir, key=Path("key"), ssh=fleet.Ssh()), {})
    assert _mode(c.dir) == 0o700
