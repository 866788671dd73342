"""Ansible: the roles in roles/ applied by ansible-playbook, to a rootfs directory during
the image build (community.general.chroot) or to live devices over SSH.

Why chroot rather than a build VM (Packer's way): the rootfs is a directory we own, so
a chroot reaches it in seconds without booting a kernel under emulation, and the very
same roles and playbook then run over SSH against devices, where fleet updates use
them. What only makes sense at image build (removing SSH host keys and machine-id so
every device gets its own at first boot; enabling instead of starting services) is
switched by `edge_llm_image_build`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import names, plugins
from .cache import content_of, sha256_file
from .data import data_dir
from .errors import BuilderError, display_path
from .progress import step
from .run import run

_RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                    r"failed=(\d+)", re.M)


@dataclass(frozen=True)
class HostRecap:
    ok: int
    changed: int
    unreachable: int
    failed: int


def parse_recap(output: str) -> dict[str, HostRecap]:
    """Per-host counts from ansible-playbook's PLAY RECAP."""
    recap = output.rsplit("PLAY RECAP", 1)[-1]
    return {m.group(1): HostRecap(*(int(m.group(i)) for i in range(2, 6)))
            for m in _RECAP.finditer(recap)}


def chroot_inventory(rootfs: Path) -> str:
    return (f"rootfs ansible_connection=community.general.chroot ansible_host={rootfs} "
            f"ansible_python_interpreter=/usr/bin/python3\n")


def ssh_inventory(name: str, host: str, port: int, user: str, key: Path,
                  known_hosts: Path) -> str:
    ssh_args = (f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=accept-new "
                f"-o IdentitiesOnly=yes")
    return (f"{name} ansible_host={host} ansible_port={port} ansible_user={user} "
            f"ansible_ssh_private_key_file={key} ansible_python_interpreter=/usr/bin/python3 "
            f"ansible_ssh_common_args='{ssh_args}'\n")


def roles_dirs() -> list[Path]:
    """The shared roles, then each target's own (a target package's roles/)."""
    return [data_dir("roles"), *(t.roles_dir for t in plugins.TARGETS.values()
                                 if t.roles_dir is not None)]


def roles_path() -> str:
    return ":".join(str(d) for d in roles_dirs())


def playbook_inputs(playbook: str = "appliance.yml") -> dict[str, Any]:
    """Everything a run of `playbook` reads on the controller, for a cache key: the
    playbook, every file of every directory on the roles path (a target's roles too;
    links followed, as Ansible follows them), and the Ansible that runs them."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    book = data_dir("playbooks") / playbook
    ours = ansible_env(Path("."))
    return {"playbook": {playbook: sha256_file(book)},
            "roles": [content_of(d, follow_links=True) for d in roles_dirs()],
            "ansible": {d: version(d) for d in ("ansible-core", "ansible", "Jinja2")},
            # what else steers ansible-playbook here: the user's ANSIBLE_* settings and
            # the config file it would read (ANSIBLE_CONFIG, ./ansible.cfg, ~/.ansible.cfg,
            # /etc/ansible/ansible.cfg: the first that exists)
            "env": {k: v for k, v in sorted(os.environ.items())
                    if k.startswith("ANSIBLE_") and k not in ours},
            "config": _config_file()}


def _config_file() -> str | None:
    """The sha256 of the config file ansible-playbook reads, if any."""
    for c in (os.environ.get("ANSIBLE_CONFIG"), "ansible.cfg", "~/.ansible.cfg",
              "/etc/ansible/ansible.cfg"):
        if c and (path := Path(c).expanduser()).is_file():
            return sha256_file(path)
    return None


def ansible_env(work: Path) -> dict[str, str]:
    """What every ansible-playbook run of the builder gets: our roles and the targets',
    plain output, no retry files, temp files under `work`, pipelining (fewer SSH round
    trips)."""
    return {
        "ANSIBLE_ROLES_PATH": roles_path(),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_SSH_RETRIES": "3",
        "ANSIBLE_PIPELINING": "1",
    }


PASSWORD_VARS = ("ansible_password", "ansible_ssh_pass", "ansible_ssh_password",
                 "ansible_become_password", "ansible_become_pass", "ansible_sudo_pass")


class _Unsafe(yaml.SafeDumper):
    """Every string tagged !unsafe: ansible-core then never templates it, whatever it
    holds. Extra vars are values (from a profile, a release, the command line), never
    templates: a '{{' in one stays text."""


class _Key(str):
    """A mapping key: a variable's name, written plain."""


