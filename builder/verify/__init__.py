"""`builder verify`: the shipped pytest-testinfra suite run against a device or VM.

The suite (builder/verify/suite/) reads what to expect from the build's manifest.json,
reaches the host over SSH with the builder's key, and writes a JUnit XML report next
to the human-readable one pytest prints.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .. import names
from ..errors import BuilderError, display_path
from ..schema import Service

if TYPE_CHECKING:
    from ..cache import Cache
    from ..contracts import Device, Engine
    from ..fleet.trust import Release

SUITE = Path(__file__).parent / "suite"


@dataclass(frozen=True)
class SshHost:
    user: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6
        return f"ssh://{self.user}@{host}:{self.port}"


def parse_host(url: str, user: str = "edge") -> SshHost:
    """ssh://user@host:port (user defaults to the profile's admin user, port to 22)."""
    u = urlparse(url if "://" in url else f"ssh://{url}")
    if u.scheme != "ssh" or not u.hostname:
        raise BuilderError(f"--host {url}: expected ssh://user@host:port")
    try:
        port = u.port or 22
    except ValueError:
        raise BuilderError(f"--host {url}: the port is not a number") from None
    return _target(u.username or user, u.hostname, port, f"--host {url}")


def _target(user: str, host: str, port: int, where: str) -> SshHost:
    """A SshHost of values checked for an ssh command line: a user name, a host name or
    IP address, a port (never an ssh option in disguise)."""
    if not names.is_user(user):
        raise BuilderError(f"{where}: user {user!r} is not a user name")
    if not names.is_host(host):
        raise BuilderError(f"{where}: {host!r} is not a host name or IP address")
    if not 1 <= port <= 65535:
        raise BuilderError(f"{where}: port {port} is not from 1 to 65535")
    return SshHost(user, host, port)


def _quoted(path: Path) -> str:
    """A path as ssh_config reads one: in double quotes (a space in a home directory);
    a path holding a quote or a line end cannot be written there."""
    text = str(path)
    if any(c in text for c in '"\n\r'):
        raise BuilderError(f"{text!r}: ssh cannot be given a path with a quote or a line end")
    return f'"{text}"'


def write_ssh_config(path: Path, key: Path, known_hosts: Path) -> None:
    path.write_text(
        "Host *\n"
        f"  IdentityFile {_quoted(key)}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {_quoted(known_hosts)}\n"
        "  StrictHostKeyChecking accept-new\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 15\n"
        "  ServerAliveInterval 15\n")


def ssh_command(target: SshHost, ssh_config: Path, *remote: str) -> list[str]:
    """ssh to the device with an ssh_config from write_ssh_config."""
    return ["ssh", "-F", str(ssh_config), "-p", str(target.port),
            f"{target.user}@{target.host}", *remote]


def ssh_to(target: SshHost, key: Path, state: Path) -> Path:
    """An ssh_config in `state` for reaching the device with `key` (its host key kept
    in state/known_hosts), once the device answers over SSH."""
    state.mkdir(parents=True, exist_ok=True)
    ssh_config = state / "ssh_config"
    write_ssh_config(ssh_config, key, state / "known_hosts")
    reachable(target, ssh_config)
    return ssh_config


