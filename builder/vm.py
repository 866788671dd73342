"""Boot a disk image in QEMU (virtio) to try an appliance before it meets a device.

The machine (QEMU binary, board, firmware or direct kernel boot, console) comes from
the target (Target.vm_machine); this module runs it. The image is never written: the
VM runs on a qcow2 overlay made fresh at each start, so every boot is a first boot.
Ports are forwarded on 127.0.0.1 only. KVM is used when the machine can use it and it
works; /dev/kvm can exist and still hang (nested virtualisation), so a short probe
boot decides, and TCG is the fallback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BuilderError, display_path
from .log import log
from .run import ToolError, run

PIDFILE, SERIAL, OVERLAY, QMP = "qemu.pid", "serial.log", "overlay.qcow2", "qmp.sock"
ACCEL = "accel"  # kvm or tcg: how the last VM started here runs (TCG is far slower)
QEMU_LOG = "qemu.log"
PROBE_SECONDS = 8  # OVMF under working KVM prints within ~1 s; a hung vCPU never does
ACCEL_ENV = "EDGE_LLM_ACCEL"  # "kvm" or "tcg": skip the probe


@dataclass(frozen=True)
class Machine:
    """A QEMU machine for one target's images."""

    qemu: str  # qemu-system-x86_64, qemu-system-aarch64
    args: tuple[str, ...]  # board and firmware or kernel: -machine q35 -bios OVMF.fd ...
    tcg_cpu: str  # -cpu under TCG: max, cortex-a76 ...
    kvm: bool = False  # the host can run it with KVM (same architecture)
    files: tuple[Path, ...] = ()  # what must exist (firmware, kernel), with its package
    package: str = ""  # the Debian package that provides `files` (an error says it)


@dataclass
class VmSpec:
    image: Path
    machine: Machine
    ssh_port: int
    state_dir: Path  # pidfile, serial.log, overlay.qcow2, qmp.sock, qemu.log
    forwards: dict[int, int] = field(default_factory=dict)  # host port -> guest port
    memory_mb: int = 2048
    cpus: int = 2
    accel: str | None = None  # None: detect_accel()
    disk_size: int | None = None  # bytes the VM's disk has (bigger than the image: a medium)


@dataclass
class VmHandle:
    spec: VmSpec
    pid: int
    accel: str
    started: float  # time.monotonic() at start

    @property
    def serial_log(self) -> Path:
        return self.spec.state_dir / SERIAL

    @property
    def ssh_port(self) -> int:
        return self.spec.ssh_port


def for_build(build_dir: Path, machine_of: Callable[[Path, dict], Machine],
              **settings) -> VmSpec:
    """A VM of the build in `build_dir` (out/<profile>/): the machine its target boots it
    on (`machine_of`: Target.vm_machine) and the disk image a VM boots (its own test
    image when the target makes one, since a device image may not boot in a VM; else
    the delivered image)."""
    mpath = build_dir / "manifest.json"
    if not mpath.is_file():
        raise BuilderError(f"{display_path(mpath)}: no build here")
    m = json.loads(mpath.read_text())
    files = (m.get("delivery") or {}).get("files", {})
    name = files.get("vm-image") or files.get("image")
    if not name:
        raise BuilderError(f"{display_path(mpath)}: this build delivers no disk image a VM "
                           "can boot")
    machine = machine_of(build_dir, m)
    return VmSpec(image=build_dir / name, machine=machine, **settings)


# --- pure: command lines and console text ------------------------------------------------

def hostfwd(ssh_port: int, forwards: dict[int, int]) -> str:
    rules = {ssh_port: 22, **forwards}
    return ",".join(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in rules.items())


def qemu_command(spec: VmSpec, accel: str) -> list[str]:
    d, m = spec.state_dir, spec.machine
    return [
        m.qemu, "-name", "edge-llm-vm", "-nodefaults", *m.args,
        "-accel", accel, "-cpu", "host" if accel == "kvm" else m.tcg_cpu,
        "-smp", str(spec.cpus), "-m", str(spec.memory_mb),
        "-drive", f"file={d / OVERLAY},format=qcow2,if=virtio,discard=unmap",
        "-netdev", f"user,id=n0,{hostfwd(spec.ssh_port, spec.forwards)}",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",  # entropy for sshd's first start
        "-serial", f"file:{d / SERIAL}", "-display", "none",
        "-qmp", f"unix:{d / QMP},server,nowait",
        "-daemonize", "-pidfile", str(d / PIDFILE),
    ]


def probe_command(m: Machine, accel: str) -> list[str]:
    """A firmware-only boot that prints to the serial console (stdout) within seconds."""
    cpu = "host" if accel == "kvm" else m.tcg_cpu
    return [m.qemu, "-nodefaults", *m.args, "-accel", accel, "-cpu", cpu, "-m", "128",
            "-display", "none", "-serial", "stdio", "-no-reboot"]


def ssh_command(port: int, user: str, key: Path, *remote: str) -> list[str]:
    return ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-p", str(port),
            f"{user}@127.0.0.1", *remote]


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][0-9A-Za-z]|[=>])")


