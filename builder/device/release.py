"""edge-llm-release: the device side of a release (edge-llm release role).

A release is a directory /opt/edge-llm/releases/<id>/ holding the engine (bin/), the
gateway (lib/), their settings (engine.env, gateway.json, systemd/engine.conf), and
release.json: every file's sha256 and the model's, signed with an SSH signing key
(release.json.sig, `ssh-keygen -Y sign -n edge-llm-release`). The model lives once in
/var/lib/edge-llm/models/<sha256>.gguf. /opt/edge-llm/current points at the release
being served; state.json records the last release that passed its health gate.

  verify ID            signature, every file's hash, no file more; exit 2 if refused
  install ID           image build: verify, make it current and last good (no restart)
  activate ID          verify, switch current, restart, health gate (health endpoint plus
                       a real completion); on failure switch back, restart, confirm the
                       old release serves; exit 3 when rolled back
  rollback [--to ID]   activate the last good release before the current one
  guard                at boot and from a timer: a switch that never passed its gate
                       (device reset, activation killed) is gated now or undone
  gc --keep N          remove old releases (never current, last good or pending) and
                       models no kept release uses
  status               JSON: current, last good, pending, last result, releases, health

It runs as root, with python3's standard library and ssh-keygen only. It is safe on its
own: the controller starts `activate` as a transient systemd unit, so a lost link or a
killed controller does not stop it halfway, and the state file is written (fsync, rename)
before and after the switch so `guard` can finish or undo it after a reset.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .layout import RELEASE_MANIFEST, RELEASE_SIGNATURE, SIGNING_NAMESPACE, Layout

# The roles' layout (DEVICE_CONFIG); EDGE_LLM_ROOT puts it under a tree (tests).
L = Layout.load(os.environ.get("EDGE_LLM_ROOT", "/"))
ENGINE_ROOT = Path(L.engine_root)
RELEASES = Path(L.releases)
CURRENT = Path(L.current)
STATE_DIR = Path(L.state_dir)
MODELS = Path(L.model_dir)
STATE = Path(L.release_state)
LOCK = STATE_DIR / ".release.lock"
SIGNERS = Path(L.signers)
KEYS = Path(L.api_keys)
NAMESPACE = PRINCIPAL = SIGNING_NAMESPACE
UNITS = (L.engine_unit, L.gateway_unit)
DERIVED = ("__pycache__",)  # made on the device from verified sources
OWN = (RELEASE_MANIFEST, RELEASE_SIGNATURE)


class Refused(Exception):
    """The release is not what was signed, or not signed by an allowed key."""


def log(msg: str) -> None:
    print(f"edge-llm-release: {msg}", file=sys.stderr, flush=True)


# --- state -----------------------------------------------------------------------------

def load_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except FileNotFoundError:
        return {"last_good": None, "pending": None, "last_result": None, "history": []}


def save_state(state: dict) -> None:
    STATE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_name(STATE.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, STATE)
    _fsync_dir(STATE.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(wait: bool = True):
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def current_id() -> str | None:
    try:
        return os.readlink(CURRENT).rsplit("/", 1)[-1]
    except OSError:
        return None


def switch(release: str) -> None:
    """current -> releases/<id>, atomically: a new link under a temporary name renamed
    over the old one, so current always names a complete release."""
    tmp = ENGINE_ROOT / ".current.new"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, CURRENT)
    _fsync_dir(ENGINE_ROOT)


# --- verification ----------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(release: str) -> dict:
    return json.loads((RELEASES / release / RELEASE_MANIFEST).read_text())


def check_signature(rdir: Path) -> None:
    if not SIGNERS.is_file():
        raise Refused(f"{SIGNERS} is missing: this device trusts no release key")
    sig = rdir / RELEASE_SIGNATURE
    if not sig.is_file():
        raise Refused(f"{sig} is missing: the release is not signed")
    with open(rdir / RELEASE_MANIFEST, "rb") as data:
        r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(SIGNERS), "-I", PRINCIPAL,
                            "-n", NAMESPACE, "-s", str(sig)], stdin=data,
                           capture_output=True, text=True)
    if r.returncode != 0:
        why = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["bad signature"]
        raise Refused(f"release.json of {rdir.name}: signature refused: {why[0]}")


def verify(release: str) -> dict:
    """The release as signed, or Refused. Checks the signature, then every file's
    hash and kind, that nothing unsigned is there, and the model's hash."""
    rdir = RELEASES / release
    if not (rdir / RELEASE_MANIFEST).is_file():
        raise Refused(f"{rdir}: no such release (release.json missing)")
    check_signature(rdir)
    m = manifest(release)
    if m.get("release_id") != release:
        raise Refused(f"{rdir}: release.json names release {m.get('release_id')!r}")
    files, links = m["files"], m.get("links", {})
    seen = set()
    for path in sorted(rdir.rglob("*")):
        rel = str(path.relative_to(rdir))
        if any(part in DERIVED for part in path.relative_to(rdir).parts) or rel in OWN:
            continue
        if path.is_symlink():
            if links.get(rel) != os.readlink(path):
                raise Refused(f"{rdir.name}: {rel}: symlink not in the signed release")
        elif path.is_file():
            want = files.get(rel)
            if want is None:
                raise Refused(f"{rdir.name}: {rel}: file not in the signed release")
            if sha256(path) != want["sha256"]:
                raise Refused(f"{rdir.name}: {rel}: sha256 differs from the signed release")
            if stat.S_IMODE(path.stat().st_mode) != int(want["mode"], 8):
                raise Refused(f"{rdir.name}: {rel}: mode differs from the signed release")
        seen.add(rel)
    gone = sorted((set(files) | set(links)) - seen)
    if gone:
        raise Refused(f"{rdir.name}: missing {', '.join(gone[:5])}")
    model = model_path(m)
    if not model.is_file():
        raise Refused(f"{rdir.name}: model {model} is missing")
    if not _model_checked(model, m["model"]["sha256"]):
        raise Refused(f"{rdir.name}: {model}: sha256 differs from the signed release")
    return m