def reachable(target: SshHost, ssh_config: Path) -> None:
    r = subprocess.run(ssh_command(target, ssh_config, "true"),
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        reason = (r.stderr.strip().splitlines() or ["no answer"])[-1]
        raise BuilderError(f"--host {target.url}: cannot log in over SSH: {reason}")


# Boot done (running or degraded), then the engine unit out of "activating" (loading its
# model, or building it on the device) unless it only waits to be restarted: a crash
# loop is for the checks to report, not to be waited out.
SETTLE = """systemctl is-system-running --wait >/dev/null 2>&1
busy() {{
  for u in {units}; do
    s=$(systemctl show -p ActiveState -p SubState --value "$u" | tr '\n' ' ')
    [ "${{s%% *}}" = activating ] && [ "$s" != "activating auto-restart " ] && return 0
  done
  return 1
}}
while busy; do sleep 2; done"""
QUIET_SECONDS = 5  # a device already up answers within this; past it, say we wait


def settle(target: SshHost, ssh_config: Path, manifest: dict, log_file: Path | None) -> None:
    """Wait, bounded by how long the engine may take to start, until the device has
    finished starting: checks run during a first boot or a deploy's restart would fail
    for a reason that goes away by itself. Past the bound the checks run anyway and
    report what they find."""
    unit = manifest["layout"]["engine_unit"]
    # an engine built on the device first (its build unit runs, the engine waits)
    units = [unit, *([b] if (b := manifest["layout"].get("engine_build_unit")) else [])]
    bound = int(manifest["engine"].get("start_seconds") or 600) + 120
    say = print if log_file is None else (lambda *a, **k: None)
    started = time.monotonic()
    script = SETTLE.format(units=" ".join(shlex.quote(u) for u in units))
    remote = f"timeout {bound} sh -c {shlex.quote(script)}"
    with subprocess.Popen(ssh_command(target, ssh_config, remote), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            proc.wait(timeout=QUIET_SECONDS)
            return  # up already (or unreachable: the checks will say so)
        except subprocess.TimeoutExpired:
            pass
        say(f"{target.url}: still starting ({unit}); waiting up to {bound}s", flush=True)
        try:
            rc = proc.wait(timeout=bound + 60)  # the remote `timeout` ends it first
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = 124
    if rc == 124:
        say(f"{target.url}: {unit} was still starting after {bound}s; running the checks "
            "anyway", flush=True)
    else:
        say(f"{target.url}: started ({time.monotonic() - started:.0f}s)", flush=True)


def as_deployed(built: dict[str, Any], release: Release) -> dict[str, Any]:
    """What to expect of a device built as `built` (a build's manifest) that now serves
    `release` (checked: signed, its tree as listed): the build's system with the
    release's id, model, engine and what `builder release` recorded of it (its profile
    and plan, in bundle.json). `builder verify --release`: a fleet checked after a
    deploy. A build's Ansible run is not repeated (it would bring back the build's
    release)."""
    m, what = release.manifest, f"release {release.release_id}"
    try:
        record = json.loads((release.dir / "bundle.json").read_text())
        plan, profile = record["plan"], record["profile"]
        if not (isinstance(plan, dict) and isinstance(profile, dict)):
            raise TypeError
        for k in ("total", "gateway_overhead", "memory_max"):
            if not isinstance(plan.get(k), int):
                raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise BuilderError(f"{what}: {display_path(release.dir / 'bundle.json')} does not "
                           "say what it was planned for (a release imported from a bundle, "
                           "or made by an older builder); make it here with `builder "
                           "release`") from None
    if m.target != built["target"]:
        raise BuilderError(f"{what} is for {m.target}; the {built['profile']} build is a "
                           f"{built['target']}")
    e = m.engine
    return {
        **built, "release_id": m.release_id,
        "engine": {"kind": e.kind, "probe": {"ready": e.ready, "alive": e.alive},
                   "start_seconds": e.build_seconds or built["engine"]["start_seconds"]},
        "release": {"id": m.release_id, "dir": str(release.dir), "model_id": m.model.id},
        "model": {**built["model"], "id": m.model.id, "sha256": m.model.sha256,
                  "device_path": m.model.path},
        "plan": plan,
        "inputs": {**built["inputs"], "profile": profile},
        "provision_vars": None,
    }


def answers_for(d: Device, expected: dict[str, Any], release: Release, cache: Cache,
                thresholds: dict, say: Any) -> dict[str, Any] | None:
    """verify.min_agreement's reference answers for the suite (`builder verify`, `builder
    lab run`), or None: without the bar, or (said) when the release carries none and
    there is no reference for its engine here, the agreement check is left out of the
    suite. `release` is the one the device should serve, checked (trust.open_release);
    `expected` what the device should run (a build's manifest, or as deployed): the
    profile the release was made from. The answers signed into the release are used
    when they are long enough, else the release's model answers here."""
    from ..resolve import built_profile, engine_named
    from . import reference

    tokens = thresholds.get("min_agreement")
    if not tokens:
        return None
    try:
        profile = built_profile(expected) or d.profile
    except ValueError as e:
        raise BuilderError(f"verify.min_agreement: the profile release {release.release_id} "
                           f"was made from cannot be read here ({e}); build again") from None
    engine = engine_named(profile.engine.kind)
    carried = release.tree / reference.ANSWERS
    if carried.is_file():
        what = f"release {release.release_id}'s {reference.ANSWERS}"
        try:
            signed = reference.parse(carried.read_bytes(), what)
        except (OSError, ValueError) as e:
            raise BuilderError(f"verify.min_agreement: {e}; make the release again with "
                               "`builder release`") from None
        if signed.tokens >= tokens:
            say(f"verify.min_agreement: the reference answers signed into release "
                f"{release.release_id} ({signed.engine})")
            return _for_suite(engine, carried, tokens, signed)
        say(f"note: verify.min_agreement: release {release.release_id} carries answers "
            f"of {signed.tokens} tokens, fewer than {tokens}; answering here")
    path = reference.make(d, profile, release.tree, release.model_path,
                          release.manifest.model.sha256, cache, tokens)
    if path is None:
        say(f"note: verify.min_agreement: release {release.release_id} carries no reference "
            f"answers and there is no reference here for {engine.kind} "
            f"{profile.model.quant} (docs/quality.md); the agreement check is left out")
        return None
    try:
        return _for_suite(engine, path, tokens, reference.parse(path.read_bytes(), str(path)))
    except (OSError, ValueError) as e:
        raise BuilderError(f"verify.min_agreement: the answers made here: {e}") from None


def _for_suite(engine: Engine, path: Path, tokens: int, answers: Any) -> dict[str, Any]:
    """What the suite's check (test_answers.py) is given: the answers (it reads their
    tolerance from them), how many tokens to compare, what answered them, and whether
    the device's engine returns log-probabilities (else its text is compared)."""
    return {"path": str(path), "tokens": tokens, "engine": answers.engine,
            "logprobs": engine.logprobs}


def api_url_of(target: SshHost, service: Service, given: str | None = None) -> str:
    """Where this machine reaches the device's public port: `given` (a VM's forwarded
    port, a NAT), else the SSH host at service.port."""
    if given is None:
        scheme = "https" if service.tls_cert else "http"
        return f"{scheme}://{target.host}:{service.port}"
    u = urlparse(given)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise BuilderError(f"--api-url {given}: expected http(s)://host:port")
    return given.rstrip("/")


def run_suite(manifest: Path, target: SshHost, key: Path, state: Path, junit: Path,
              api_url: str, extra_args: list[str] | None = None, *,
              thresholds: dict | None = None, select: str | None = None,
              log_file: Path | None = None, checks: Path | None = None,
              answers: dict | None = None) -> int:
    """Run the suite; returns pytest's exit status (0 all passed). `api_url` is where
    this machine reaches the public port (api_url_of); `thresholds` the profile's
    verify.* section (default: the one it was built with); `select` a pytest -k
    expression (e.g. "performance"); `log_file` takes pytest's output instead of the
    terminal (`builder lab run`: devices verified side by side); `checks` the device's
    target's own checks (a test module or directory), run after the shared ones;
    `answers` the reference answers of verify.min_agreement (answers_for)."""
    ssh_config = ssh_to(target, key, state)
    settle(target, ssh_config, json.loads(manifest.read_text()), log_file)
    for f in (junit, log_file):  # a failed check's report shows its arguments: the API key
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch(mode=0o600)
            f.chmod(0o600)  # pytest and the log rewrite it in place, keeping the mode
    env = {**os.environ,
           "EDGE_LLM_VERIFY": json.dumps({
               "manifest": str(manifest.resolve()), "host": target.host,
               "port": target.port, "user": target.user, "key": str(key),
               "known_hosts": str(state / "known_hosts"), "state": str(state),
               "api_url": api_url, "verify": thresholds, "answers": answers})}
    cmd = [sys.executable, "-m", "pytest", str(SUITE), *([str(checks)] if checks else []),
           "-p", "builder.verify.suite.plugin", "-p", "no:cacheprovider",
           f"--hosts={target.url}", f"--ssh-config={ssh_config}", "--sudo",
           f"--junitxml={junit}", "-o", "junit_family=xunit1", "--rootdir", str(SUITE),
           "-v", *(["-k", select] if select else []), *(extra_args or [])]
    if log_file is None:
        rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
    else:
        with log_file.open("w") as log:
            rc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT).returncode
    if rc == 5:
        raise BuilderError(f"--select {select}: no check of the verify suite matches")
    if rc not in (0, 1):
        raise BuilderError(f"the verify suite could not run (pytest exit {rc}); "
                           f"report: {display_path(junit)}")
    return rc


def inventory_targets(inventory: Path, user: str = "edge") -> list[SshHost]:
    """Hosts of an Ansible inventory (any format ansible-inventory reads)."""
    from ..provision import inventory_hosts

    out = []
    for n, v in inventory_hosts(inventory).items():
        try:
            port = int(v.get("ansible_port", 22))
        except (TypeError, ValueError):
            raise BuilderError(f"{display_path(inventory)}: host {n}: ansible_port "
                               f"{v.get('ansible_port')!r} is not a number") from None
        out.append(_target(str(v.get("ansible_user", user)), str(v.get("ansible_host", n)),
                           port, f"{display_path(inventory)}: host {n}"))
    return out
