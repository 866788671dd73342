"""The appliance as built: one behaviour per test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def _http(host, port: int, path: str, body: dict | None = None, timeout: int = 600):
    """(status, parsed JSON) of a request made on the device itself (loopback)."""
    script = (
        "import json,sys,urllib.request,urllib.error\n"
        f"b={json.dumps(body)!r}\n"
        f"r=urllib.request.Request('http://127.0.0.1:{port}{path}',"
        "data=b.encode() if b!='null' else None,headers={'Content-Type':'application/json'})\n"
        "try:\n"
        f"  resp=urllib.request.urlopen(r,timeout={timeout}); print(resp.status); "
        "print(resp.read().decode())\n"
        "except urllib.error.HTTPError as e:\n  print(e.code); print(e.read().decode())\n")
    out = host.check_output("python3 -c %s", script)
    status, _, text = out.partition("\n")
    return int(status), json.loads(text) if text.strip() else None


@pytest.mark.parametrize("unit", ["engine_unit", "ssh.service"])
def test_unit_is_enabled_and_active(host, layout, unit: str) -> None:
    svc = host.service(layout.get(unit, unit))
    assert svc.is_enabled and svc.is_running


def test_no_unit_failed(host) -> None:
    failed = host.check_output("systemctl list-units --failed --plain --no-legend")
    assert failed.strip() == ""


def test_engine_listens_on_loopback_only(host, engine_port: int) -> None:
    assert host.socket(f"tcp://127.0.0.1:{engine_port}").is_listening
    listening = host.socket.get_listening_sockets()
    exposed = [s for s in listening if s.endswith(f":{engine_port}")
               and not s.startswith(("tcp://127.0.0.1:", "tcp://::1:"))]
    assert exposed == []


def test_engine_is_ready_on_loopback(host, engine_port: int, probe: dict) -> None:
    status, _ = _http(host, engine_port, probe["ready"])
    assert status == 200


def test_chat_completion_returns_tokens(host, engine_port: int) -> None:
    status, body = _http(host, engine_port, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
        "temperature": 0})
    assert status == 200
    assert body["usage"]["completion_tokens"] >= 1


def test_model_file_is_the_one_in_the_manifest(host, manifest) -> None:
    f = host.file(manifest["model"]["device_path"])
    assert f.exists and f.sha256sum == manifest["model"]["sha256"]


def test_engine_runs_the_release_from_the_manifest(host, manifest, layout) -> None:
    current = host.file(f"{layout['engine_root']}/current")
    assert current.is_symlink and current.linked_to.endswith(manifest["release_id"])


def test_the_release_is_signed_verified_and_marked_good(host, manifest, layout) -> None:
    tool = f"{layout['libexec']}/edge-llm-release"
    verified = json.loads(host.check_output(f"{tool} verify {manifest['release_id']}"))
    assert verified["result"] == "verified"
    status = json.loads(host.check_output(f"{tool} status"))
    assert status["current"] == status["last_good"] == manifest["release_id"]
    assert status["pending"] is None and status["healthy"] is True
    assert "edge-llm-release" in host.file(layout["signers"]).content_string
    assert host.service("edge-llm-release-guard.timer").is_enabled


def test_resident_memory_is_within_the_plan(host, manifest, layout) -> None:
    pid = host.check_output(f"systemctl show -p MainPID --value {layout['engine_unit']}")
    rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB",
                            host.check_output(f"cat /proc/{pid}/status")).group(1))
    limit = manifest["inputs"]["profile"]["verify"]["max_rss"]
    plan_total = manifest["plan"]["total"] - manifest["plan"]["gateway_overhead"]
    allowed = plan_total if limit == "auto" else _bytes(limit)
    assert rss_kib * 1024 <= allowed


def test_distinct_conversations_stay_within_the_planned_memory(host, manifest, layout,
                                                               engine_port: int) -> None:
    """The soak (benchmarks/soak.py), short: each distinct conversation leaves its KV in
    the engine's prompt cache; the plan bounds that cache, so RSS stays within the plan."""
    pid = host.check_output(f"systemctl show -p MainPID --value {layout['engine_unit']}")
    allowed = manifest["plan"]["total"] - manifest["plan"]["gateway_overhead"]
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    for n in range(6):
        words = " ".join(syllables[(n * 7 + i * i) % 80] + syllables[(n + 3 * i) % 80]
                         for i in range(200))
        status, _ = _http(host, engine_port, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": f"{n}: {words}"}], "max_tokens": 2})
        assert status == 200
        rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB",
                                host.check_output(f"cat /proc/{pid}/status")).group(1))
        assert rss_kib * 1024 <= allowed, f"after {n + 1} conversations: {rss_kib} KiB"


