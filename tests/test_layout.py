"""One device layout (builder/device/layout.py): the roles' defaults agree with it, the
device tools read the roles' choices from device.json, and the device package needs
nothing but the standard library (it is what runs on the device)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

from builder.data import data_dir
from builder.device import DEVICE_TOOLS
from builder.device.layout import DEVICE_CONFIG, Layout

ROLES = data_dir("roles")
DEVICE_PKG = Path(__file__).resolve().parent.parent / "builder" / "device"


def role_value(role: str, name: str):
    """A role variable as the role defines it (defaults, else vars)."""
    for where in ("defaults", "vars"):
        data = yaml.safe_load((ROLES / role / where / "main.yml").read_text()) or {}
        if name in data:
            return data[name]
    raise KeyError(f"{role}: {name}")


L = Layout()
AGREE = [
    ("base", "base_libexec_dir", L.libexec),
    ("inference", "inference_user", L.engine_user),
    ("inference", "inference_engine_root", L.engine_root),
    ("inference", "inference_model_dir", L.model_dir),
    ("inference", "inference_unit_name", L.engine_unit),
    ("inference", "inference_build_unit_name", L.engine_build_unit),
    ("inference", "inference_user_home", L.state_dir),
    ("gateway", "gateway_root", L.engine_root),
    ("gateway", "gateway_keys_file", L.api_keys),
    ("gateway", "gateway_unit_name", L.gateway_unit),
    ("gateway", "gateway_key_unit_name", L.api_key_unit),
    ("gateway", "gateway_make_key", L.tool("make-api-key")),
    ("release", "release_root", L.engine_root),
    ("release", "release_model_dir", L.model_dir),
    ("release", "release_signers_file", L.signers),
    ("release", "release_libexec", L.libexec),
    ("release", "release_state_dir", L.state_dir),
    ("release", "release_units", [L.engine_unit, L.gateway_unit]),
    ("release", "release_device_config_file", DEVICE_CONFIG),
    ("release", "release_device_tools", DEVICE_TOOLS),
]


@pytest.mark.parametrize(("role", "var", "want"), AGREE, ids=[a[1] for a in AGREE])
def test_role_default_agrees_with_the_device_layout(role: str, var: str, want) -> None:
    assert role_value(role, var) == want


def test_the_release_role_installs_the_device_package_it_ships() -> None:
    shipped = ROLES / "release" / "files" / "edge_llm_device"
    assert shipped.resolve() == DEVICE_PKG
    assert set(role_value("release", "release_device_config")) <= set(L.to_json())


def test_the_device_package_needs_only_the_standard_library() -> None:
    for f in sorted(DEVICE_PKG.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: within the package
                    continue
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names, f"{f.name} imports {name}"


def test_every_device_tool_has_a_main() -> None:
    for module in DEVICE_TOOLS.values():
        tree = ast.parse((DEVICE_PKG / f"{module}.py").read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)


def test_the_tools_read_the_roles_choices_under_a_root(tmp_path: Path) -> None:
    cfg = tmp_path / DEVICE_CONFIG.lstrip("/")
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"engine_root": "/srv/llm", "api_keys": "/etc/keys",
                               "not_a_field": "ignored"}))
    got = Layout.load(str(tmp_path))
    assert got.engine_root == f"{tmp_path}/srv/llm"
    assert got.current == f"{tmp_path}/srv/llm/current"
    assert got.api_keys == f"{tmp_path}/etc/keys"
    assert got.model_dir == f"{tmp_path}{L.model_dir}"  # not overridden: the default
    assert Layout.load(str(tmp_path / "elsewhere")).engine_root == \
        f"{tmp_path}/elsewhere{L.engine_root}"
