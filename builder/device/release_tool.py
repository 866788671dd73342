"""edge-llm-release: the device side of a release (installed by the `release` role).

A release is a directory <engine_root>/releases/<id>/ holding the engine's files, the
gateway (lib/), their settings (engine.env, gateway.json, systemd/engine.conf), and
release.json: every file's sha256 and mode, every directory and link, and the model's
sha256, signed with an SSH signing key (release.json.sig, `ssh-keygen -Y sign -n
edge-llm-release`). The model lives once, content-addressed, in the model directory.
`current` points at the release being served; the state file records the last release
that passed its health gate. Paths come from the roles' device.json (layout.py).

  verify ID             signature, then every entry of the tree against it (nothing more,
                        nothing less, owners and modes), then the model; exit 2 if refused
  install ID            image build: verify, make it current and last good (no restart)
  activate ID           take a staged transfer (releases/.incoming-ID) in, verify, switch
                        current, restart, health gate (health plus a real completion; an
                        engine that keeps exiting fails it at once); on failure switch
                        back, restart, confirm the old release serves; exit 3 when rolled
                        back
  rollback [--to ID]    activate the last good release before the current one
  guard                 at boot and from a timer: a switch that never passed its gate
                        (device reset, activation killed) is gated now or undone
  model-check NAME --sha256 S --bytes N
                        is the model NAME present and whole? A wrong one is removed, so
                        the deploy sends it again; exit 2 when it must be sent
  scrub                 hash every model again (bit-rot under a valid stamp); a corrupt
                        one is removed; exit 1 if any was
  gc --keep N           remove old releases (never current, last good or pending) and
                        models no kept release uses
  status                JSON: current, last good, pending, last result, releases, health

It runs as root, with python3's standard library and ssh-keygen only. It is safe on its
own: the controller starts `activate` as a transient systemd unit, so a lost link or a
killed controller does not stop it halfway, and the state file is written (fsync,
rename) before and after the switch so `guard` can finish or undo it after a reset.

What a release tree may hold is exactly what its signed manifest lists: bytecode is
removed before verifying and made again from the verified sources afterwards (hash-
checked at every import), so nothing unsigned runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import api_keys
from .layout import RELEASE_MANIFEST, RELEASE_SIGNATURE, SIGNING_NAMESPACE, Layout

RELEASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MODEL_NAME = re.compile(r"^[0-9a-f]{64}(\.gguf)?$")
INCOMING = ".incoming-"  # a transfer in progress: releases/.incoming-<id>
OWN = (RELEASE_MANIFEST, RELEASE_SIGNATURE)
DERIVED = "__pycache__"  # made on the device from verified sources, never taken in
# An engine that exited this often since the switch's restart (systemd's Restart= brought
# it back each time) is crash-looping: waiting out the gate's timeout gains nothing.
CRASH_LOOP = 3


class Refused(Exception):
    """The release is not what was signed, or not signed by an allowed key."""


class Failed(Exception):
    """The device cannot do what was asked (a full disk, ...): nothing was switched."""


def log(msg: str) -> None:
    print(f"edge-llm-release: {msg}", file=sys.stderr, flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Device:
    def __init__(self, layout: Layout, systemctl: str = "systemctl") -> None:
        self.layout = layout
        self.engine_root = Path(layout.engine_root)
        self.releases = Path(layout.releases)
        self.current_link = Path(layout.current)
        self.state_dir = Path(layout.state_dir)
        self.models = Path(layout.model_dir)
        self.state_file = Path(layout.release_state)
        self.lock_file = self.state_dir / ".release.lock"
        self.signers = Path(layout.signers)
        self.keys = Path(layout.api_keys)
        self.units = (layout.engine_unit, layout.gateway_unit)
        self.systemctl_cmd = systemctl

    # --- state ------------------------------------------------------------------------
    def load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {"last_good": None, "pending": None, "last_result": None, "history": []}

    def save_state(self, state: dict) -> None:
        """Written beside and renamed over: the old state stays whole if this fails."""
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(state, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
            _fsync_dir(self.state_dir)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise Failed(f"cannot record the release state in {self.state_file}: "
                         f"{e.strerror}; free space in {self.state_dir}") from None

    @contextlib.contextmanager
    def locked(self, wait: bool = True):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def current_id(self) -> str | None:
        try:
            return os.readlink(self.current_link).rsplit("/", 1)[-1]
        except OSError:
            return None

    def switch(self, release: str) -> None:
        """current -> releases/<id>, atomically: a new link under a temporary name renamed
        over the old one, so current always names a complete release."""
        tmp = self.engine_root / ".current.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"releases/{release}", tmp)
        os.replace(tmp, self.current_link)
        _fsync_dir(self.engine_root)

    # --- taking a release in ----------------------------------------------------------
    def receive(self, release: str) -> Path:
        """releases/<id>, verified. A staged transfer (.incoming-<id>) is verified where it
        lies and only then renamed into place, replacing whatever held that name: a cut
        transfer never blocks a release, the next complete one simply takes its place."""
        final = self.releases / release
        staged = self.releases / f"{INCOMING}{release}"
        if not staged.is_dir() or staged.is_symlink():
            self.verify_tree(final, release)
            return final
        self.verify_tree(staged, release)
        trash = self.releases / f".trash-{release}-{time.time_ns()}"
        if final.exists() or final.is_symlink():
            os.replace(final, trash)
        os.replace(staged, final)
        _fsync_dir(self.releases)
        shutil.rmtree(trash, ignore_errors=True)
        return final

    def verify(self, release: str) -> dict:
        """The release (staged or in place) as signed, or Refused."""
        staged = self.releases / f"{INCOMING}{release}"
        rdir = staged if staged.is_dir() and not staged.is_symlink() else \
            self.releases / release
        return self.verify_tree(rdir, release)

    def _signed_manifest(self, rdir: Path) -> dict:
        """release.json, read once: these bytes are checked against the signature and
        these bytes are what is used."""
        if not self.signers.is_file():
            raise Refused(f"{self.signers} is missing: this device trusts no release key")
        data = self._read_own(rdir / RELEASE_MANIFEST)
        self._read_own(rdir / RELEASE_SIGNATURE)  # a root-owned regular file, or refused
        # the data goes to ssh-keygen from memory: what is checked is what is used
        r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(self.signers), "-I",
                            SIGNING_NAMESPACE, "-n", SIGNING_NAMESPACE, "-s",
                            str(rdir / RELEASE_SIGNATURE)], input=data, capture_output=True)
        if r.returncode != 0:
            why = (r.stderr.decode(errors="replace").strip() or "bad signature").splitlines()
            raise Refused(f"{RELEASE_MANIFEST} of {rdir.name}: signature refused: {why[-1]}")
        try:
            return json.loads(data)
        except ValueError:
            raise Refused(f"{rdir.name}: {RELEASE_MANIFEST} is not JSON") from None

    @staticmethod
    def _read_own(path: Path) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            what = "not signed" if path.name == RELEASE_SIGNATURE else "missing"
            raise Refused(f"{path} is missing: the release is {what}") from None
        except OSError as e:
            raise Refused(f"{path}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise Refused(f"{path}: not a regular file owned by root and writable only "
                              "by it")
            return f.read()

    def verify_tree(self, rdir: Path, release: str) -> dict:
        """Signature, then every entry of the tree (files, directories, links; their
        owner and mode) against the signed manifest, then the model."""
        try:
            top = rdir.lstat()
        except FileNotFoundError:
            raise Refused(f"{rdir}: no such release") from None
        if not stat.S_ISDIR(top.st_mode) or top.st_uid != 0 or top.st_mode & 0o022:
            raise Refused(f"{rdir}: not a directory owned by root and writable only by it")
        m = self._signed_manifest(rdir)
        if m.get("release_id") != release:
            raise Refused(f"{rdir}: {RELEASE_MANIFEST} names release {m.get('release_id')!r}")
        self._remove_bytecode(rdir)
        files, links = m.get("files", {}), m.get("links", {})
        dirs = m.get("dirs")  # format 1 listed no directories: they must be 0755 then
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(rdir):
            for name in (*dirnames, *filenames):
                path = Path(dirpath, name)
                rel = str(path.relative_to(rdir))
                if rel in OWN:
                    continue
                self._check_entry(rdir.name, path, rel, files, links, dirs)
                seen.add(rel)
        listed = set(files) | set(links) | set(dirs or ())
        gone = sorted(listed - seen)
        if gone:
            raise Refused(f"{rdir.name}: missing {', '.join(gone[:5])}")
        self._check_model(rdir.name, m)
        return m

    @staticmethod
    def _check_entry(rname: str, path: Path, rel: str, files: dict, links: dict,
                     dirs: dict | None) -> None:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0 or st.st_gid != 0:
            raise Refused(f"{rname}: {rel}: owned by {st.st_uid}:{st.st_gid}, not root")
        if stat.S_ISLNK(st.st_mode):
            if links.get(rel) != os.readlink(path):
                raise Refused(f"{rname}: {rel}: symlink not in the signed release")
        elif stat.S_ISDIR(st.st_mode):
            want = dirs.get(rel, {}).get("mode") if dirs is not None else "0755"
            if dirs is not None and rel not in dirs:
                raise Refused(f"{rname}: {rel}/: directory not in the signed release")
            if mode != int(want, 8):
                raise Refused(f"{rname}: {rel}/: mode {mode:04o} differs from the signed "
                              f"release ({want})")
        elif stat.S_ISREG(st.st_mode):
            want = files.get(rel)
            if want is None:
                raise Refused(f"{rname}: {rel}: file not in the signed release")
            if mode != int(want["mode"], 8):
                raise Refused(f"{rname}: {rel}: mode differs from the signed release")
            if sha256(path) != want["sha256"]:
                raise Refused(f"{rname}: {rel}: sha256 differs from the signed release")
        else:
            raise Refused(f"{rname}: {rel}: not a regular file, directory or link (a "
                          "FIFO, socket or device node): never part of a release")

    @staticmethod
    def _remove_bytecode(rdir: Path) -> None:
        """Every __pycache__ goes before verifying: bytecode is derived, made here from
        the verified sources (compile), never taken from a transfer."""
        for dirpath, dirnames, filenames in os.walk(rdir):
            for name in [*dirnames, *filenames]:
                if name != DERIVED:
                    continue
                path = Path(dirpath, name)
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    dirnames.remove(name)
                else:
                    path.unlink()

    def compile(self, release: str) -> None:
        """Bytecode from the verified sources, hash-checked against them at each import."""
        lib = self.releases / release / "lib"
        if lib.is_dir():
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-f",
                            "--invalidation-mode", "checked-hash", str(lib)],
                           check=False, capture_output=True)

    # --- models ----------------------------------------------------------------------
    def model_path(self, m: dict) -> Path:
        """Where the release's model is on this device: content-addressed in the model
        directory, whatever directory the release names (its name is checked)."""
        sha = m["model"]["sha256"]
        name = Path(m["model"].get("path") or f"{sha}.gguf").name
        if not MODEL_NAME.match(name) or not name.startswith(sha):
            raise Refused(f"model path {m['model'].get('path')!r} is not named by its sha256")
        return self.models / name

    def _check_model(self, rname: str, m: dict) -> None:
        model = self.model_path(m)
        if not model.exists():
            raise Refused(f"{rname}: model {model} is missing")
        files = m["model"].get("files")
        if not self.model_ok(model, m["model"]["sha256"], files):
            raise Refused(f"{rname}: {model}: sha256 differs from the signed release")

    @staticmethod
    def _stamp_key(model: Path, sha: str) -> str:
        """What hashing a model once is trusted for: the file (or the files of a model
        directory) unchanged since - size, times including ctime (which no utime call
        can set back), inode and device."""
        paths = sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() \
            else [model]
        parts = [sha]
        for p in paths:
            st = p.stat()
            parts += [str(v) for v in (st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                       st.st_ino, st.st_dev)]
        return " ".join(parts)

    def model_ok(self, model: Path, want: str, files: dict | None = None, *,
                 trust_stamp: bool = True) -> bool:
        stamp = model.with_name(model.name + ".verified")
        key = self._stamp_key(model, want)
        if trust_stamp:
            with contextlib.suppress(OSError):
                if stamp.read_text() == key:
                    return True
        if model.is_dir():
            got = {str(p.relative_to(model)): sha256(p) for p in sorted(model.rglob("*"))
                   if p.is_file()}
            listing = "".join(f"{s}  {n}\n" for n, s in sorted(got.items()))
            ok = (files is None or got == files) and \
                hashlib.sha256(listing.encode()).hexdigest() == want
        else:
            ok = model.is_file() and sha256(model) == want
        if ok:
            stamp.write_text(key)
        else:
            stamp.unlink(missing_ok=True)
        return ok

    def _discard_model(self, model: Path) -> None:
        aside = model.with_name(f".corrupt-{model.name}-{time.time_ns()}")
        os.replace(model, aside)
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
        model.with_name(model.name + ".verified").unlink(missing_ok=True)

    def model_check(self, name: str, want: str, size: int | None) -> dict:
        """Is model `name` here and whole? A wrong one (size, bytes) is removed."""
        model = self.models / name
        if not model.exists():
            return {"present": False, "reason": "missing"}
        if size is not None and model.is_file() and model.stat().st_size != size:
            why = f"size {model.stat().st_size}, not {size}"
        elif not self.model_ok(model, want):
            why = "sha256 differs"
        else:
            return {"present": True}
        self._discard_model(model)
        return {"present": False, "reason": why, "removed": True}

    def scrub(self) -> dict:
        """Hash every model again, stamp or not: silent corruption on the medium."""
        checked, corrupt = 0, []
        for model in sorted(self.models.iterdir()) if self.models.is_dir() else []:
            if not MODEL_NAME.match(model.name):
                continue
            checked += 1
            if not self.model_ok(model, model.name[:64], trust_stamp=False):
                corrupt.append(model.name)
                self._discard_model(model)
        return {"checked": checked, "corrupt": corrupt}

    # --- serving -----------------------------------------------------------------------
    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.systemctl_cmd, *args], capture_output=True, text=True)

    def restart(self) -> None:
        self.systemctl("daemon-reload")  # systemd/engine.conf is a drop-in through current/
        rc = self.systemctl("restart", *self.units).returncode
        if rc:
            log(f"systemctl restart exited {rc}; the health gate decides")

    def manifest(self, release: str) -> dict:
        return json.loads((self.releases / release / RELEASE_MANIFEST).read_text())

    def gateway_of(self, release: str) -> tuple[dict, str, ssl.SSLContext | None]:
        """The release's public port on loopback: its settings, base URL, TLS context."""
        gw = self.manifest(release).get("gateway", {})
        base = f"{'https' if gw.get('tls') else 'http'}://127.0.0.1:{gw.get('port', 8080)}"
        ctx = ssl._create_unverified_context() if gw.get("tls") else None  # our loopback
        return gw, base, ctx

    def engine_crashing(self) -> str | None:
        """Why waiting for the engine is no use, else None: systemd gave up on it, or it
        exited CRASH_LOOP times since it was last started by hand (NRestarts counts the
        restarts Restart= made and starts again at 0 on a start by hand, the switch's)."""
        unit = self.units[0]
        shown = self.systemctl("show", "-p", "NRestarts", "-p", "ActiveState", unit).stdout
        props = dict(ln.split("=", 1) for ln in shown.splitlines() if "=" in ln)
        if props.get("ActiveState") == "failed":
            return f"{unit} failed (journalctl -u {unit})"
        restarts = props.get("NRestarts", "")
        if restarts.isdigit() and int(restarts) >= CRASH_LOOP:
            return f"{unit} exited {restarts} times since the switch (journalctl -u {unit})"
        return None

    def gate(self, release: str, timeout: float) -> tuple[bool, str]:
        """Serving = the gateway's /health says ok, then a real one-token completion
        through the public port's API succeeds, all within `timeout` seconds."""
        gw, base, ctx = self.gateway_of(release)
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
            crash = self.engine_crashing()
            if crash:
                return False, f"not healthy: {crash}"
            time.sleep(2)
        else:
            return False, f"not healthy within {timeout:.0f}s ({why})"
        headers = {"Content-Type": "application/json"}
        if gw.get("api_auth", True):
            try:  # the first key, read by the gateway's own reader
                key = api_keys.read(self.keys)[0]
            except api_keys.KeysError as e:
                return False, f"no API key to test the completion with: {e}"
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps({"messages": [{"role": "user", "content": "Say OK."}],
                           "max_tokens": 2, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers=headers)
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

    # --- commands ----------------------------------------------------------------------
    @staticmethod
    def _result(state: dict, release: str, result: str, reason: str) -> None:
        state["last_result"] = {"release": release, "result": result, "reason": reason,
                                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        state["history"] = [*(state.get("history") or [])[-19:], state["last_result"]]

    def install(self, release: str) -> int:
        with self.locked():
            self.receive(release)
            self.compile(release)
            state = self.load_state()
            state.update(last_good=release, pending=None)
            self._result(state, release, "installed", "image build")
            self.save_state(state)
            self.switch(release)
        print(json.dumps({"release": release, "result": "installed"}))
        return 0

    def activate(self, release: str, timeout: float) -> int:
        with self.locked():
            state = self.load_state()
            before = self.current_id()
            staged = (self.releases / f"{INCOMING}{release}").is_dir()
            if before == release and state.get("last_good") == release and not state.get(
                    "pending") and not staged:
                print(json.dumps({"release": release, "result": "unchanged"}))
                return 0
            try:
                self.receive(release)
                m = self.manifest(release)
            except Refused as e:
                self._result(state, release, "refused", str(e))
                with contextlib.suppress(Failed):
                    self.save_state(state)
                raise
            self.compile(release)
            os.sync()  # the new release on disk before current names it (power cuts)
            fallback = state.get("last_good") or before
            state["pending"] = {"release": release, "previous": fallback,
                                "since": time.time(), "timeout": timeout}
            self.save_state(state)  # Failed here: nothing switched yet
            self.switch(release)
            self.restart()
            ok, why = self.gate(release, timeout)
            if ok:
                state.update(last_good=release, pending=None)
                self._result(state, release, "activated", why)
                self.save_state(state)
                print(json.dumps({"release": release, "result": "activated",
                                  "model_sha256": m["model"]["sha256"]}))
                return 0
            log(f"{release} failed its health gate: {why}; switching back to {fallback}")
            restored = self._restore(fallback, timeout)
            state["pending"] = None
            self._result(state, release, "rolled-back", f"{why}; {restored}")
            self.save_state(state)
            print(json.dumps({"release": release, "result": "rolled-back", "reason": why,
                              "serving": self.current_id(), "restored": restored}))
            return 3

    def _restore(self, fallback: str | None, timeout: float) -> str:
        if not fallback:
            return "no earlier release to return to"
        self.switch(fallback)
        self.restart()
        ok, why = self.gate(fallback, timeout)
        return f"{fallback} serves again" if ok else f"{fallback} does not serve either: {why}"

    def rollback(self, to: str | None, timeout: float) -> int:
        state = self.load_state()
        if to is None:
            done = [h["release"] for h in state.get("history", [])
                    if h["result"] in ("activated", "installed")]
            cur = self.current_id()
            earlier = [r for r in done if r != cur and (self.releases / r).is_dir()]
            if not earlier:
                log("no earlier release that passed its gate is on this device")
                return 2
            to = earlier[-1]
        return self.activate(to, timeout)

    def guard(self, timeout: float) -> int:
        # an activation holds the lock for as long as it runs: a free lock with a pending
        # switch means the activation is gone (device reset, process killed)
        with self.locked(wait=False) as got:
            if not got:
                log("an activation is running; it finishes the switch itself")
                return 0
            state = self.load_state()
            pending, cur, good = state.get("pending"), self.current_id(), \
                state.get("last_good")
            if not pending and (cur == good or good is None):
                return 0
            if pending and cur == pending.get("previous"):
                state["pending"] = None  # reset before the switch: nothing changed
                self.save_state(state)
                return 0
            ok, why = self.gate(cur, timeout) if cur else (False, "no current release")
            if ok:
                state.update(last_good=cur, pending=None)
                self._result(state, cur, "activated", f"guard: {why}")
                self.save_state(state)
                log(f"{cur} passed its health gate after an interrupted switch")
                return 0
            restored = self._restore(good, timeout)
            state["pending"] = None
            self._result(state, cur or "?", "rolled-back", f"guard: {why}; {restored}")
            self.save_state(state)
            log(f"{cur} never passed its health gate ({why}); {restored}")
            return 3

    def release_dirs(self) -> list[Path]:
        """The releases on the device (not transfers in progress or leftovers)."""
        if not self.releases.is_dir():
            return []
        return [d for d in self.releases.iterdir()
                if d.is_dir() and not d.is_symlink() and not d.name.startswith(".")]

    def gc(self, keep: int) -> int:
        with self.locked():
            state = self.load_state()
            pending = (state.get("pending") or {}).get("release")
            protected = {self.current_id(), state.get("last_good"), pending}
            rels = sorted(self.release_dirs(), key=lambda d: d.stat().st_mtime, reverse=True)
            kept = [d for d in rels if d.name in protected]
            for d in rels:
                if d not in kept and len(kept) < keep:
                    kept.append(d)
            removed = [d.name for d in rels if d not in kept]
            for name in removed:
                shutil.rmtree(self.releases / name)
            for trash in self.releases.glob(".trash-*") if self.releases.is_dir() else []:
                shutil.rmtree(trash, ignore_errors=True)
            used = set()
            for d in kept:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    used.add(json.loads((d / RELEASE_MANIFEST).read_text())["model"]["sha256"])
            models = []
            for f in sorted(self.models.iterdir()) if self.models.is_dir() else []:
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

    def status(self) -> int:
        state = self.load_state()
        cur = self.current_id()
        out = {"current": cur, "last_good": state.get("last_good"),
               "pending": state.get("pending"), "last_result": state.get("last_result"),
               "releases": sorted(d.name for d in self.release_dirs()),
               "model_sha256": None, "healthy": False}
        if cur:
            with contextlib.suppress(OSError, ValueError, KeyError):
                out["model_sha256"] = self.manifest(cur)["model"]["sha256"]
                _, base, ctx = self.gateway_of(cur)
                with urllib.request.urlopen(base + "/health", timeout=5, context=ctx) as r:
                    out["healthy"] = r.status == 200
        print(json.dumps(out))
        return 0


def _release_id(value: str) -> str:
    if not RELEASE_ID.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: not a release id")
    return value


def _model_name(value: str) -> str:
    if not MODEL_NAME.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: not a model name (<sha256>[.gguf])")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-llm-release", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("verify", "install", "activate"):
        p = sub.add_parser(name)
        p.add_argument("release", type=_release_id)
        p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("rollback")
    p.add_argument("--to", type=_release_id)
    p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("guard")
    p.add_argument("--gate-timeout", type=float, default=300)
    p = sub.add_parser("model-check")
    p.add_argument("name", type=_model_name)
    p.add_argument("--sha256", required=True)
    p.add_argument("--bytes", type=int)
    sub.add_parser("scrub")
    p = sub.add_parser("gc")
    p.add_argument("--keep", type=int, default=3)
    sub.add_parser("status")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # argparse printed one line of usage and the problem
        return 2 if e.code else 0
    d = Device(Layout.load(os.environ.get("EDGE_LLM_ROOT", "/")),
               os.environ.get("EDGE_LLM_SYSTEMCTL", "systemctl"))
    try:
        if a.cmd == "verify":
            d.verify(a.release)
            print(json.dumps({"release": a.release, "result": "verified"}))
            return 0
        if a.cmd == "install":
            return d.install(a.release)
        if a.cmd == "activate":
            return d.activate(a.release, a.gate_timeout)
        if a.cmd == "rollback":
            return d.rollback(a.to, a.gate_timeout)
        if a.cmd == "guard":
            return d.guard(a.gate_timeout)
        if a.cmd == "model-check":
            out = d.model_check(a.name, a.sha256, a.bytes)
            print(json.dumps(out))
            return 0 if out["present"] else 2
        if a.cmd == "scrub":
            out = d.scrub()
            print(json.dumps(out))
            if out["corrupt"]:
                log(f"corrupt models removed: {', '.join(out['corrupt'])}")
            return 1 if out["corrupt"] else 0
        if a.cmd == "gc":
            return d.gc(max(1, a.keep))
        return d.status()
    except Refused as e:
        log(f"refused: {e}")
        print(json.dumps({"release": getattr(a, "release", None), "result": "refused",
                          "reason": str(e)}))
        return 2
    except (Failed, OSError) as e:
        why = str(e) if isinstance(e, Failed) else f"{e.filename or ''}: {e.strerror}".lstrip(
            ": ")
        log(f"failed: {why}")
        print(json.dumps({"release": getattr(a, "release", None), "result": "failed",
                          "reason": why}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
