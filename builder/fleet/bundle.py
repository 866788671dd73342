"""A signed release in one file, carried into a site without a network (a USB disk, a
data diode): `builder bundle export` on the connected side, `builder bundle import` (or
`builder deploy --bundle`) on the closed one.

The file is a POSIX tar (pax headers), not compressed:

    edge-llm-bundle.json          what this file is (format, release id); informative only
    tree/release.json             the signed manifest and its signature, first: an import
    tree/release.json.sig         checks them before it writes a byte
    tree/...                      every directory, file and link release.json lists
    model/<sha256>.gguf           the model: one GGUF file, or
    model/<sha256>/<file>...      the files of a checkpoint directory

Why no compression: the model is nearly all of the file and quantized weights hardly
compress (zstd -3 saves about 6% on a Q4 GGUF); an uncompressed tar can be read from
any offset, so an import that was cut short (a pulled stick, a full disk, Ctrl-C)
resumes where it stopped without reading again what it already has, where a
compressed stream would have to be decompressed from its start; and the standard
library reads it (no zstd module before Python 3.14).

What is trusted is only what release.json says, once its signature verifies against
the site's signers (trust.py: --allowed-signers, or OUT/allowed_signers; never a key
or a path the bundle names) and its values parse (trust.Manifest: paths inside the
tree, link targets that never go up, modes 0644/0755, sha256 hex). An import is a
two-phase commit: each entry goes into a staging directory (OUT/releases/.import-<id>/)
under the name of its verified sha256, and anything the manifest does not list is
refused; only then is the release assembled in a new directory beside its place
(directories, then files created new, links last, so nothing is written through a
link) and checked whole against the manifest once more before it is renamed into
OUT/releases/<id>/. Nothing appears there before every hash has matched; what was read
whole stays staged, so the next attempt does not read it again. A release of the same
id already there is verified, not trusted.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .. import __version__
from ..device.layout import RELEASE_MANIFEST, RELEASE_SIGNATURE
from ..errors import BuilderError, display_path
from ..log import console
from ..units import MiB, format_size
from . import trust
from .release import Bundle
from .trust import Manifest, Refused, Release

FORMAT = 1
HEADER = "edge-llm-bundle.json"
TREE, MODEL = "tree", "model"
HEAD = (HEADER, f"{TREE}/{RELEASE_MANIFEST}", f"{TREE}/{RELEASE_SIGNATURE}")
HEAD_MAX = 64 * MiB  # the header, the manifest and the signature are read into memory
CHUNK = MiB
PROGRESS_FROM = 64 * MiB  # a bar for files at least this big, on a terminal


@dataclass(frozen=True)
class Entry:
    """One entry a bundle must hold, as the signed manifest describes it."""

    kind: str  # "file", "dir" or "link"
    sha256: str = ""
    mode: int = 0o644
    target: str = ""  # a link's
    size: int | None = None  # known for a GGUF model only


@dataclass
class Imported:
    bundle: Bundle
    already: bool = False  # the release was here already: nothing was written
    copied: int = 0  # bytes read from the bundle file into place
    resumed: int = 0  # bytes an earlier, interrupted import had already taken


@dataclass(frozen=True)
class Exported:
    path: Path
    release_id: str
    bytes: int
    model_bytes: int


# --- pure: what a bundle holds ------------------------------------------------------------

def expected(m: Manifest) -> dict[str, Entry]:
    """Every entry of the bundle of release manifest `m` (parsed and checked: paths
    inside the tree, modes a release may have), in the order export writes them (the
    tree sorted, then the model), by tar member name. The one definition of the format
    both directions use."""
    out: dict[str, Entry] = {}
    tree: dict[str, Entry] = {}
    for rel, mode in m.dirs.items():
        tree[rel] = Entry("dir", mode=mode)
    for rel, (sha, mode) in m.files.items():
        tree[rel] = Entry("file", sha256=sha, mode=mode)
    for rel, target in m.links.items():
        tree[rel] = Entry("link", mode=0o777, target=target)
    for rel in sorted(tree):
        out[f"{TREE}/{rel}"] = tree[rel]
    if m.model.files is not None:  # a checkpoint directory: its sha256 is over its listing
        for rel in sorted(m.model.files):
            out[f"{MODEL}/{m.model.name}/{rel}"] = Entry("file", sha256=m.model.files[rel])
    else:
        out[f"{MODEL}/{m.model.name}"] = Entry("file", sha256=m.model.sha256,
                                               size=m.model.bytes)
    return out


def header(m: Manifest) -> dict[str, Any]:
    return {"format": FORMAT, "what": "edge-llm release bundle",
            "release_id": m.release_id, "profile": m.profile,
            "model": {"id": m.model.id, "bytes": m.model.bytes},
            "builder_version": __version__}


# --- export ----------------------------------------------------------------------------

class _Hashing(io.RawIOBase):
    """A file read through, hashed on the way (tarfile copies from it)."""

    def __init__(self, f: BinaryIO, advance: Callable[[int], None]) -> None:
        self.f, self.advance, self.h = f, advance, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.h.update(b)
        self.advance(len(b))
        return b


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    if not console.is_terminal or total < PROGRESS_FROM:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _mtime(m: Manifest) -> int:
    """The release's creation time on every member: the same release, the same bytes."""
    try:
        return calendar.timegm(time.strptime(m.created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return 0


def _member(name: str, kind: str, mode: int, mtime: int, size: int = 0,
            target: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": tarfile.SYMTYPE}[kind]
    ti.mode, ti.mtime, ti.size, ti.linkname = mode, mtime, size, target
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def export_bundle(r: Release, dest: Path) -> Exported:
    """Verified release `r` as one file at `dest` (written beside it and renamed): every
    file is hashed again as it is written and must match the signed manifest, so a
    release changed after it was checked is not carried anywhere."""
    m = r.manifest
    data = m.data
    sig = (r.tree / RELEASE_SIGNATURE).read_bytes()
    want = expected(m)
    model_src = r.model_path
    if not dest.parent.is_dir():
        raise BuilderError(f"-o {dest}: {display_path(dest.parent)} is not a directory")
    name = m.model.name
    model_bytes = m.model.bytes
    need = r.tree_bytes + model_bytes + MiB
    free = shutil.disk_usage(dest.parent).free
    if free < need:
        raise BuilderError(f"-o {dest}: {format_size(free)} free on {display_path(dest.parent)}"
                           f", the bundle needs about {format_size(need)}")

    def source(member: str) -> Path:
        if member.startswith(f"{TREE}/"):
            return r.tree / member[len(TREE) + 1:]
        rel = member[len(f"{MODEL}/{name}"):].lstrip("/")
        return model_src / rel if rel else model_src

    mtime = _mtime(m)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
                head = (json.dumps(header(m), indent=2).encode() + b"\n", data, sig)
                for member, blob in zip(HEAD, head, strict=True):
                    tf.addfile(_member(member, "file", 0o644, mtime, len(blob)),
                               io.BytesIO(blob))
                for member, e in want.items():
                    if e.kind != "file":
                        tf.addfile(_member(member, e.kind, e.mode, mtime, target=e.target))
                        continue
                    src = source(member)
                    size = src.stat().st_size
                    with open(src, "rb") as f, _progress(f"writing {member}", size) as adv:
                        h = _Hashing(f, adv)
                        tf.addfile(_member(member, "file", e.mode, mtime, size), h)
                    if h.h.hexdigest() != e.sha256:
                        raise BuilderError(
                            f"{display_path(src)} differs from the signed {RELEASE_MANIFEST}: "
                            "it changed after the release was made; make the release again "
                            "with `builder release`")
                    written += size
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.EFBIG:
            raise BuilderError(f"-o {dest}: the filesystem cannot hold a file this large "
                               f"({format_size(need)}; FAT32 stops at 4GiB): use a disk "
                               "formatted exFAT or ext4") from None
        raise BuilderError(f"-o {dest}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Exported(dest, m.release_id, dest.stat().st_size, model_bytes)


# --- import ----------------------------------------------------------------------------

@dataclass
class _Reader:
    """A bundle file read member by member: headers through tarfile, data straight from
    the file at the member's offset (so a resumed copy seeks past what it has)."""

    path: Path
    f: BinaryIO
    tf: tarfile.TarFile | None = None
    last: str = "its start"  # the last member read whole, for messages

    def refuse(self, msg: str) -> Refused:
        return Refused(f"{display_path(self.path)}: refused: {msg}")

    def members(self) -> Iterator[tarfile.TarInfo]:
        try:
            self.tf = tarfile.open(fileobj=self.f, mode="r:")  # noqa: SIM115  (self.f's)
        except tarfile.ReadError:
            raise self.refuse("not an edge-llm bundle (not a tar file, or cut off before "
                              "its first entry)") from None
        while True:
            try:
                ti = self.tf.next()
            except (tarfile.ReadError, EOFError):
                ti = None
            if ti is None:
                return
            yield ti

    def read_all(self, ti: tarfile.TarInfo) -> bytes:
        if not ti.isreg() or ti.size > HEAD_MAX:
            raise self.refuse(f"{ti.name}: not a file of the size it should be")
        self.f.seek(ti.offset_data)
        data = self.f.read(ti.size)
        if len(data) != ti.size:
            raise self.truncated(ti.name)
        return data

    def truncated(self, member: str, kept: str = "") -> Refused:
        return self.refuse(f"the file ends inside {member}: it is truncated (a copy cut "
                           f"short?); copy it again and re-run{kept}")


@dataclass
class _Stage:
    """OUT/releases/.import-<id>/blobs: entries read whole and verified, by sha256, and
    the one being read (<sha256>.part), kept between attempts."""

    dir: Path
    copied: int = 0
    resumed: int = 0
    taken: dict[str, tarfile.TarInfo] = field(default_factory=dict)
    shas: set[str] = field(default_factory=set)  # taken in this attempt

    @property
    def blobs(self) -> Path:
        return self.dir / "blobs"

    def kept(self) -> str:
        n = sum(f.stat().st_size for f in self.blobs.glob("*")) if self.blobs.is_dir() else 0
        return (f"; the {format_size(n)} already read is kept in "
                f"{display_path(self.dir)}: the next attempt goes on from there") if n else ""


def _hash_into(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def _io_error(r: _Reader, st: _Stage, ti: tarfile.TarInfo, e: OSError,
              doing: str) -> BuilderError:
    return BuilderError(f"{display_path(r.path)}: {e.strerror or e} while {doing} "
                        f"({ti.name}); fix that and re-run: the import resumes{st.kept()}")


def _take_file(r: _Reader, ti: tarfile.TarInfo, e: Entry, st: _Stage) -> None:
    """One file entry into the stage, under its sha256, only if its bytes hash to it.
    A whole one from an earlier attempt is not read again; a partial one is continued,
    and read again from its start if what it continued does not hash right."""
    blob = st.blobs / e.sha256
    if e.sha256 in st.shas or (blob.is_file() and blob.stat().st_size == ti.size):
        if e.sha256 not in st.shas:
            st.resumed += ti.size
        st.shas.add(e.sha256)
        return
    part = st.blobs / f"{e.sha256}.part"
    h = hashlib.sha256()
    done = part.stat().st_size if part.is_file() else 0
    if done > ti.size:
        part.unlink()
        done = 0
    if done:
        _hash_into(h, part)
    try:
        out = open(part, "ab" if done else "wb")  # noqa: SIM115  (closed by the `with`)
    except OSError as err:
        raise _io_error(r, st, ti, err, f"writing {display_path(part)}") from None
    with out, _progress(f"reading {ti.name}", ti.size) as advance:
        advance(done)
        left = ti.size - done
        while left:
            try:
                r.f.seek(ti.offset_data + ti.size - left)
                chunk = r.f.read(min(CHUNK, left))
            except OSError as err:
                raise _io_error(r, st, ti, err, "reading the bundle") from None
            if not chunk:
                out.flush()
                raise r.truncated(ti.name, st.kept())
            try:
                out.write(chunk)
            except OSError as err:
                raise _io_error(r, st, ti, err, f"writing {display_path(part)}") from None
            h.update(chunk)
            left -= len(chunk)
            st.copied += len(chunk)
            advance(len(chunk))
        try:
            out.flush()
            os.fsync(out.fileno())
        except OSError as err:
            raise _io_error(r, st, ti, err, f"writing {display_path(part)}") from None
    if h.hexdigest() != e.sha256:
        part.unlink()
        if done:  # the part kept from before went bad: read the whole entry again
            _take_file(r, ti, e, st)
            return
        raise r.refuse(f"{ti.name}: sha256 differs from the signed release: the bundle was "
                       f"altered or damaged; nothing was imported{st.kept()}")
    st.resumed += done
    st.shas.add(e.sha256)
    os.replace(part, blob)


def _take(r: _Reader, members: Iterator[tarfile.TarInfo], want: dict[str, Entry],
          st: _Stage) -> None:
    """Every entry the signed manifest lists, checked, into the stage; nothing else."""
    st.blobs.mkdir(parents=True, exist_ok=True)
    for ti in members:
        e = want.get(ti.name)
        if e is None or ti.name in st.taken:
            raise r.refuse(f"{ti.name}: not part of the signed release" if e is None else
                           f"{ti.name}: present twice")
        st.taken[ti.name] = ti
        if e.kind == "dir" and not ti.isdir():
            raise r.refuse(f"{ti.name}: the signed release has a directory there")
        if e.kind == "link" and (not ti.issym() or ti.linkname != e.target):
            raise r.refuse(f"{ti.name}: the signed release has a link to {e.target} there")
        if e.kind == "file":
            if not ti.isreg():
                raise r.refuse(f"{ti.name}: the signed release has a regular file there")
            if e.size is not None and ti.size != e.size:
                raise r.refuse(f"{ti.name}: {ti.size} bytes, the signed release says "
                               f"{e.size}{st.kept()}")
            _take_file(r, ti, e, st)
        r.last = ti.name
    gone = [n for n in want if n not in st.taken]
    if gone:
        raise r.refuse(f"it ends after {r.last}, without {gone[0]}"
                       f"{f' and {len(gone) - 1} more entries' if len(gone) > 1 else ''} "
                       "of the signed release: it is truncated or damaged; copy it again "
                       f"and re-run{st.kept()}")


def _write_blob(blob: Path, dest: Path, mode: int, first: bool) -> None:
    """A verified blob at `dest`, a new file (never through a link, never over one): a
    hard link for its first use (the stage stays whole until the release is placed), a
    copy for a second use or where links are not allowed."""
    if first:
        try:
            os.link(blob, dest, follow_symlinks=False)
            os.chmod(dest, mode, follow_symlinks=False)
            return
        except OSError:
            pass
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(fd, "wb") as out, open(blob, "rb") as src:
        shutil.copyfileobj(src, out, CHUNK)
    os.chmod(dest, mode, follow_symlinks=False)


def _assemble(m: Manifest, sig: bytes, want: dict[str, Entry], st: _Stage, tmp: Path,
              final: Path, source: Path) -> None:
    """The release in `tmp` (a new directory under OUT/releases), from the stage's
    verified blobs: directories first, then files created new (never through a link),
    links last, so nothing is written outside `tmp` whatever the links say; then the
    whole tree checked against the manifest (nothing more, nothing less)."""
    tmp.mkdir()
    (tmp / TREE).mkdir()
    (tmp / MODEL).mkdir()
    if m.model.files is not None:
        (tmp / MODEL / m.model.name).mkdir()
    for member in sorted(k for k, e in want.items() if e.kind == "dir"):
        (tmp / member).mkdir(mode=0o700)
    for member in sorted(k for k in want if k.startswith(f"{MODEL}/{m.model.name}/")):
        (tmp / member).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    seen: set[str] = set()
    for member, e in want.items():
        if e.kind == "file":
            _write_blob(st.blobs / e.sha256, tmp / member, e.mode, e.sha256 not in seen)
            seen.add(e.sha256)
    for member, e in want.items():
        if e.kind == "link":
            os.symlink(e.target, tmp / member)
    for member, e in sorted(want.items(), reverse=True):
        if e.kind == "dir":
            os.chmod(tmp / member, e.mode, follow_symlinks=False)
    tree = tmp / TREE
    if trust.listing(tree) != m.listing():
        raise Refused(f"{display_path(source)}: refused: the assembled tree differs from "
                      "its signed manifest")
    for name, blob in ((RELEASE_MANIFEST, m.data), (RELEASE_SIGNATURE, sig)):
        fd = os.open(tree / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o644)
        with open(fd, "wb") as f:
            f.write(blob)
    (tmp / "bundle.json").write_text(json.dumps(
        {"release_id": m.release_id, "model_path": str(final / MODEL / m.model.name),
         "imported_from": str(source.resolve())}, indent=2) + "\n")


def _already(final: Path, s: trust.Signers, m: Manifest) -> bool:
    """A release of this id already placed, and it is this signed one (signature, tree,
    model): verified, not trusted; one that is not gets replaced."""
    if not (final / TREE / RELEASE_SIGNATURE).is_file():
        return False
    try:
        r = trust.open_release(final, s)
    except BuilderError:
        return False
    if r.manifest.data != m.data:
        return False
    if m.model.files is None:
        h = hashlib.sha256()
        _hash_into(h, r.model_path)
        return h.hexdigest() == m.model.sha256
    return all(_sha_of(r.model_path / rel) == sha for rel, sha in m.model.files.items())


def _sha_of(path: Path) -> str:
    h = hashlib.sha256()
    _hash_into(h, path)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(stage: Path) -> Iterator[None]:
    stage.mkdir(parents=True, exist_ok=True)
    with open(stage / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuilderError(f"{display_path(stage)}: another import of this release is "
                               "running") from None
        yield


def import_bundle(path: Path, out_root: Path, s: trust.Signers) -> Imported:
    """The release in bundle `path` into OUT/releases/<id>/, checked against its signature
    (by the site's keys `s`, never keys the bundle names) and every hash first. A release
    already here is checked too, and left as it is when it is this one."""
    try:
        f = open(path, "rb")  # noqa: SIM115  (closed by the `with` below)
    except OSError as e:
        raise BuilderError(f"{path}: {e.strerror}") from None
    with f:
        r = _Reader(path, f)
        members = r.members()
        head = []
        for want_name in HEAD:
            ti = next(members, None)
            if ti is None:
                raise r.truncated(want_name) if head else r.refuse(
                    "not an edge-llm bundle (no entries)")
            if ti.name != want_name:
                raise r.refuse(f"not an edge-llm bundle: it holds {ti.name} where "
                               f"{want_name} should be")
            head.append(r.read_all(ti))
        try:
            info = json.loads(head[0])
        except ValueError:
            raise r.refuse(f"{HEADER} is not JSON") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise r.refuse(f"bundle format {info.get('format') if isinstance(info, dict) else '?'}"
                           f", this builder reads format {FORMAT}")
        trust.check_signature(head[1], head[2], s, display_path(path))
        m = Manifest.parse(head[1], display_path(path))
        if info.get("release_id") != m.release_id:
            raise r.refuse(f"{HEADER} says release {info.get('release_id')!r}, the signed "
                           f"manifest {m.release_id}")
        releases = (out_root / "releases").resolve()
        releases.mkdir(parents=True, exist_ok=True)
        final = releases / m.release_id
        want = expected(m)
        st = _Stage(releases / f".import-{m.release_id}")
        with _locked(st.dir):
            if _already(final, s, m):
                return Imported(Bundle(final), already=True)
            _take(r, members, want, st)
            tmp = releases / f".tmp-import-{m.release_id}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                _assemble(m, head[2], want, st, tmp, final, path)
                if final.exists() or final.is_symlink():  # incomplete, or not this release
                    aside = releases / f".old-{m.release_id}-{os.getpid()}"
                    os.replace(final, aside)
                    if aside.is_dir() and not aside.is_symlink():
                        shutil.rmtree(aside, ignore_errors=True)
                    else:
                        aside.unlink()
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        shutil.rmtree(st.dir, ignore_errors=True)
    return Imported(Bundle(final), copied=st.copied, resumed=st.resumed)
