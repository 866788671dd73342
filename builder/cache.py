"""Content-addressed artifact cache.

Each entry lives at `<root>/<kind>/<key>/` where key = sha256 of every input that
changes its bytes (source hash, target, flags, compiler and tool versions). An entry
is built in a temporary directory next to it and renamed into place, so a failed or
interrupted build leaves nothing behind; its `manifest.json` records the inputs and
the sha256 of every output file, and a hit re-hashes the outputs: a corrupted entry
is reported, removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import display_path
from .log import log

ENV_VAR = "EDGE_LLM_CACHE"
MANIFEST = "manifest.json"
OUT = "out"
_CHUNK = 1 << 20


def default_root() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edge-llm-builder"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pinned_sha256(path: Path, pinned: str | None, what: str) -> str:
    """The sha256 of a file the build takes as given, refused in one line naming `what`
    (the setting or flag) when it is missing or differs from the one pinned."""
    from .errors import BuilderError

    if not path.is_file():
        raise BuilderError(f"{what}: {display_path(path)} does not exist")
    digest = sha256_file(path)
    if pinned and digest != pinned:
        raise BuilderError(f"{what}: {display_path(path)} has sha256 {digest}, expected "
                           f"{pinned}")
    return digest


def key_of(kind: str, inputs: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def content_of(root: Path, *, follow_links: bool, mode_mask: int = 0o7777
               ) -> dict[str, dict[str, Any]]:
    """What a directory of inputs holds, for a key: each file's sha256 and mode, each
    directory's mode, each link's target, by path. With `follow_links` a link counts as
    what it points at (Ansible copies a role's files through links). Bytecode
    (__pycache__) is left out: the host makes it when it imports, nothing copies it."""
    out: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink() and (not follow_links or not p.exists()):
                out[rel] = {"link": os.readlink(p)}
            elif p.is_dir():
                out[rel] = {"dir": p.stat().st_mode & mode_mask}
            elif p.suffix != ".pyc":
                out[rel] = {"sha256": sha256_file(p), "mode": p.stat().st_mode & mode_mask}
    return out


def _hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        elif p.is_symlink():
            out[str(p.relative_to(root))] = {"symlink": os.readlink(p)}
    return out


@dataclass
class Entry:
    path: Path
    manifest: dict[str, Any]
    hit: bool = False  # True when it came from the cache rather than a build just now
    # an entry that may be evicted (get_or_build's keep=) is held while it is used: a
    # shared lock, taken before the entry's own lock is let go; release() lets it go
    held: IO[str] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def out(self) -> Path:
        return self.path / OUT

    @property
    def size(self) -> int:
        return sum(f.get("size", 0) for f in self.manifest["outputs"].values())

    def problems(self) -> list[str]:
        """Output files whose bytes no longer match the manifest."""
        found = _hash_tree(self.out) if self.out.is_dir() else {}
        want = self.manifest["outputs"]
        bad = [f"{name}: missing" for name in want if name not in found]
        bad += [f"{name}: sha256 mismatch" for name, meta in want.items()
                if name in found and found[name] != meta]
        bad += [f"{name}: not in manifest" for name in found if name not in want]
        return bad


class Cache:
    def __init__(self, root: Path | None = None):
        self.root = (root or default_root()).expanduser()

    def dir(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def outputs(self, kind: str, name: str) -> list[Path]:
        """The output file `name` of each finished entry of `kind`, for a listing: read
        only (nothing is loaded, verified or removed, unlike entries())."""
        d = self.root / kind
        if not d.is_dir():
            return []
        return sorted(e / OUT / name for e in d.iterdir()
                      if not e.name.startswith(".") and (e / MANIFEST).is_file()
                      and (e / OUT / name).is_file())

    # --- lookup and build ---------------------------------------------------------
    def lookup(self, kind: str, inputs: dict[str, Any]) -> Entry | None:
        key = key_of(kind, inputs)
        return self._load(self.root / kind / key, verify=True)

    def _load(self, path: Path, *, verify: bool) -> Entry | None:
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.warning("cache entry %s has an unreadable manifest; rebuilding", path)
            self._discard(path)
            return None
        entry = Entry(path, manifest, hit=True)
        if verify:
            bad = entry.problems()
            if bad:
                log.warning("cache entry %s is corrupted (%s); rebuilding",
                            display_path(path), "; ".join(bad[:3]))
                self._discard(path)
                return None
            with contextlib.suppress(OSError):
                (path / MANIFEST).touch()  # a use: for `cache prune --older-than`
        return entry

    def get_or_build(self, kind: str, inputs: dict[str, Any],
                     build: Callable[[Path, Path], dict[str, Any] | None],
                     *, label: str, keep: tuple[str, int] | None = None) -> Entry:
        """The entry for `inputs`, building it with `build(out_dir, log_file)` on a miss.

        `build` may return extra metadata to record in the manifest. `keep=(slot, n)`:
        the entry belongs to `slot` (one profile's provisioned trees, say), and a new one
        evicts all but the `n` last used of its kind and slot; for entries as big as a
        disk image that every change of a profile makes anew. Such an entry comes held
        (Entry.release() when done with it): no eviction takes it while it is read."""
        key = key_of(kind, inputs)
        final = self.root / kind / key
        with self._lock(kind, key):
            entry = self._load(final, verify=True)
            if entry is not None:
                log.info("%s: cache hit (%s)", label, key[:12])
                if keep:
                    entry.held = self._hold(kind, key)
                return entry
            tmp = final.with_name(f".tmp-{key[:16]}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / OUT).mkdir(parents=True)
            # The log lives outside the entry while building, so that after a failure
            # the path named in the error message still exists.
            build_log = self._log_path(kind, key)
            build_log.unlink(missing_ok=True)
            started = time.time()
            try:
                extra = build(tmp / OUT, build_log) or {}
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if build_log.exists():
                shutil.move(build_log, tmp / "build.log")
            manifest = {
                "kind": kind, "key": key, "label": label, "inputs": inputs,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "build_seconds": round(time.time() - started, 1),
                "outputs": _hash_tree(tmp / OUT), "log": "build.log", **extra,
                **({"slot": keep[0]} if keep else {}),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if final.exists():  # a corrupted entry we could not move aside
                self._discard(final)
            os.replace(tmp, final)
            made = Entry(final, manifest, hit=False,
                         held=self._hold(kind, key) if keep else None)
        if keep:
            self._evict(kind, *keep)
        return made

    def _hold(self, kind: str, key: str) -> IO[str]:
        fh = (self.dir(kind) / f".use-{key[:16]}").open("w")
        fcntl.flock(fh, fcntl.LOCK_SH)
        return fh

    def _evict(self, kind: str, slot: str, keep: int) -> None:
        """All but the `keep` last used entries of `kind` in `slot` (the newest is the
        one just made). One that a build holds (or is rebuilding) is left."""
        mine = []
        for d in (self.root / kind).iterdir():
            if d.name.startswith(".") or not d.is_dir():
                continue
            e = self._load(d, verify=False)
            if e is not None and e.manifest.get("slot") == slot:
                with contextlib.suppress(OSError):
                    mine.append(((d / MANIFEST).stat().st_mtime, e))
        mine.sort(key=lambda t: t[0], reverse=True)
        for _, e in mine[keep:]:
            with contextlib.ExitStack() as locks:
                try:
                    for name in (f".lock-{e.key[:16]}", f".use-{e.key[:16]}"):
                        fh = locks.enter_context((self.dir(kind) / name).open("w"))
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                log.info("%s: evicted %s (%s: %d kept)", kind, e.key[:12], slot, keep)
                self._discard(e.path)

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f".trash-{path.name[:16]}-{os.getpid()}-{time.time_ns()}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _log_path(self, kind: str, key: str) -> Path:
        return self.dir("logs") / f"{kind}-{key[:16]}.log"

    def failed_log(self, kind: str, inputs: dict[str, Any]) -> Path:
        """Where the log of a build that failed stays for inspection."""
        return self._log_path(kind, key_of(kind, inputs))

    @contextlib.contextmanager
    def _lock(self, kind: str, key: str) -> Iterator[None]:
        lock_path = self.dir(kind) / f".lock-{key[:16]}"
        with lock_path.open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- maintenance --------------------------------------------------------------
    def entries(self) -> list[Entry]:
        out = []
        if not self.root.is_dir():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for d in sorted(kind_dir.iterdir()):
                if d.is_dir() and not d.name.startswith("."):
                    e = self._load(d, verify=False)
                    if e is not None:
                        out.append(e)
        return out

    def prune(self, *, older_than_days: float | None = None, everything: bool = False,
              dry_run: bool = False) -> list[tuple[str, int]]:
        """Remove entries unused for longer than `older_than_days` (or all), plus leftovers
        of interrupted builds. Returns (what, bytes) removed."""
        removed: list[tuple[str, int]] = []
        now = time.time()
        for e in self.entries():
            age_days = (now - (e.path / MANIFEST).stat().st_mtime) / 86400
            if everything or (older_than_days is not None and age_days > older_than_days):
                removed.append((f"{e.kind}/{e.key[:12]} {e.manifest.get('label', '')}",
                                e.size))
                if not dry_run:
                    self._discard(e.path)
        if self.root.is_dir():
            for leftover in self.root.glob("*/.t*-*"):
                if leftover.is_dir() and not _in_use(leftover):
                    removed.append((f"{display_path(leftover)} (interrupted build)", 0))
                    if not dry_run:
                        shutil.rmtree(leftover, ignore_errors=True)
        return removed


def _in_use(tmp: Path) -> bool:
    """A temporary build directory whose builder process is still running."""
    try:
        pid = int(tmp.name.rsplit("-", 1)[1]) if tmp.name.startswith(".tmp-") else 0
    except ValueError:
        return False
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
