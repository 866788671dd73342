"""The appliance's systemd units as the roles render them (Ansible's template module, the
roles' defaults and vars, the role variables a build passes for a profile), held to the
bars `builder verify` holds a device to (MAX_EXPOSURE) by the host's own
`systemd-analyze security --offline=true --root=` over a root holding only those units.
And the engine a Jetson builds: nothing of the engine's unit runs with privileges ("+",
"!"), and its build runs as the engine user with only its cache and its status writable.
Slower than most fast tests (one ansible-playbook run renders every unit, ~10 s)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stand_ins import build_context, device_of

from builder import build as build_mod
from builder.device.layout import DEFAULT as LAYOUT
from builder.engines import trtllm
from builder.fleet import release
from builder.planner import build_budget
from builder.provision import roles_path
from builder.verify.suite.test_appliance import MAX_EXPOSURE, exposures

REPO = Path(__file__).resolve().parent.parent
PROFILES = ["x86-gateway", "orin-nano-8gb"]  # a CPU engine, and a GPU one built on the device
UNIT_DIR = "etc/systemd/system"
# unit -> the role template (or file) it comes from
SOURCES = {
    "edge-llm-engine.service": "inference/templates/edge-llm-engine.service.j2",
    "edge-llm-engine-build.service": "inference/templates/edge-llm-engine-build.service.j2",
    "edge-llm-gateway.service": "gateway/templates/edge-llm-gateway.service.j2",
    "edge-llm-api-key.service": "gateway/templates/edge-llm-api-key.service.j2",
    "edge-llm-release-guard.service": "release/templates/edge-llm-release-guard.service.j2",
    "edge-llm-engine-watchdog.service":
        "release/templates/edge-llm-engine-watchdog.service.j2",
    "edge-llm-model-scrub.service": "release/templates/edge-llm-model-scrub.service.j2",
    "edge-llm-grow-root.service": "base/files/edge-llm-grow-root.service",
    "edge-llm-disk-ids.service": "base/templates/edge-llm-disk-ids.service.j2",
    "edge-llm-ssh-hostkeys.service": "base/files/edge-llm-ssh-hostkeys.service",
    "edge-llm-cpufreq.service": "base/templates/edge-llm-cpufreq.service.j2",
    "edge-llm-swapfile.service": "base/templates/edge-llm-swapfile.service.j2",
    "edge-llm-power.service": "jetson/templates/edge-llm-power.service.j2",
}
ROLES = ["base", "inference", "gateway", "release", "jetson"]
# where Ansible finds them: the shared roles/, then each target's own
ROLE_DIRS = [Path(d) for d in roles_path().split(":")]


def role_file(rel: str) -> Path:
    """A file of a role (role/where/name), wherever on the roles path the role is."""
    return next((d / rel for d in ROLE_DIRS if (d / rel).exists()), ROLE_DIRS[0] / rel)


def _play(name: str, root: Path) -> dict:
    """One play rendering every unit into ROOT with the roles' defaults and vars, and over
    them the role variables a build of profile NAME passes (as playbooks/appliance.yml
    gets them: extra vars, set here after the roles' own)."""
    tasks: list[dict] = [{"ansible.builtin.include_vars": str(role_file(f"{role}/{where}/"
                                                                         "main.yml"))}
                         for role in ROLES for where in ("defaults", "vars")
                         if role_file(f"{role}/{where}/main.yml").is_file()]
    given = build_mod.role_vars(build_context(name), image_build=True)
    given["jetson_power_mode"] = max(0, given.get("jetson_power_mode", 0))  # the unit's there
    tasks.append({"ansible.builtin.set_fact": given})
    for action in ("template", "copy"):
        tasks.append({f"ansible.builtin.{action}": {"src": "{{ item.key }}",
                                                     "dest": "{{ item.value }}"},
                      "loop": "{{ units | dict2items }}",
                      "vars": {"units": {str(role_file(src)): str(root / UNIT_DIR / u)
                                         for u, src in SOURCES.items()
                                         if src.endswith(".j2") == (action == "template")}}})
    return {"name": name, "hosts": "localhost", "connection": "local",
            "gather_facts": False, "tasks": tasks,
            "vars": {"ansible_python_interpreter": sys.executable}}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """profile -> a root with its rendered units, and the engine's drop-in from a
    release made for it (release.engine_unit_conf, as current/systemd/engine.conf)."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze (systemd) is not installed on this host")
    base = tmp_path_factory.mktemp("units")
    out = {name: base / name for name in PROFILES}
    for root in out.values():
        (root / UNIT_DIR).mkdir(parents=True)
    playbook = base / "units.json"
    playbook.write_text(json.dumps([_play(name, root) for name, root in out.items()]))
    r = subprocess.run([str(Path(sys.executable).with_name("ansible-playbook")), "-i",
                        "localhost,", str(playbook)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "ANSIBLE_NOCOLOR": "1",
                                         "ANSIBLE_LOCALHOST_WARNING": "False"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for name, root in out.items():
        _release_dropins(root, build_mod.release_inputs(build_context(name)))
    return out


def _release_dropins(root: Path, inputs) -> None:
    """A release's parts of the engine and gateway units, as current/systemd/ has them."""
    for unit, conf in ((LAYOUT.engine_unit, release.engine_unit_conf),
                       (LAYOUT.gateway_unit, release.gateway_unit_conf)):
        dropin = root / UNIT_DIR / f"{unit}.d/50-release.conf"
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(conf(inputs))


def analyze(root: Path, unit: str) -> tuple[float, str]:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                        "--no-pager", unit], capture_output=True, text=True, timeout=60)
    got = exposures(r.stdout)
    assert unit in got, r.stdout[-2000:] + r.stderr[-2000:]
    return got[unit], r.stdout


