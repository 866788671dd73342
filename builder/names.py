"""What a name that comes from outside (an inventory, a profile, a release) may look
like before it is used in an ssh command line, a path or a file name. Matched whole,
ASCII only: one definition for every reader."""

from __future__ import annotations

import ipaddress
import re

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", re.ASCII)
PATH_TEXT = re.compile(r"[A-Za-z0-9_./+@,:=~-]+", re.ASCII)  # and no leading '-'
# An Ansible inventory's name for a host (not always resolvable): it names the host's
# report on the controller (<dir>/<host>.json) and appears in Ansible's command lines.
INVENTORY_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}", re.ASCII)
PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host(text: str) -> bool:
    """A DNS name or an IP address: what ssh may be pointed at."""
    return bool(HOST_NAME.fullmatch(text)) or is_ip(text)


def is_user(text: str) -> bool:
    return bool(USER_NAME.fullmatch(text))


def is_path_text(text: str) -> bool:
    """A path that is safe on an ssh or Ansible command line and in ssh_config."""
    return bool(PATH_TEXT.fullmatch(text)) and not text.startswith("-")