def _mapping(d: yaml.SafeDumper, m: dict[Any, Any]) -> yaml.Node:
    return d.represent_mapping("tag:yaml.org,2002:map",
                               {_Key(k) if isinstance(k, str) else k: v for k, v in m.items()})


# (an empty string stays plain: ansible-core reads `!unsafe ''` as None)
_Unsafe.add_representer(str, lambda d, s: d.represent_scalar("!unsafe", s) if s
                        else d.represent_str(s))
_Unsafe.add_representer(_Key, yaml.SafeDumper.represent_str)
_Unsafe.add_representer(dict, _mapping)


def unsafe_yaml(extra: dict[str, Any]) -> str:
    """Extra vars for `ansible-playbook -e @FILE`, every string marked unsafe."""
    return "# edge-llm builder: extra vars; every string is !unsafe (never templated)\n" + \
        yaml.dump(extra, Dumper=_Unsafe, sort_keys=True, default_flow_style=False)


def inventory_hosts(inventory: Path) -> dict[str, dict[str, Any]]:
    """Hosts and their variables, as ansible-inventory reads them; refuses passwords."""
    if not inventory.is_file():
        raise BuilderError(f"--inventory {inventory}: no such file")
    exe = Path(sys.executable).with_name("ansible-inventory")
    r = subprocess.run([str(exe), "-i", str(inventory), "--list"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BuilderError(f"{display_path(inventory)}: not a readable inventory: "
                           f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    data = json.loads(r.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    hosts = sorted({h for g in data.values() if isinstance(g, dict)
                    for h in g.get("hosts", [])})
    if not hosts:
        raise BuilderError(f"{display_path(inventory)}: no hosts in it")
    for name in hosts:
        if not names.INVENTORY_HOST.fullmatch(name):
            raise BuilderError(f"{display_path(inventory)}: host {name!r}: not a host name "
                               "(letters, digits and . _ : @ -, starting with a letter or "
                               "digit); rename it in the inventory")
        for var in PASSWORD_VARS:
            if var in hostvars.get(name, {}):
                raise BuilderError(f"{display_path(inventory)}: host {name}: {var}: "
                                   "passwords are not allowed in an inventory; log in with "
                                   "an SSH key (ansible_ssh_private_key_file)")
    return {n: hostvars.get(n, {}) for n in hosts}


def run_playbook(inventory: str, extra_vars: dict[str, Any], work: Path, *, what: str,
                 log_file: Path, playbook: str = "appliance.yml") -> dict[str, HostRecap]:
    work.mkdir(parents=True, exist_ok=True)
    inv = work / "inventory"
    inv.write_text(inventory)
    vars_file = work / "vars.yml"
    vars_file.write_text(unsafe_yaml(extra_vars))
    exe = Path(sys.executable).with_name("ansible-playbook")
    env = ansible_env(work)
    with step(what) as line:
        output = run([exe, "-i", inv, "-e", f"@{vars_file}",
                      data_dir("playbooks") / playbook],
                     what=what, env=env, log_file=log_file, on_line=line)
    recap = parse_recap(output)
    if not recap:
        raise BuilderError(f"{what}: no PLAY RECAP in ansible-playbook's output "
                           f"(log: {log_file})")
    return recap
