"""Where everything lives on a device: one table, shared by the builder (release trees,
role variables, the verify suite), the roles (their defaults are checked against it in
tests/test_layout.py) and the device tools, which read the roles' own choices from
DEVICE_CONFIG at run time.

Standard library only: this package is installed on devices
(/usr/local/lib/edge-llm/edge_llm_device/) by the `release` role.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# Release trees, signed (format 2: files, directories and links listed with their modes).
RELEASE_FORMAT = 2
RELEASE_MANIFEST = "release.json"
RELEASE_SIGNATURE = "release.json.sig"
SIGNING_NAMESPACE = "edge-llm-release"  # ssh-keygen -Y sign/verify -n, and the principal

# The device's own settings file, written by the release role.
DEVICE_CONFIG = "/etc/edge-llm/device.json"


@dataclass(frozen=True)
class Layout:
    """Paths and unit names on a device. Defaults are the roles' defaults."""

    engine_root: str = "/opt/edge-llm"  # releases/<id>/ and current -> releases/<id>
    state_dir: str = "/var/lib/edge-llm"  # release state; the engine user's home
    model_dir: str = "/var/lib/edge-llm/models"  # content-addressed models
    etc_dir: str = "/etc/edge-llm"
    api_keys: str = "/etc/edge-llm/api-keys"  # one key per line, 0600 root
    signers: str = "/etc/edge-llm/allowed_signers"  # keys whose releases are accepted
    libexec: str = "/usr/local/lib/edge-llm"  # the device tools
    run_dir: str = "/run/edge-llm"  # world-readable runtime state (the gateway reads it)
    engine_user: str = "edge-llm"
    engine_unit: str = "edge-llm-engine.service"
    engine_build_unit: str = "edge-llm-engine-build.service"  # an engine built on the device
    gateway_unit: str = "edge-llm-gateway.service"
    api_key_unit: str = "edge-llm-api-key.service"
    guard_unit: str = "edge-llm-release-guard.service"
    watchdog_unit: str = "edge-llm-engine-watchdog.service"

    # --- derived paths ------------------------------------------------------------------
    @property
    def releases(self) -> str:
        return f"{self.engine_root}/releases"

    @property
    def current(self) -> str:
        return f"{self.engine_root}/current"

    @property
    def release_state(self) -> str:
        return f"{self.state_dir}/release-state.json"

    @property
    def engine_status(self) -> str:
        """An engine built on the device: how its build goes (edge-llm-trtllm writes it,
        the gateway answers 503 engine_building from it)."""
        return f"{self.run_dir}/engine-status.json"

    @property
    def device_lib(self) -> str:
        """The device tools' Python package (edge_llm_device)."""
        return f"{self.libexec}/edge_llm_device"

    def tool(self, name: str) -> str:
        """A device tool's command, e.g. tool("edge-llm-release")."""
        return f"{self.libexec}/{name}"

    # --- the roles' choices, on the device -------------------------------------------------
    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def load(cls, root: str = "/") -> Layout:
        """The layout of this device: the defaults, overridden by DEVICE_CONFIG when the
        roles wrote one, with every path under `root` (tests run the tools on a tree)."""
        base = cls()
        try:
            given = json.loads(Path(_under(root, DEVICE_CONFIG)).read_text())
        except FileNotFoundError:
            given = {}
        known = {f.name for f in fields(cls)}
        base = replace(base, **{k: str(v) for k, v in given.items() if k in known})
        if root in ("", "/"):
            return base
        return replace(base, **{f.name: _under(root, getattr(base, f.name))
                                for f in fields(cls) if getattr(base, f.name).startswith("/")})


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


DEFAULT = Layout()