def unit_settings(root: Path, unit: str) -> dict[str, list[str]]:
    """KEY -> its values in the unit file and its drop-ins, in order (an empty value resets
    the list, as systemd reads them)."""
    files = [root / UNIT_DIR / unit, *sorted((root / UNIT_DIR / f"{unit}.d").glob("*.conf"))]
    out: dict[str, list[str]] = {}
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            if "=" not in line or line.lstrip().startswith(("#", ";", "[")):
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = [] if value == "" else [*out.get(key, []), value]
    return out


CASES = [(p, u) for p in PROFILES for u in MAX_EXPOSURE]


@pytest.mark.parametrize(("profile", "unit"), CASES, ids=[f"{p}/{u}" for p, u in CASES])
def test_each_unit_stays_under_its_exposure_bar(roots: dict[str, Path], profile: str,
                                                unit: str) -> None:
    exposure, report = analyze(roots[profile], unit)
    assert exposure <= MAX_EXPOSURE[unit], "\n".join(
        line for line in report.splitlines() if line.startswith("✗"))


def test_every_unit_the_roles_install_has_a_bar() -> None:
    installed = {m.group(1) for d in ROLE_DIRS for f in d.rglob("*")
                 if f.is_file() and f.suffix in (".yml", ".service", ".j2")
                 for m in re.finditer(r"\b(edge-llm-[a-z-]+\.service)\b", f.read_text())}
    assert installed <= set(MAX_EXPOSURE) == set(SOURCES)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_command_of_the_engine_runs_with_privileges(roots: dict[str, Path],
                                                       profile: str) -> None:
    """`+` (or `!`, `!!`) before a command runs it as root outside the unit's sandbox."""
    settings = unit_settings(roots[profile], LAYOUT.engine_unit)
    assert settings["User"] == [LAYOUT.engine_user]
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost",
                "ExecReload", "ExecCondition"):
        for command in settings.get(key, []):
            prefixes = re.match(r"[-@:+!]*", command).group(0)
            assert not set(prefixes) & {"+", "!"}, f"{key}={command}"


