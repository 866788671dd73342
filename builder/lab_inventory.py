"""The lab inventory of `builder lab run` (docs/lab.md): which devices, with which
profile, reached how, flashed how. A mistake is one line naming the file, line, device
and field, and what to write instead. Also which devices share a writer (lanes)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuilderError, display_path
from .provision import PASSWORD_VARS
from .yamlsrc import Document, load_document

# How a device is flashed -> what the build must deliver for it (None: nothing written).
FLASH_METHODS: dict[str, str | None] = {"sd": "disk-image", "jetson-recovery": "flash-package",
                                        "deploy-only": None}
DEVICE_FIELDS = {
    "profile": "the device's profile (name or YAML path)",
    "flash": "how the build reaches it: sd, jetson-recovery or deploy-only",
    "writer": "flash: sd: the SD/USB writer's block device",
    "after_flash": "a command run on this machine after a flash (e.g. switch an SD mux "
                   "to the device, power it on)",
    "ansible_host": "its address (default: the device's name)",
    "ansible_port": "its SSH port (default 22)",
    "ansible_user": "its admin user (default: the profile's os.admin_user)",
    "ansible_ssh_private_key_file": "the SSH key (default: the builder's own)",
    "api_url": "where this machine reaches its public port (default http://HOST:PORT of "
               "the profile's service)",
    "ready_timeout": "seconds it may take to answer after a flash or deploy (default 600)",
}
TOP_FIELDS = ("defaults", "devices")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STEPS_AFTER = ("ready", "verify", "benchmark")


@dataclass(frozen=True)
class Device:
    name: str
    profile: str
    flash: str
    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    writer: str | None = None
    after_flash: str | None = None
    api_url: str | None = None
    ready_timeout: int = 600
    where: str = ""  # file:line:col of its entry, for messages
    profile_where: str = ""  # and of its profile

    @property
    def steps(self) -> tuple[str, ...]:
        return ("deploy" if self.flash == "deploy-only" else "flash", *STEPS_AFTER)

    @property
    def writer_key(self) -> str | None:
        """What it shares with other devices while it is flashed: its writer's block
        device, or this machine's USB for boards in recovery mode (a flash finds every
        board in recovery mode there); None for a deploy."""
        if self.flash == "sd" and self.writer:
            return f"writer {os.path.realpath(self.writer)}"
        if FLASH_METHODS[self.flash] is not None:
            return f"{self.flash} USB of this machine"
        return None


def _where(doc: Document, *loc: str | int) -> str:
    while loc:
        pos = doc.positions.get(tuple(loc))
        if pos:
            return str(pos)
        loc = loc[:-1]
    return f"{display_path(doc.file)}:1:1"


def parse_inventory(path: Path) -> list[Device]:
    """The devices of a lab inventory, checked; a mistake is one line naming the file,
    line, device and field, and what to write instead."""
    if not path.is_file():
        raise BuilderError(f"--inventory {path}: no such file; write a lab inventory "
                           "(docs/lab.md shows one) or give its path")
    doc = load_document(path, top="a lab inventory must be a mapping with devices: "
                                   "(docs/lab.md)")
    for key in doc.data:
        if key not in TOP_FIELDS:
            raise BuilderError(f"{_where(doc, key)}: {key}: unknown field; a lab inventory "
                               f"has {' and '.join(TOP_FIELDS)}")
    defaults = doc.data.get("defaults") or {}
    devices = doc.data.get("devices")
    if not isinstance(defaults, dict):
        raise BuilderError(f"{_where(doc, 'defaults')}: defaults: expected a mapping of "
                           "fields every device takes (e.g. ansible_user: edge)")
    if not isinstance(devices, dict) or not devices:
        raise BuilderError(f"{_where(doc, 'devices')}: devices: expected a mapping of device "
                           "names to their fields (profile:, flash:, ansible_host:, ...)")
    out = []
    for name, fields_ in devices.items():
        if not NAME.match(str(name)):
            raise BuilderError(f"{_where(doc, 'devices', name)}: devices.{name}: a device "
                               "name is letters, digits, '.', '_' and '-' (its records are "
                               "files named after it)")
        if not isinstance(fields_, dict):
            raise BuilderError(f"{_where(doc, 'devices', name)}: devices.{name}: expected "
                               "a mapping (profile:, flash:, ansible_host:, ...)")
        merged = {**defaults, **fields_}
        for key in merged:
            loc = ("devices", name, key) if key in fields_ else ("defaults", key)
            if key in PASSWORD_VARS:
                raise BuilderError(f"{_where(doc, *loc)}: {'.'.join(map(str, loc))}: "
                                   "passwords are not allowed in a lab inventory; log in "
                                   "with an SSH key (ansible_ssh_private_key_file)")
            if key not in DEVICE_FIELDS:
                raise BuilderError(f"{_where(doc, *loc)}: {'.'.join(map(str, loc))}: unknown "
                                   f"field; a device takes {', '.join(DEVICE_FIELDS)}")
        out.append(_device(doc, str(name), merged))
    return out


def _device(doc: Document, name: str, f: dict[str, Any]) -> Device:
    at = _where(doc, "devices", name)
    dotted = f"devices.{name}"

    def text(key: str) -> str | None:
        v = f.get(key)
        if (v is not None and not isinstance(v, (str, int))) or isinstance(v, bool):
            raise BuilderError(f"{_where(doc, 'devices', name, key)}: {dotted}.{key}: "
                               f"expected text, got {v!r}")
        return None if v is None else str(v)

    def number(key: str, default: int, low: int) -> int:
        v = f.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise BuilderError(f"{_where(doc, 'devices', name, key)}: {dotted}.{key}: "
                               f"expected a whole number of at least {low}, got {v!r}")
        return v

    profile, flash = text("profile"), text("flash")
    if not profile:
        raise BuilderError(f"{at}: {dotted}: no profile: add profile: NAME (`builder "
                           "profiles list` shows them)")
    if not flash:
        raise BuilderError(f"{at}: {dotted}: no flash method: add flash: sd (with writer: "
                           "/dev/...), jetson-recovery or deploy-only")
    if flash not in FLASH_METHODS:
        raise BuilderError(f"{_where(doc, 'devices', name, 'flash')}: {dotted}.flash: "
                           f"{flash!r} is not a flash method; use "
                           f"{', '.join(FLASH_METHODS)}")
    writer, after = text("writer"), text("after_flash")
    if flash == "sd" and not writer:
        raise BuilderError(f"{at}: {dotted}: flash: sd needs writer: the SD/USB writer's "
                           "whole-disk block device (e.g. /dev/disk/by-id/usb-...)")
    if writer and flash != "sd":
        raise BuilderError(f"{_where(doc, 'devices', name, 'writer')}: {dotted}.writer: "
                           f"only flash: sd writes through a writer (this device: {flash})")
    if after and FLASH_METHODS[flash] is None:
        raise BuilderError(f"{_where(doc, 'devices', name, 'after_flash')}: "
                           f"{dotted}.after_flash: a {flash} device is not flashed")
    return Device(name=name, profile=profile, flash=flash,
                  host=text("ansible_host") or name,
                  port=number("ansible_port", 22, 1), user=text("ansible_user"),
                  key_file=text("ansible_ssh_private_key_file"), writer=writer,
                  after_flash=after, api_url=text("api_url"),
                  ready_timeout=number("ready_timeout", 600, 1), where=at,
                  profile_where=_where(doc, *(("devices", name, "profile") if "profile" in
                                              (doc.data["devices"][name] or {})
                                              else ("defaults", "profile"))))


def lanes(devices: list[Device]) -> list[list[Device]]:
    """Devices that share a writer in one lane, in inventory order; every other device
    a lane of its own. A lane runs one device after another; lanes run side by side."""
    groups: dict[str, list[Device]] = {}
    for d in devices:
        groups.setdefault(d.writer_key or f"device {d.name}", []).append(d)
    return list(groups.values())
