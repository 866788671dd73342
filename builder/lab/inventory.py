"""The lab inventory of `builder lab run` (docs/lab.md): which devices, with which
profile, reached how, flashed how. A mistake is one line naming the file, line, device
and field, and what to write instead. Also which devices share a writer (lanes).

The values that reach ssh's command line, its config and Ansible's inventory (host,
port, user, key file) and the writer's path are parsed into what they name and must
match its pattern: nothing that ssh would take for an option ('-oProxyCommand=...'),
no spaces, newlines or quotes that would split an ssh_config line, no braces a
template engine would act on."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import names, plugins
from ..contracts import FlashMethod
from ..errors import BuilderError, display_path
from ..provision import PASSWORD_VARS
from ..yamlsrc import Document, load_document

# How a device gets its build: a flash method a target family brings (contracts:
# FlashMethod: what delivery it writes, whether through a writer), or a deploy over SSH
DEPLOY_ONLY = "deploy-only"
FLASH_METHODS: dict[str, FlashMethod] = plugins.flash_methods()


def _methods() -> str:
    return ", ".join([*FLASH_METHODS, DEPLOY_ONLY])
DEVICE_FIELDS = {
    "profile": "the device's profile (name or YAML path)",
    "flash": "how the build reaches it: a flash method its target brings (sd, "
             "jetson-recovery) or deploy-only",
    "writer": "a flash method through a writer (sd): the writer's block device",
    "after_flash": "a command run on this machine after a flash (e.g. switch an SD mux "
                   "to the device, power it on)",
    "ansible_host": "its address (default: the device's name)",
    "ansible_port": "its SSH port (default 22)",
    "ansible_user": "its admin user (default: the profile's os.admin_user)",
    "ansible_ssh_private_key_file": "the SSH key (default: the builder's own)",
    "api_url": "where this machine reaches its public port (default http://HOST:PORT of "
               "the profile's service)",
    "ready_timeout": "seconds it may take to answer after a flash or deploy (default 600)",
    "confirm": "true: `builder lab run` may overwrite this device (its card, its board) "
               "without --yes",
}
TOP_FIELDS = ("defaults", "devices")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
STEPS_AFTER = ("ready", "verify", "benchmark")



@dataclass(frozen=True)
class LabDevice:
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
    confirm: bool = False  # may be overwritten without --yes
    where: str = ""  # file:line:col of its entry, for messages
    profile_where: str = ""  # and of its profile

    @property
    def steps(self) -> tuple[str, ...]:
        return ("deploy" if self.flash == DEPLOY_ONLY else "flash", *STEPS_AFTER)

    @property
    def writer_key(self) -> str | None:
        """What it shares with other devices while it is flashed: its writer's block
        device, or this machine's USB for boards in recovery mode (a flash finds every
        board in recovery mode there); None for a deploy."""
        if self.writer:
            return f"writer {os.path.realpath(self.writer)}"
        if self.flash != DEPLOY_ONLY:
            return f"{self.flash} USB of this machine"
        return None

    @property
    def overwrites(self) -> str | None:
        """What a run writes over (for the question it does not ask); None: nothing."""
        if self.writer:
            return f"what {self.writer} holds"
        if self.flash != DEPLOY_ONLY:
            return f"the board {FLASH_METHODS[self.flash].description}"
        return None


def require_confirmed(devices: list[LabDevice], yes: bool) -> None:
    """One line naming the first device a run would overwrite without its inventory
    entry saying confirm: true (a lab runs unattended: nobody answers a question)."""
    if yes:
        return
    bad = [d for d in devices if d.overwrites and not d.confirm]
    if bad:
        d = bad[0]
        more = f" (and {len(bad) - 1} more device(s))" if len(bad) > 1 else ""
        raise BuilderError(f"{d.where}: devices.{d.name}: flash: {d.flash} overwrites "
                           f"{d.overwrites}{more}; add confirm: true to the device (or run "
                           "with --yes) to let the lab write it")


def _shown(text: str) -> str:
    """A name from the file as a message shows it: one line, whatever it holds."""
    return text if text.isprintable() else repr(text)


def _where(doc: Document, *loc: str | int) -> str:
    while loc:
        pos = doc.positions.get(tuple(loc))
        if pos:
            return str(pos)
        loc = loc[:-1]
    return f"{display_path(doc.file)}:1:1"


def parse_inventory(path: Path) -> list[LabDevice]:
    """The devices of a lab inventory, checked; a mistake is one line naming the file,
    line, device and field, and what to write instead."""
    if not path.is_file():
        raise BuilderError(f"--inventory {path}: no such file; write a lab inventory "
                           "(docs/lab.md shows one) or give its path")
    doc = load_document(path, top="a lab inventory must be a mapping with devices: "
                                   "(docs/lab.md)")
    for key in doc.data:
        if key not in TOP_FIELDS:
            raise BuilderError(f"{_where(doc, key)}: {_shown(key)}: unknown field; a lab "
                               f"inventory has {' and '.join(TOP_FIELDS)}")
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
        if not NAME.fullmatch(str(name)):
            raise BuilderError(f"{_where(doc, 'devices', name)}: devices.{_shown(name)}: a "
                               "device name is letters, digits, '.', '_' and '-' (its records "
                               "are files named after it)")
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
                raise BuilderError(f"{_where(doc, *loc)}: {_shown('.'.join(map(str, loc)))}: "
                                   f"unknown field; a device takes {', '.join(DEVICE_FIELDS)}")
        out.append(_device(doc, str(name), merged))
    return out


def _device(doc: Document, name: str, f: dict[str, Any]) -> LabDevice:
    at = _where(doc, "devices", name)
    dotted = f"devices.{name}"
    own = doc.data["devices"][name] or {}

    def where(key: str) -> str:
        """Where the value was written: the device's entry, else defaults."""
        return _where(doc, *(("devices", name, key) if key in own else ("defaults", key)))

    def bad(key: str, what: str) -> BuilderError:
        return BuilderError(f"{where(key)}: {dotted}.{key}: {what}")

    def text(key: str) -> str | None:
        v = f.get(key)
        if (v is not None and not isinstance(v, (str, int))) or isinstance(v, bool):
            raise bad(key, f"expected text, got {v!r}")
        return None if v is None else str(v)

    def number(key: str, default: int, low: int, high: int | None = None) -> int:
        v = f.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high and v > high):
            raise bad(key, f"expected a whole number of at least {low}"
                      f"{f' and at most {high}' if high else ''}, got {v!r}")
        return v

    def host(key: str, default: str) -> str:
        v = text(key) or default
        if names.is_host(v):
            return v
        raise bad(key, f"{v!r} is not a host name or IP address (letters, digits, '-', "
                       "'_' and '.'; e.g. ansible_host: 10.0.40.21)")

    def user(key: str) -> str | None:
        v = text(key)
        if v is None or names.is_user(v):
            return v
        raise bad(key, f"{v!r} is not a user name (a letter or '_', then letters, digits, "
                       "'.', '_' and '-'; at most 32)")

    def path(key: str, absolute: bool = False) -> str | None:
        v = text(key)
        if v is None:
            return None
        if names.is_path_text(v) and (v.startswith("/") or not absolute):
            return str(Path(v).expanduser())
        raise bad(key, f"{v!r} is not {'an absolute' if absolute else 'a'} path this field "
                       "takes (letters, digits and _ . / + @ , : = ~ -, not starting with "
                       "'-'; no spaces or quotes)")

    def url(key: str) -> str | None:
        v = text(key)
        if v is None:
            return None
        try:
            u = urlsplit(v)
            ok = (u.scheme in ("http", "https") and u.hostname is not None
                  and names.is_host(u.hostname)
                  and not re.search(r"[\s\x00-\x1f\x7f]", v))
            u.port  # noqa: B018  (a port that is not a number raises)
        except ValueError:
            ok = False
        if not ok:
            raise bad(key, f"{v!r} is not an http(s)://HOST:PORT address")
        return v

    def command(key: str) -> str | None:
        v = text(key)
        if v is None:
            return None
        try:
            words = shlex.split(v)
        except ValueError as e:
            raise bad(key, f"{v!r} cannot be split into words ({e})") from None
        if not words:
            raise bad(key, "an empty command")
        return v

    profile, flash = text("profile"), text("flash")
    if not profile:
        raise BuilderError(f"{at}: {dotted}: no profile: add profile: NAME (`builder "
                           "profiles list` shows them)")
    if not flash:
        raise BuilderError(f"{at}: {dotted}: no flash method: add flash: sd (with writer: "
                           f"/dev/...), or one of {_methods()}")
    if flash not in FLASH_METHODS and flash != DEPLOY_ONLY:
        raise bad("flash", f"{flash!r} is not a flash method; use {_methods()}")
    method = FLASH_METHODS.get(flash)
    writer, after = path("writer", absolute=True), command("after_flash")
    if method and method.writer and not writer:
        raise BuilderError(f"{at}: {dotted}: flash: {flash} needs writer: ({flash} is "
                           f"{method.description})")
    if writer and not (method and method.writer):
        raise bad("writer", f"only a flash method through a writer "
                  f"({', '.join(m.name for m in FLASH_METHODS.values() if m.writer)}) takes "
                  f"one (this device: {flash})")
    if after and method is None:
        raise bad("after_flash", f"a {flash} device is not flashed")
    confirm = f.get("confirm", False)
    if not isinstance(confirm, bool):
        raise bad("confirm", f"expected true or false, got {confirm!r}")
    if "confirm" in own and method is None:
        raise bad("confirm", f"a {flash} device is not written")
    return LabDevice(name=name, profile=profile, flash=flash, host=host("ansible_host", name),
                  port=number("ansible_port", 22, 1, 65535), user=user("ansible_user"),
                  key_file=path("ansible_ssh_private_key_file"), writer=writer,
                  after_flash=after, api_url=url("api_url"),
                  ready_timeout=number("ready_timeout", 600, 1), confirm=confirm, where=at,
                  profile_where=where("profile"))


def lanes(devices: list[LabDevice]) -> list[list[LabDevice]]:
    """Devices that share a writer in one lane, in inventory order; every other device
    a lane of its own. A lane runs one device after another; lanes run side by side."""
    groups: dict[str, list[LabDevice]] = {}
    for d in devices:
        groups.setdefault(d.writer_key or f"device {d.name}", []).append(d)
    return list(groups.values())