def model_path(m: dict) -> Path:
    """Where the release's model is on this device: content-addressed in the model
    directory, whatever path the release names (it is checked to be that one)."""
    sha = m["model"]["sha256"]
    name = Path(m["model"].get("path") or f"{sha}.gguf").name
    if not name.startswith(sha):
        raise Refused(f"model path {m['model'].get('path')!r} is not named by its sha256")
    return MODELS / name


def _model_checked(model: Path, want: str) -> bool:
    """Hash a model once: a stamp of (size, mtime, inode) saves re-reading gigabytes at
    every activation; any change to the file makes it hash again."""
    st = model.stat()
    stamp = model.with_name(model.name + ".verified")
    key = f"{want} {st.st_size} {st.st_mtime_ns} {st.st_ino}"
    with contextlib.suppress(OSError):
        if stamp.read_text() == key:
            return True
    if sha256(model) != want:
        return False
    stamp.write_text(key)
    return True


def compile_bytecode(release: str) -> None:
    lib = RELEASES / release / "lib"
    if lib.is_dir():
        subprocess.run([sys.executable, "-m", "compileall", "-q", "--invalidation-mode",
                        "checked-hash", str(lib)], check=False, capture_output=True)


# --- serving ---------------------------------------------------------------------------

def systemctl(*args: str) -> int:
    exe = os.environ.get("EDGE_LLM_SYSTEMCTL", "systemctl")
    return subprocess.run([exe, *args], capture_output=True, text=True).returncode


def restart() -> None:
    systemctl("daemon-reload")  # systemd/engine.conf is a drop-in through current/
    rc = systemctl("restart", *UNITS)
    if rc:
        log(f"systemctl restart exited {rc}; the health gate decides")


def gateway_of(release: str) -> tuple[dict, str, ssl.SSLContext | None]:
    """The release's public port on loopback: its settings, base URL, TLS context."""
    gw = manifest(release).get("gateway", {})
    base = f"{'https' if gw.get('tls') else 'http'}://127.0.0.1:{gw.get('port', 8080)}"
    ctx = ssl._create_unverified_context() if gw.get("tls") else None  # our own loopback
    return gw, base, ctx