# The most `systemd-analyze security` may find exposed in each of the appliance's units
# (0 = everything closed, 10 = nothing). Each is what its job leaves open, a little
# above what systemd 252 measures; docs/image.md says what each one keeps and why.
# tests/test_unit_hardening.py holds the units as the roles render them to the same bars.
MAX_EXPOSURE = {
    "edge-llm-engine.service": 1.5,
    "edge-llm-engine-build.service": 1.0,
    "edge-llm-gateway.service": 2.0,
    "edge-llm-api-key.service": 1.0,
    "edge-llm-release-guard.service": 2.0,
    "edge-llm-engine-watchdog.service": 2.0,
    "edge-llm-model-scrub.service": 1.0,
    "edge-llm-grow-root.service": 2.0,
    "edge-llm-disk-ids.service": 2.0,
    "edge-llm-ssh-hostkeys.service": 1.0,
    "edge-llm-cpufreq.service": 1.0,
    "edge-llm-swapfile.service": 2.0,
    "edge-llm-power.service": 3.5,
}
_EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([\d.]+) (\w+)")


def exposures(analysis: str) -> dict[str, float]:
    """unit -> overall exposure, from `systemd-analyze security UNIT...`."""
    return {m.group(1): float(m.group(2)) for m in _EXPOSURE.finditer(analysis)}


def test_every_unit_of_the_appliance_is_hardened_to_its_bar(host) -> None:
    """Every edge-llm service on the device (which ones depends on the profile: a swap
    file, a Jetson's power mode) has a bar in MAX_EXPOSURE and stays under it."""
    listed = host.check_output("systemctl list-unit-files --type=service --no-legend "
                               "--plain 'edge-llm-*'")
    units = sorted(fields[0] for fields in map(str.split, listed.splitlines())
                   if fields and fields[1:2] != ["transient"])  # (a release activation)
    assert "edge-llm-engine.service" in units and "edge-llm-gateway.service" in units
    unknown = [u for u in units if u not in MAX_EXPOSURE]
    assert unknown == [], f"no exposure bar for {unknown}: add them to MAX_EXPOSURE"
    got = exposures(host.check_output(f"systemd-analyze security --no-pager {' '.join(units)}"))
    over = {u: f"{got.get(u)} > {MAX_EXPOSURE[u]}" for u in units
            if got.get(u) is None or got[u] > MAX_EXPOSURE[u]}
    assert over == {}


def test_the_engine_build_runs_as_the_engine_user(host, layout) -> None:
    props = host.check_output("systemctl show -p User -p ProtectSystem -p NoNewPrivileges "
                              "edge-llm-engine-build.service")
    values = dict(line.split("=", 1) for line in props.splitlines())
    assert values["User"] == layout["engine_user"]
    assert values["ProtectSystem"] == "strict" and values["NoNewPrivileges"] == "yes"


def test_no_account_has_a_usable_password(host) -> None:
    """A console or serial login needs a password: every account's is locked (! or *)
    or there is none to type; an empty field would let anyone in, and the admin has sudo
    without a password, so any password of its would be root's."""
    shadow = host.check_output("cat /etc/shadow")
    usable = [fields[0] for fields in (line.split(":") for line in shadow.splitlines())
              if len(fields) > 1 and not fields[1].startswith(("!", "*"))]
    assert usable == []


def test_service_properties_from_the_plan(host, manifest, layout) -> None:
    props = host.check_output("systemctl show -p User -p NoNewPrivileges -p ProtectSystem "
                              f"-p MemoryMax -p PrivateTmp {layout['engine_unit']}")
    values = dict(line.split("=", 1) for line in props.splitlines())
    assert values["User"] == layout["engine_user"]
    assert values["NoNewPrivileges"] == "yes" and values["ProtectSystem"] == "strict"
    assert values["PrivateTmp"] == "yes"
    assert int(values["MemoryMax"]) == manifest["plan"]["memory_max"]


def test_the_gateway_runs_under_the_memory_max_its_release_planned(host, manifest,
                                                                    layout) -> None:
    """The release's systemd/gateway.conf drop-in takes effect (not the unit's fallback)."""
    value = host.check_output(f"systemctl show -p MemoryMax --value {layout['gateway_unit']}")
    assert int(value) == manifest["plan"]["gateway_overhead"]


def test_password_login_is_off(host) -> None:
    cfg = host.check_output("sshd -T 2>/dev/null || /usr/sbin/sshd -T")
    assert "passwordauthentication no" in cfg
    assert "permitrootlogin no" in cfg


def test_a_second_ansible_run_changes_nothing(cfg, manifest) -> None:
    from builder import provision

    if manifest["provision_vars"] is None:
        pytest.skip("the device serves a release deployed after its build (--release): "
                    "the build's Ansible run would bring back the build's release")
    state = Path(cfg["state"])
    inv = provision.ssh_inventory("device", cfg["host"], cfg["port"], cfg["user"],
                                  Path(cfg["key"]), Path(cfg["known_hosts"]))
    recap = provision.run_playbook(inv, {**manifest["provision_vars"],
                                         "edge_llm_image_build": False},
                                   state / "ansible", what="ansible (idempotence check)",
                                   log_file=state / "ansible-verify.log")
    assert recap["device"].failed == 0 and recap["device"].unreachable == 0
    assert recap["device"].changed == 0, (state / "ansible-verify.log").read_text()[-3000:]


def _bytes(value) -> int:
    from builder.units import parse_size

    return parse_size(value)
