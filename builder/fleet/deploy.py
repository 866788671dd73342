"""Fleet operations over SSH: deploy a release, roll back, read status.

Ansible does the work (playbooks/deploy.yml with the `release` role, playbooks/fleet.yml):
batches with `serial`, `max_fail_percentage`, parallel hosts, SSH. Each host's outcome
comes back as a small JSON file the playbook writes on the controller, so the report does
not depend on parsing Ansible's screen output. The device decides for itself whether a
release is genuine and whether it serves (roles/release/files/edge-llm-release).

SSH is strict: host keys must be known (your ~/.ssh/known_hosts, or --known-hosts FILE);
--accept-new-host-keys records the key of a host seen for the first time, and a changed
key is refused either way. Inventories may not hold passwords: use SSH keys.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import data_dir
from ..errors import BuilderError, display_path
from ..log import console
from ..progress import step
from ..provision import ansible_env, inventory_hosts, parse_recap, unsafe_yaml
from ..run import ToolError, run
from .trust import JINJA, Manifest, Release

SERIAL_ITEM = re.compile(r"^(\d+|\d+(\.\d+)?%)$")


class FleetFailed(BuilderError):
    """Some hosts did not end where they were asked to (exit 1, not a usage error)."""

    exit_code = 1


@dataclass
class HostOutcome:
    host: str
    reachable: bool = True
    result: str = "not reached"  # activated, unchanged, rolled-back, refused, failed, ...
    serving: str | None = None
    last_good: str | None = None
    healthy: bool | None = None
    model_sha256: str | None = None
    reason: str = ""
    bytes_sent: int | None = None
    last_result: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.reachable and self.result in ("activated", "unchanged", "ok",
                                                  "rolled-back-by-request")


@dataclass(frozen=True)
class Ssh:
    known_hosts: Path | None = None
    accept_new: bool = False
    key: Path | None = None  # used when the inventory names none


def parse_serial(text: str) -> list[int | str]:
    """'1,10%,100%' -> [1, '10%', '100%'] (Ansible's serial list)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or not all(SERIAL_ITEM.match(s) for s in items):
        raise BuilderError(f"--serial {text}: expected batch sizes like 1,10%,100% "
                           "(host counts or percentages)")
    return [int(s) if s.isdigit() else s for s in items]


def _env(ssh: Ssh, work: Path) -> dict[str, str]:
    args = ["-o", "StrictHostKeyChecking=" + ("accept-new" if ssh.accept_new else "yes"),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if ssh.known_hosts:
        args += ["-o", f"UserKnownHostsFile={ssh.known_hosts}"]
    env = {
        **ansible_env(work),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_COMMON_ARGS": " ".join(args),
        "ANSIBLE_FORKS": "16",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    }
    if ssh.key:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = str(ssh.key)
    return env


def _play(playbook: str, inventory: Path, extra: dict[str, Any], ssh: Ssh, work: Path,
          what: str, limit: str | None) -> tuple[dict, str]:
    work.mkdir(parents=True, exist_ok=True)
    vars_file = work / "vars.yml"
    vars_file.write_text(unsafe_yaml(extra))
    log_file = work / "ansible.log"
    exe = Path(sys.executable).with_name("ansible-playbook")
    cmd = [exe, "-i", inventory, "-e", f"@{vars_file}", data_dir("playbooks") / playbook]
    if limit:
        cmd += ["--limit", limit]
    with step(what) as line:
        try:
            output = run(cmd, what=what, env=_env(ssh, work), log_file=log_file, on_line=line)
        except ToolError:  # failed or unreachable hosts: the recap says which
            output = log_file.read_text(errors="replace")
    recap = parse_recap(output)
    if not recap:
        raise BuilderError(f"{what}: ansible-playbook ended without a PLAY RECAP "
                           f"(log: {display_path(log_file)})")
    return recap, output


def _unreachable_reason(output: str, host: str) -> str:
    m = re.search(rf"fatal: \[{re.escape(host)}\]: UNREACHABLE! => (\{{.*\}})", output)
    if not m:
        return "unreachable"
    try:
        return "unreachable: " + json.loads(m.group(1)).get("msg", "").strip().splitlines()[-1]
    except (ValueError, IndexError):
        return "unreachable"


def _failed_reason(output: str, host: str) -> str:
    found = re.findall(rf"fatal: \[{re.escape(host)}\]: FAILED! => (\{{.*\}})", output)
    for raw in reversed(found):
        try:
            return " ".join(json.loads(raw).get("msg", "").split())
        except ValueError:
            continue
    return ""


def _outcomes(hosts: list[str], recap: dict, output: str, reports: Path,
              action: str) -> list[HostOutcome]:
    out = []
    for h in hosts:
        o = HostOutcome(h)
        rc = recap.get(h)
        if rc is None:
            o.result, o.reason = "skipped", "not reached: the rollout stopped before its batch"
        elif rc.unreachable:
            o.reachable, o.result, o.reason = False, "unreachable", _unreachable_reason(
                output, h)
        f = reports / f"{h}.json"
        if f.is_file():
            rep = json.loads(f.read_text())
            st = rep.get("status") or {}
            o.serving, o.last_good = st.get("current"), st.get("last_good")
            o.healthy, o.model_sha256 = st.get("healthy"), st.get("model_sha256")
            o.last_result = st.get("last_result")
            o.bytes_sent = rep.get("sent")
            if action == "deploy":
                want = rep.get("release")
                last = o.last_result or {}
                if rc is not None and rc.failed == 0 and o.serving == want:
                    o.result = "unchanged" if rep.get("activate_rc") is None else "activated"
                elif last.get("release") == want and rep.get("activate_rc"):
                    o.result, o.reason = last.get("result", "failed"), last.get("reason", "")
                else:
                    o.result, o.reason = "failed", _failed_reason(output, h)
            elif action == "rollback":
                o.result = "rolled-back-by-request" if rep.get("rollback_rc") == 0 else "failed"
                if rep.get("rollback_rc"):
                    o.reason = (o.last_result or {}).get("reason") or _failed_reason(output, h)
            else:
                o.result = "ok"
        elif rc is not None and not rc.unreachable:
            o.result, o.reason = "failed", _failed_reason(output, h)
        out.append(o)
    return out


def gate_for(m: Manifest, gate_timeout: int) -> int:
    """The health gate's timeout for a release: at least the time its engine may take to
    be built on the device at its first start (TensorRT-LLM), else the one asked for."""
    return max(gate_timeout, m.engine.build_seconds or 0)


def deploy_vars(r: Release, reports: Path | None, *, serial: list[int | str],
                max_fail: float, gate_timeout: int, keep: int,
                bwlimit_kbps: int) -> dict[str, Any]:
    """playbooks/deploy.yml's extra vars for a verified release: all it needs, so the
    playbook runs the same under `builder deploy`, ansible-runner or an AWX job template.
    Every value is typed from the parsed manifest or the command line; none is a string
    a template engine would act on (ansible-core templates extra vars)."""
    m = r.manifest
    v: dict[str, Any] = {
        "release_id": m.release_id, "release_tree": str(r.tree.resolve()),
        "release_model_src": str(r.model_path),
        "release_model_sha256": m.model.sha256,
        "release_model_name": m.model.name,
        "release_model_bytes": m.model.bytes,
        "release_engine_watchdog_seconds": m.engine.watchdog_seconds,
        "release_gate_timeout": gate_for(m, gate_timeout), "release_keep": int(keep),
        "release_min_free_bytes": r.tree_bytes + m.model.bytes + (64 << 20),
        "release_bwlimit_kbps": int(bwlimit_kbps),
        "release_report_dir": str(reports.resolve()) if reports else "",
        "deploy_serial": serial, "deploy_max_fail_percentage": float(max_fail),
    }
    for k, x in v.items():  # paths of this machine's: refuse one Jinja would act on
        if isinstance(x, str) and JINJA.search(x):
            raise BuilderError(f"{k}: {x!r} holds characters Ansible would take for a "
                               "template; move it to a path without '{{', '{%' or '{#'")
    return v


def deploy(inventory: Path, r: Release, ssh: Ssh, work: Path, *, serial: list,
           max_fail: float, gate_timeout: int, keep: int, bwlimit_kbps: int,
           limit: str | None = None) -> list[HostOutcome]:
    hosts = list(inventory_hosts(inventory))
    m = r.manifest
    if gate_for(m, gate_timeout) > gate_timeout:
        console.print(f"{m.engine.kind} engines are built on each device at their "
                      f"first start: the health gate waits up to "
                      f"{gate_for(m, gate_timeout)}s")
    reports = work / "hosts"
    reports.mkdir(parents=True, exist_ok=True)
    for f in reports.glob("*.json"):
        f.unlink()
    extra = deploy_vars(r, reports, serial=serial, max_fail=max_fail,
                        gate_timeout=gate_timeout, keep=keep, bwlimit_kbps=bwlimit_kbps)
    recap, output = _play("deploy.yml", inventory, extra, ssh, work,
                          f"deploying {m.release_id} to {len(hosts)} host(s)", limit)
    outcomes = _outcomes(hosts, recap, output, reports, "deploy")
    if limit:
        outcomes = [o for o in outcomes if o.host in recap]
    record = {"release": m.release_id, "inventory": str(inventory),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "serial": serial, "max_fail_percentage": max_fail,
              "hosts": [asdict(o) for o in outcomes]}
    (work / "deploy.json").write_text(json.dumps(record, indent=2) + "\n")
    return outcomes


def status(inventory: Path, ssh: Ssh, work: Path, *, action: str = "status",
           limit: str | None = None, gate_timeout: int = 300) -> list[HostOutcome]:
    hosts = list(inventory_hosts(inventory))
    reports = work / "hosts"
    reports.mkdir(parents=True, exist_ok=True)
    for f in reports.glob("*.json"):
        f.unlink()
    recap, output = _play("fleet.yml", inventory, {
        "fleet_action": action, "fleet_report_dir": str(reports.resolve()),
        "fleet_gate_timeout": gate_timeout}, ssh, work,
        f"{'rolling back' if action == 'rollback' else 'reading'} {len(hosts)} host(s)", limit)
    outcomes = _outcomes(hosts, recap, output, reports, action)
    return [o for o in outcomes if not limit or o.host in recap]


def state_dir(out_root: Path, what: str) -> Path:
    d = out_root / "fleet" / f"{time.strftime('%Y%m%dT%H%M%S')}-{what}-{os.getpid()}"
    d.mkdir(parents=True, exist_ok=True)
    return d