def test_the_engine_is_built_as_the_engine_user_writing_only_its_cache_and_status(
        roots: dict[str, Path]) -> None:
    root = roots["orin-nano-8gb"]
    build = unit_settings(root, "edge-llm-engine-build.service")
    settings = f"{LAYOUT.current}/{trtllm.SETTINGS}"
    assert build["User"] == [LAYOUT.engine_user] and build["Type"] == ["oneshot"]
    assert build["ExecStart"] == [f"{LAYOUT.tool('edge-llm-engine-build')} {settings}"]
    # a release without either skips it; one made before engine/build.json has trtllm.json
    assert build["ConditionPathExists"] == [
        f"|{settings}", f"|{LAYOUT.current}/{trtllm.LEGACY_SETTINGS}"]
    # writable: the engine cache and the status file's directory, nothing else
    assert build["ProtectSystem"] == ["strict"] and "ReadWritePaths" not in build
    assert [f"/var/lib/{d}" for d in build["StateDirectory"]] == \
        [f"{LAYOUT.state_dir}/engines"]
    assert [f"/run/{d}" for d in build["RuntimeDirectory"]] == [LAYOUT.run_dir]
    assert os.path.dirname(LAYOUT.engine_status) == LAYOUT.run_dir
    assert build["CapabilityBoundingSet"] == [] and build["NoNewPrivileges"] == ["yes"]
    # the GPU, as the engine opens it
    engine = unit_settings(root, LAYOUT.engine_unit)
    assert build["DeviceAllow"] == engine["DeviceAllow"] != []
    # its own memory cap (the planner's build budget) and time
    p = build_context("orin-nano-8gb").p
    assert build["MemoryMax"] == [str(build_budget(p))]
    assert build["TimeoutStartSec"] == [str(trtllm.BUILD_TIMEOUT)]
    # the engine pulls it in, starts after it, and reads the cache it wrote
    assert "edge-llm-engine-build.service" in engine["Wants"]
    assert "edge-llm-engine-build.service" in " ".join(engine["After"])
    assert "ReadWritePaths" not in engine and "StateDirectory" not in engine


def test_port_auth_and_tls_come_with_the_release(roots: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """One road per knob: the gateway's port capability, API keys, TLS files and command
    are the release's drop-in, so a deploy that changes them changes the unit (the role's
    unit holds none of them); a release on port 443 without keys but with TLS still
    stays under the gateway's exposure bar."""
    base = unit_settings(roots["x86-gateway"], LAYOUT.gateway_unit)
    assert (base["PrivateUsers"] == ["yes"] and "CapabilityBoundingSet" not in base) or \
        base["CapabilityBoundingSet"] == []
    assert "--keys-file" in base["ExecStart"][-1]
    root = tmp_path / "root"
    shutil.copytree(roots["x86-gateway"], root, symlinks=True)
    ctx = build_context("x86-gateway")
    service = ctx.p.service.model_copy(update={
        "port": 443, "api_auth": False, "tls_cert": "/etc/edge-llm/tls/cert.pem",
        "tls_key": "/etc/edge-llm/tls/key.pem"})
    ctx.device = device_of(ctx.p.model_copy(update={"service": service}), "x86-gateway")
    _release_dropins(root, build_mod.release_inputs(ctx))
    got = unit_settings(root, LAYOUT.gateway_unit)
    [exec_start] = got["ExecStart"]
    assert "--keys-file" not in exec_start and "--tls-cert" in exec_start
    assert got["LoadCredential"] == ["api-keys:/etc/edge-llm/api-keys",
                                     "tls-cert:/etc/edge-llm/tls/cert.pem",
                                     "tls-key:/etc/edge-llm/tls/key.pem"]
    assert got["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert got["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert got["PrivateUsers"][-1] == "no"
    exposure, report = analyze(root, LAYOUT.gateway_unit)
    assert exposure <= MAX_EXPOSURE[LAYOUT.gateway_unit], report[-2000:]