def gate(release: str, timeout: float) -> tuple[bool, str]:
    """Serving = the gateway's /health says ok, then a real one-token completion
    through the public port's API succeeds, all within `timeout` seconds."""
    gw, base, ctx = gateway_of(release)
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=10, context=ctx) as r:
                if r.status == 200:
                    break
        except urllib.error.HTTPError as e:
            why = f"/health answered {e.code}"
        except OSError as e:
            why = f"/health: {e}"
        time.sleep(2)
    else:
        return False, f"not healthy within {timeout:.0f}s ({why})"
    headers = {"Content-Type": "application/json"}
    if gw.get("api_auth", True):
        with contextlib.suppress(OSError, IndexError):
            headers["Authorization"] = "Bearer " + KEYS.read_text().split()[0]
    body = json.dumps({"messages": [{"role": "user", "content": "Say OK."}],
                       "max_tokens": 2, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body, headers=headers)
    left = max(10.0, deadline - time.monotonic())
    try:
        with urllib.request.urlopen(req, timeout=left, context=ctx) as r:
            reply = json.load(r)
    except urllib.error.HTTPError as e:
        return False, f"completion answered {e.code}"
    except (OSError, ValueError) as e:
        return False, f"completion failed: {e}"
    if not reply.get("choices"):
        return False, "completion returned no choices"
    return True, "healthy and completing"


# --- commands --------------------------------------------------------------------------

def _result(state: dict, release: str, result: str, reason: str) -> None:
    state["last_result"] = {"release": release, "result": result, "reason": reason,
                            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state["history"] = [*(state.get("history") or [])[-19:], state["last_result"]]


def cmd_install(release: str) -> int:
    with locked():
        verify(release)
        compile_bytecode(release)
        switch(release)
        state = load_state()
        state.update(last_good=release, pending=None)
        _result(state, release, "installed", "image build")
        save_state(state)
    print(json.dumps({"release": release, "result": "installed"}))
    return 0


def cmd_activate(release: str, timeout: float) -> int:
    with locked():
        state = load_state()
        before = current_id()
        if before == release and state.get("last_good") == release and not state.get(
                "pending"):
            print(json.dumps({"release": release, "result": "unchanged"}))
            return 0
        try:
            m = verify(release)
        except Refused as e:
            _result(state, release, "refused", str(e))
            save_state(state)
            raise
        compile_bytecode(release)
        os.sync()  # the new release on disk before current names it (power cuts happen)
        fallback = state.get("last_good") or before
        state["pending"] = {"release": release, "previous": fallback,
                            "since": time.time(), "timeout": timeout}
        save_state(state)
        switch(release)
        restart()
        ok, why = gate(release, timeout)
        if ok:
            state.update(last_good=release, pending=None)
            _result(state, release, "activated", why)
            save_state(state)
            print(json.dumps({"release": release, "result": "activated",
                              "model_sha256": m["model"]["sha256"]}))
            return 0
        log(f"{release} failed its health gate: {why}; switching back to {fallback}")
        restored = _restore(fallback, timeout)
        state["pending"] = None
        _result(state, release, "rolled-back", f"{why}; {restored}")
        save_state(state)
        print(json.dumps({"release": release, "result": "rolled-back", "reason": why,
                          "serving": current_id(), "restored": restored}))
        return 3


def _restore(fallback: str | None, timeout: float) -> str:
    if not fallback:
        return "no earlier release to return to"
    switch(fallback)
    restart()
    ok, why = gate(fallback, timeout)
    return f"{fallback} serves again" if ok else f"{fallback} does not serve either: {why}"


def cmd_rollback(to: str | None, timeout: float) -> int:
    state = load_state()
    if to is None:
        done = [h["release"] for h in state.get("history", [])
                if h["result"] in ("activated", "installed")]
        cur = current_id()
        earlier = [r for r in done if r != cur and (RELEASES / r).is_dir()]
        if not earlier:
            log("no earlier release that passed its gate is on this device")
            return 2
        to = earlier[-1]
    return cmd_activate(to, timeout)


def cmd_guard(timeout: float) -> int:
    # an activation holds the lock for as long as it runs: a free lock with a pending
    # switch means the activation is gone (device reset, process killed)
    with locked(wait=False) as got:
        if not got:
            log("an activation is running; it finishes the switch itself")
            return 0
        state = load_state()
        pending, cur, good = state.get("pending"), current_id(), state.get("last_good")
        if not pending and (cur == good or good is None):
            return 0
        if pending and cur == pending.get("previous"):
            state["pending"] = None  # reset before the switch: nothing changed
            save_state(state)
            return 0
        ok, why = gate(cur, timeout) if cur else (False, "no current release")
        if ok:
            state.update(last_good=cur, pending=None)
            _result(state, cur, "activated", f"guard: {why}")
            save_state(state)
            log(f"{cur} passed its health gate after an interrupted switch")
            return 0
        restored = _restore(good, timeout)
        state["pending"] = None
        _result(state, cur or "?", "rolled-back", f"guard: {why}; {restored}")
        save_state(state)
        log(f"{cur} never passed its health gate ({why}); {restored}")
        return 3


def cmd_gc(keep: int) -> int:
    with locked():
        state = load_state()
        pending = (state.get("pending") or {}).get("release")
        protected = {current_id(), state.get("last_good"), pending}
        rels = sorted((d for d in RELEASES.iterdir() if d.is_dir()),
                      key=lambda d: d.stat().st_mtime, reverse=True) if RELEASES.is_dir() \
            else []
        kept = [d for d in rels if d.name in protected]
        for d in rels:
            if d not in kept and len(kept) < keep:
                kept.append(d)
        removed = [d.name for d in rels if d not in kept]
        for name in removed:
            shutil.rmtree(RELEASES / name)
        used = set()
        for d in kept:
            with contextlib.suppress(OSError, ValueError, KeyError):
                used.add(json.loads((d / RELEASE_MANIFEST).read_text())["model"]["sha256"])
        models = []
        for f in sorted(MODELS.iterdir()) if MODELS.is_dir() else []:
            # <sha256>.gguf, <sha256>/ and their .verified stamps; dot-names are rsync's
            if f.name.startswith(".") or f.name.split(".", 1)[0] in used:
                continue
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f)
            else:
                f.unlink()
            models.append(f.name)
    print(json.dumps({"removed_releases": removed, "removed_models": models,
                      "kept": [d.name for d in kept]}))
    return 0


def cmd_status() -> int:
    state = load_state()
    cur = current_id()
    out = {"current": cur, "last_good": state.get("last_good"),
           "pending": state.get("pending"), "last_result": state.get("last_result"),
           "releases": sorted(d.name for d in RELEASES.iterdir() if d.is_dir())
           if RELEASES.is_dir() else [], "model_sha256": None, "healthy": False}
    if cur:
        with contextlib.suppress(OSError, ValueError, KeyError):
            out["model_sha256"] = manifest(cur)["model"]["sha256"]
            _, base, ctx = gateway_of(cur)
            with urllib.request.urlopen(base + "/health", timeout=5, context=ctx) as r:
                out["healthy"] = r.status == 200
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-llm-release", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("verify", "install", "activate"):
        p = sub.add_parser(name)
        p.add_argument("release")
        p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("rollback")
    p.add_argument("--to")
    p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("guard")
    p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("gc")
    p.add_argument("--keep", type=int, default=3)
    sub.add_parser("status")
    a = ap.parse_args(argv)
    if getattr(a, "release", None) and ("/" in a.release or a.release.startswith(".")):
        log(f"{a.release}: not a release id")
        return 2
    try:
        if a.cmd == "verify":
            verify(a.release)
            print(json.dumps({"release": a.release, "result": "verified"}))
            return 0
        if a.cmd == "install":
            return cmd_install(a.release)
        if a.cmd == "activate":
            return cmd_activate(a.release, a.gate_timeout)
        if a.cmd == "rollback":
            return cmd_rollback(a.to, a.gate_timeout)
        if a.cmd == "guard":
            return cmd_guard(a.gate_timeout)
        if a.cmd == "gc":
            return cmd_gc(max(1, a.keep))
        return cmd_status()
    except Refused as e:
        log(f"refused: {e}")
        print(json.dumps({"release": getattr(a, "release", None), "result": "refused",
                          "reason": str(e)}))
        return 2


if __name__ == "__main__":
    sys.exit(main())