def last_console_line(text: str) -> str:
    """The last line a person would read on the console (escape codes stripped)."""
    for line in reversed(re.split(r"[\r\n]+", _ANSI.sub("", text))):
        line = "".join(c for c in line if c.isprintable()).strip()
        if line:
            return line[:200]
    return "(nothing on the serial console)"


# --- processes ---------------------------------------------------------------------------

def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PIDFILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _is_qemu(pid: int) -> bool:
    """Alive, not a zombie, and a QEMU: never signal a pid some other process reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and b"qemu-system" in cmdline.split(b"\0", 1)[0]


def running(state_dir: Path) -> int | None:
    """The pid of the VM of this state directory, if it runs."""
    pid = _read_pid(state_dir)
    return pid if pid is not None and _is_qemu(pid) else None


# The firmware's console output (escape codes, then "BdsDxe: loading Boot0001 ...") tells
# the vCPU runs; QEMU's own messages on the same stream (a broken nested KVM prints "KVM
# internal error ... emulation failure" and a register dump, then hangs) must not count.
_FIRMWARE = ("\x1b[", "BdsDxe")
_KVM_FAILED = ("KVM internal error", "emulation failure", "failed to initialize kvm")


def _probe(m: Machine, accel: str, timeout: float) -> bool:
    """Does a firmware boot with `accel` reach the serial console within `timeout` s?"""

    class _Verdict(Exception):
        def __init__(self, ok: bool):
            self.ok = ok

    def on_line(line: str) -> None:
        if any(m in line for m in _FIRMWARE):
            raise _Verdict(True)
        if any(m in line for m in _KVM_FAILED):
            raise _Verdict(False)

    # `timeout` ends a hung QEMU: run() only checks its own timeout between lines.
    cmd = ["timeout", "-k", "2", str(int(timeout)), *probe_command(m, accel)]
    try:
        run(cmd, what=f"probing {accel}", on_line=on_line)
    except _Verdict as v:  # run() killed QEMU on the way out
        return v.ok
    except ToolError as e:
        log.debug("%s probe: %s", accel, e)
    return False


@functools.cache
def detect_accel(m: Machine) -> str:
    """'kvm' if the machine can use it, /dev/kvm is usable and a probe boot makes
    progress; else 'tcg'."""
    forced = os.environ.get(ACCEL_ENV)
    if forced:
        if forced not in ("kvm", "tcg"):
            raise BuilderError(f"{ACCEL_ENV} must be kvm or tcg, got {forced!r}")
        return forced if m.kvm else "tcg"
    if not m.kvm or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    check_machine(m)
    if _probe(m, "kvm", PROBE_SECONDS):
        return "kvm"
    log.warning("/dev/kvm is there but a KVM test boot failed or hung (nested "
                "virtualisation?); using TCG, which is much slower")
    return "tcg"


def check_machine(m: Machine) -> None:
    for f in m.files:
        if not f.is_file():
            raise BuilderError(f"no {f.name} at {f}" + (f": install the {m.package} package"
                                                         if m.package else ""))


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as QEMU's slirp does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise BuilderError(f"port {port} on 127.0.0.1 is in use; pick another one for "
                               f"the VM") from None


def start(spec: VmSpec) -> VmHandle:
    """Boot `spec.image` in the background; returns once QEMU runs (not when SSH is up)."""
    if not spec.image.is_file():
        raise BuilderError(f"no disk image at {display_path(spec.image)}")
    check_machine(spec.machine)
    d = spec.state_dir
    # the overlay takes what the guest writes: its API key and SSH host private keys;
    # only the user running the VM reads it (0600 in a 0700 directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.chmod(0o700)
    pid = running(d)
    if pid is not None:
        raise BuilderError(f"a VM from {display_path(d)} is already running (pid {pid}); "
                           f"stop it first")
    if len(str((d / QMP).resolve())) > 107:  # the limit of a unix socket's path
        raise BuilderError(f"VM state directory path too long for QEMU's control socket: "
                           f"{display_path(d)}; use a shorter one")
    if spec.ssh_port in spec.forwards:
        raise BuilderError(f"port {spec.ssh_port} is both the SSH port and a forwarded one")
    for port in (spec.ssh_port, *spec.forwards):
        _check_port_free(port)
    for name in (PIDFILE, QMP, OVERLAY, SERIAL, QEMU_LOG, ACCEL):
        (d / name).unlink(missing_ok=True)
    accel = spec.accel or detect_accel(spec.machine)
    (d / ACCEL).write_text(accel + "\n")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", spec.image.resolve(),
         d / OVERLAY, *([str(spec.disk_size)] if spec.disk_size else [])],
        what="creating the VM's overlay disk", log_file=d / QEMU_LOG)
    (d / OVERLAY).chmod(0o600)
    # -daemonize: QEMU returns once the VM is set up, so errors (a port taken, bad
    # firmware) come back here; the VM then outlives this process until stop().
    run(qemu_command(spec, accel), what="starting the VM (qemu)", log_file=d / QEMU_LOG,
        timeout=60)
    pid = _read_pid(d)
    if pid is None:
        raise BuilderError(f"qemu started but wrote no pidfile in {display_path(d)}")
    log.info("VM started (pid %d, %s), console log %s", pid, accel, display_path(d / SERIAL))
    return VmHandle(spec=spec, pid=pid, accel=accel, started=time.monotonic())


def _console_tail(handle: VmHandle) -> str:
    try:
        return last_console_line(handle.serial_log.read_text(errors="replace"))
    except FileNotFoundError:
        return "(no serial log)"


def wait_ssh(handle: VmHandle, user: str, key: Path, timeout: float) -> None:
    """Poll until `ssh user@VM true` works; BuilderError (with the console) if it never does."""
    if not key.is_file():
        raise BuilderError(f"no SSH key at {display_path(key)}")
    if key.stat().st_mode & 0o077:  # ssh ignores such a key and the wait would time out
        raise BuilderError(f"SSH key {display_path(key)} is readable by others; "
                           f"chmod 600 it")
    deadline = time.monotonic() + timeout
    cmd = ssh_command(handle.ssh_port, user, key, "true")
    while True:
        if not _is_qemu(handle.pid):
            raise BuilderError(f"the VM stopped before SSH came up (qemu exited); last "
                               f"console line: {_console_tail(handle)} "
                               f"(console log: {display_path(handle.serial_log)})")
        try:
            run(cmd, what="ssh into the VM", timeout=30)
            log.info("VM answers SSH after %.0fs", time.monotonic() - handle.started)
            return
        except ToolError as e:
            last_error = str(e)
        if time.monotonic() > deadline:
            raise BuilderError(f"the VM did not answer SSH on 127.0.0.1:{handle.ssh_port} "
                               f"within {timeout:.0f}s ({last_error}); last console line: "
                               f"{_console_tail(handle)} "
                               f"(console log: {display_path(handle.serial_log)})")
        time.sleep(2)


def ssh(handle: VmHandle, user: str, key: Path, command: str, *,
        timeout: float = 120) -> str:
    """Run one shell command in the VM; its output (stdout+stderr)."""
    return run(ssh_command(handle.ssh_port, user, key, command),
               what=f"in the VM: {command}", timeout=timeout)


def _qmp(sock_path: Path, command: str, timeout: float = 5) -> None:
    """Send one QMP command (after the capabilities handshake); wait for its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        f = s.makefile("rw", encoding="utf-8")
        f.readline()  # greeting
        for cmd in ("qmp_capabilities", command):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            while True:  # skip asynchronous events until the reply
                reply = json.loads(f.readline() or "{}")
                if "return" in reply or "error" in reply or not reply:
                    break


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_qemu(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def stop(state_dir: Path, timeout: float = 60) -> bool:
    """Shut the VM down: ACPI power button, then SIGTERM, then SIGKILL.

    Returns whether a VM was running. A guest still in its firmware ignores the power
    button, so that waits `timeout`; Ctrl-C during the wait terminates at once. The
    overlay stays for inspection until the next start()."""
    pid = running(state_dir)
    interrupted = False
    if pid is not None:
        clean = False
        try:
            _qmp(state_dir / QMP, "system_powerdown")
            log.info("powering the VM off (up to %.0fs; Ctrl-C to force)", timeout)
            clean = _wait_gone(pid, timeout)
        except (OSError, ValueError) as e:
            log.debug("QMP powerdown failed: %s", e)
        except KeyboardInterrupt:
            interrupted = True
        if not clean:
            log.warning("VM (pid %d) did not power off; terminating it", pid)
            _terminate(pid)
    for name in (PIDFILE, QMP):
        (state_dir / name).unlink(missing_ok=True)
    if interrupted:
        raise KeyboardInterrupt
    return pid is not None


def reset(state_dir: Path) -> None:
    """Hard reset, like the reset line of a board: no shutdown, the disk as it is."""
    if running(state_dir) is None:
        raise BuilderError(f"no VM is running from {display_path(state_dir)}")
    _qmp(state_dir / QMP, "system_reset")


def _terminate(pid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, grace):
            return


def run_foreground(spec: VmSpec, on_ready: Callable[[], None], *, user: str | None = None,
                   key: Path | None = None, ssh_timeout: float = 600,
                   stop_timeout: float = 60) -> None:
    """`builder vm`: start, wait for SSH when `user` and `key` are given, call `on_ready`
    (tell the user how to reach it), then wait for Ctrl-C or the guest powering off, and
    shut down cleanly either way."""
    handle = start(spec)
    try:
        if user is not None and key is not None:
            wait_ssh(handle, user, key, ssh_timeout)
        on_ready()
        while _is_qemu(handle.pid):
            time.sleep(1)
        log.info("the VM powered off")
    except KeyboardInterrupt:
        log.info("shutting the VM down")
    finally:
        stop(spec.state_dir, timeout=stop_timeout)
