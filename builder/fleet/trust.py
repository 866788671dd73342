"""What the controller trusts, and how a release earns it.

One trust root per site, never taken from the thing being checked: the keys a release
must be signed by are the operator's `--allowed-signers FILE` (a device's
/etc/edge-llm/allowed_signers), or else the site's own file, OUT/allowed_signers, which
every release made on this machine adds its signing key to. Nothing a release or a
bundle says chooses the keys it is checked against.

A release is opened only through `open_release` (or, for a bundle, `Manifest.parse` after
`check_signature`): the signature over release.json's bytes first, then those same
bytes parsed into typed values (ids, sha256 hex, paths inside the tree, modes, ints), so
nothing unparsed reaches a template engine, a shell, a path join or a chmod. A field
that does not parse is refused in one line naming it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .. import names
from ..cache import sha256_file
from ..device.layout import DEFAULT as LAYOUT
from ..device.layout import RELEASE_FORMAT, RELEASE_MANIFEST, RELEASE_SIGNATURE, SIGNING_NAMESPACE
from ..device.release_tool import MODEL_NAME, RELEASE_ID
from ..errors import BuilderError, display_path
from ..model.pipeline import tree_digest

SITE_SIGNERS = "allowed_signers"  # OUT/allowed_signers
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")  # kinds, keys, quants, versions
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")  # Q4_K_M, int4_awq, as provided
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/+@()=,-]{0,127}$")  # what clients name
_URL_PATH = re.compile(r"^/[A-Za-z0-9/_.-]{0,127}$")
_CREATED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
FILE_MODES = (0o644, 0o755)  # what release.make gives every file
DIR_MODE = 0o755
# Ansible templates every string it is given: no value the controller passes may hold
# the start of a Jinja expression, statement or comment.
JINJA = re.compile(r"\{[{%#]|[}%#]\}")


class Refused(BuilderError):
    """A release or bundle that is not what its trusted signer signed (altered, foreign,
    or holding a value outside what a release may say)."""


# --- the site's signers -------------------------------------------------------------------

@dataclass(frozen=True)
class Signers:
    path: Path
    said: str  # where they come from, for the one line that says so


def site_signers(out_root: Path) -> Path:
    return out_root / SITE_SIGNERS


def record_signer(out_root: Path, line: str) -> None:
    """Trust, on this site, releases signed by the key of allowed_signers `line`: the
    release made here is signed with it. Written beside and renamed, under a lock on
    OUT itself (two builds at once must not lose each other's key)."""
    out_root.mkdir(parents=True, exist_ok=True)
    f = site_signers(out_root)
    fd = os.open(out_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        have = f.read_text().splitlines() if f.is_file() else []
        if line in have:
            return
        tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{ln}\n" for ln in [*have, line]))
        os.replace(tmp, f)
    finally:
        os.close(fd)


def _check_signers_file(path: Path, flag: str) -> None:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not text"
        raise BuilderError(f"{flag}{display_path(path)}: {why}") from None
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise BuilderError(f"{flag}{display_path(path)}: holds no key")
    if any(ln.split()[0].startswith(("ssh-", "ecdsa-", "sk-")) for ln in lines):
        raise BuilderError(
            f"{flag}{display_path(path)}: a public key, not an allowed_signers file; "
            f"one line per key: {SIGNING_NAMESPACE} namespaces=\"{SIGNING_NAMESPACE}\" "
            "ssh-ed25519 AAAA... (a device's /etc/edge-llm/allowed_signers)")


def signers(given: Path | None, out_root: Path) -> Signers:
    """The keys releases are checked against here: `given`, else the site's file."""
    if given is not None:
        _check_signers_file(given, "--allowed-signers ")
        return Signers(given, f"--allowed-signers {display_path(given)}")
    site = site_signers(out_root)
    if not site.is_file():
        raise BuilderError(
            f"no keys to check the release's signature with: give --allowed-signers FILE "
            f"(a device's /etc/edge-llm/allowed_signers), or put the site's keys in "
            f"{display_path(site)} (releases made here add theirs)")
    _check_signers_file(site, "")
    return Signers(site, f"the site's {display_path(site)}")


def check_signature(data: bytes, sig: bytes, s: Signers, what: str) -> None:
    """`data` signed, in the release namespace, by a key of `s`: the check a device makes
    (device/release_tool.py), on the bytes that are then used."""
    with tempfile.TemporaryDirectory(prefix="edge-llm-sig-") as d:
        sig_file = Path(d) / RELEASE_SIGNATURE
        sig_file.write_bytes(sig)
        try:
            r = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(s.path), "-I",
                                SIGNING_NAMESPACE, "-n", SIGNING_NAMESPACE, "-s",
                                str(sig_file)], input=data, capture_output=True)
        except FileNotFoundError:
            raise BuilderError("ssh-keygen: not found; install openssh-client") from None
    if r.returncode != 0:
        said = (r.stderr + r.stdout).decode(errors="replace").strip()
        why = (said or "bad signature").splitlines()[-1].rstrip(".")
        raise Refused(f"{what}: refused: the signature of {RELEASE_MANIFEST} does not verify "
                      f"with {s.said} ({why}): it was altered, or signed by a key this "
                      "site does not trust")


# --- the manifest, typed ------------------------------------------------------------------

# A name in a release tree: what the builder itself puts there (engine binaries, the
# gateway's package and assets, settings), and nothing a shell or a template would read
# as syntax.
_REL = re.compile(r"^[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*(/[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*)*$")


def safe_rel(rel: object) -> bool:
    """A plain relative path inside a tree: no '..', no '.', not absolute, normalised,
    made of the characters file names in a release have."""
    if not isinstance(rel, str) or not _REL.match(rel):
        return False
    p = PurePosixPath(rel)
    return str(p) == rel and ".." not in p.parts


@dataclass(frozen=True)
class Engine:
    kind: str
    cache_key: str
    ready: str
    alive: str
    port: int
    watchdog_seconds: int
    build_seconds: int | None  # an engine the device builds at its first start


@dataclass(frozen=True)
class Gateway:
    port: int
    tls: bool
    api_auth: bool
    cache_key: str


@dataclass(frozen=True)
class Model:
    id: str
    sha256: str
    quant: str
    format: str
    bytes: int
    name: str  # in the device's model directory: <sha256>.gguf or <sha256>
    path: str
    files: dict[str, str] | None  # a checkpoint directory's files and their sha256


@dataclass(frozen=True)
class Manifest:
    """release.json, parsed: every value a type, every path inside the tree."""

    data: bytes  # the signed bytes this was parsed from
    release_id: str
    profile: str
    target: str
    created: str
    builder_version: str
    engine: Engine
    gateway: Gateway
    model: Model
    files: dict[str, tuple[str, int]]  # rel -> (sha256, mode)
    dirs: dict[str, int]  # rel -> mode
    links: dict[str, str]  # rel -> target

    def listing(self) -> dict[str, dict[str, Any]]:
        """As release.listing() describes a tree, to compare the two."""
        return {"files": {r: {"sha256": s, "mode": f"{m:04o}"}
                          for r, (s, m) in self.files.items()},
                "dirs": {r: {"mode": f"{m:04o}"} for r, m in self.dirs.items()},
                "links": dict(self.links)}

    @classmethod
    def parse(cls, data: bytes, what: str) -> Manifest:
        """The manifest in `data`, or Refused naming the first field that is not what a
        release may say (`what` names the release or bundle for the message)."""
        return _Parser(what).manifest(data)


class _Parser:
    def __init__(self, what: str) -> None:
        self.what = what

    def bad(self, field: str, why: str) -> Refused:
        return Refused(f"{self.what}: refused: {RELEASE_MANIFEST} {field}: {why}")

    def obj(self, d: Any, field: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.bad(field, "not an object")
        return d

    def text(self, d: dict[str, Any], key: str, field: str, pattern: re.Pattern[str]) -> str:
        v = d.get(key)
        if not isinstance(v, str) or not pattern.fullmatch(v) or JINJA.search(v):
            raise self.bad(field, f"{v!r} is not what a release may say there")
        return v

    def int_(self, d: dict[str, Any], key: str, field: str, lo: int, hi: int = 1 << 62,
             none: bool = False) -> Any:
        v = d.get(key)
        if v is None and none:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.bad(field, f"{v!r} is not a whole number from {lo} to {hi}")
        return v

    def bool_(self, d: dict[str, Any], key: str, field: str) -> bool:
        v = d.get(key)
        if not isinstance(v, bool):
            raise self.bad(field, f"{v!r} is not true or false")
        return v

    def mode(self, v: Any, field: str, allowed: tuple[int, ...]) -> int:
        if not isinstance(v, str) or not re.fullmatch(r"0[0-7]{3}", v) \
                or int(v, 8) not in allowed:
            raise self.bad(field, f"mode {v!r}: a release's modes are "
                           f"{' or '.join(f'{m:04o}' for m in allowed)}")
        return int(v, 8)

    def manifest(self, data: bytes) -> Manifest:
        try:
            m = json.loads(data)
        except ValueError:
            raise Refused(f"{self.what}: refused: {RELEASE_MANIFEST} is not JSON") from None
        m = self.obj(m, "(top)")
        if m.get("format") != RELEASE_FORMAT:
            raise self.bad("format", f"{m.get('format')!r}, this builder reads format "
                           f"{RELEASE_FORMAT}")
        e = self.obj(m.get("engine"), "engine")
        probe = self.obj(e.get("probe"), "engine.probe")
        engine = Engine(
            kind=self.text(e, "kind", "engine.kind", _TOKEN),
            cache_key=self.text(e, "cache_key", "engine.cache_key", _TOKEN),
            ready=self.text(probe, "ready", "engine.probe.ready", _URL_PATH),
            alive=self.text(probe, "alive", "engine.probe.alive", _URL_PATH),
            port=self.int_(e, "port", "engine.port", 1, 65535),
            watchdog_seconds=self.int_(e, "watchdog_seconds", "engine.watchdog_seconds", 0,
                                       86400),
            build_seconds=self.int_(e, "build_seconds", "engine.build_seconds", 0, 7 * 86400,
                                    none=True))
        g = self.obj(m.get("gateway"), "gateway")
        gateway = Gateway(port=self.int_(g, "port", "gateway.port", 1, 65535),
                          tls=self.bool_(g, "tls", "gateway.tls"),
                          api_auth=self.bool_(g, "api_auth", "gateway.api_auth"),
                          cache_key=self.text(g, "cache_key", "gateway.cache_key", _TOKEN))
        files, dirs, links = self.tree(m)
        return Manifest(
            data=data,
            release_id=self.text(m, "release_id", "release_id", RELEASE_ID),
            profile=self.text(m, "profile", "profile", names.PROFILE_NAME),
            target=self.text(m, "target", "target", _TOKEN),
            created=self.text(m, "created", "created", _CREATED),
            builder_version=self.text(m, "builder_version", "builder_version", _TOKEN),
            engine=engine, gateway=gateway, model=self.model(m),
            files=files, dirs=dirs, links=links)

    def model(self, m: dict[str, Any]) -> Model:
        d = self.obj(m.get("model"), "model")
        sha = self.text(d, "sha256", "model.sha256", SHA256)
        fmt = self.text(d, "format", "model.format", _TOKEN)
        path = self.text(d, "path", "model.path", re.compile(r"^/[A-Za-z0-9/_.-]+$"))
        name = PurePosixPath(path).name
        if not MODEL_NAME.match(name) or not name.startswith(sha) \
                or path != f"{LAYOUT.model_dir}/{name}":
            raise self.bad("model.path", f"{path!r} is not {LAYOUT.model_dir}/ and the "
                           "model's sha256")
        files = d.get("files")
        if files is not None:
            files = self.obj(files, "model.files")
            for rel, s in files.items():
                if not safe_rel(rel):
                    raise self.bad("model.files", f"{rel!r} is not a path inside the model")
                if not isinstance(s, str) or not SHA256.match(s):
                    raise self.bad(f"model.files.{rel}", f"{s!r} is not a sha256")
            if tree_digest(files) != sha:
                raise self.bad("model.files", "they do not add up to the model's sha256")
        return Model(id=self.text(d, "id", "model.id", _MODEL_ID), sha256=sha,
                     quant=self.text(d, "quant", "model.quant", _QUANT), format=fmt,
                     bytes=self.int_(d, "bytes", "model.bytes", 1), name=name, path=path,
                     files=dict(files) if files is not None else None)

    def tree(self, m: dict[str, Any]) -> tuple[dict[str, tuple[str, int]], dict[str, int],
                                                dict[str, str]]:
        files: dict[str, tuple[str, int]] = {}
        dirs: dict[str, int] = {}
        links: dict[str, str] = {}
        for rel, f in self.obj(m.get("files", {}), "files").items():
            self.entry(rel, "files")
            f = self.obj(f, f"files.{rel}")
            sha = f.get("sha256")
            if not isinstance(sha, str) or not SHA256.match(sha):
                raise self.bad(f"files.{rel}.sha256", f"{sha!r} is not a sha256")
            files[rel] = (sha, self.mode(f.get("mode"), f"files.{rel}.mode", FILE_MODES))
        for rel, d in self.obj(m.get("dirs", {}), "dirs").items():
            self.entry(rel, "dirs")
            dirs[rel] = self.mode(self.obj(d, f"dirs.{rel}").get("mode"), f"dirs.{rel}.mode",
                                  (DIR_MODE,))
        for rel, target in self.obj(m.get("links", {}), "links").items():
            self.entry(rel, "links")
            # relative and never up: a link can only point further into its own
            # directory, so no chain of links leaves the tree (release.listing's rule)
            if not safe_rel(target):
                raise self.bad(f"links.{rel}", f"the target {target!r} leaves the release")
            links[rel] = target
        named = [*files, *dirs, *links]
        if len(set(named)) != len(named):
            raise self.bad("files/dirs/links", "an entry is listed twice")
        for rel in named:  # every parent a listed directory: nothing under a link or file
            for parent in PurePosixPath(rel).parents:
                if str(parent) != "." and str(parent) not in dirs:
                    raise self.bad(rel, f"its parent {parent} is not a directory of the "
                                   "release")
        return files, dirs, links

    def entry(self, rel: Any, field: str) -> None:
        if not safe_rel(rel) or rel in (RELEASE_MANIFEST, RELEASE_SIGNATURE):
            raise self.bad(field, f"{rel!r} is not a path inside a release")
        if JINJA.search(rel):
            raise self.bad(field, f"{rel!r} is not what a release may name a file")


def listing(tree: Path) -> dict[str, dict[str, Any]]:
    """Every entry of the tree, as release.json lists them: files (sha256 and mode),
    directories (mode) and links (target); nothing else may be in a release."""
    files, dirs, links = {}, {}, {}
    for path in sorted(tree.rglob("*")):
        rel = str(path.relative_to(tree))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if target.startswith("/") or ".." in Path(target).parts:
                raise BuilderError(f"{path}: a link out of the release ({target})")
            links[rel] = target
        elif stat.S_ISDIR(st.st_mode):
            dirs[rel] = {"mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        elif stat.S_ISREG(st.st_mode):
            files[rel] = {"sha256": sha256_file(path), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
        else:
            raise BuilderError(f"{path}: not a file, directory or link; a release holds "
                               "nothing else")
    return {"files": files, "dirs": dirs, "links": links}


# --- a release on this machine, opened -------------------------------------------------------

@dataclass(frozen=True)
class Release:
    """A release directory whose signature verified and whose tree matches it."""

    dir: Path
    manifest: Manifest
    model_path: Path  # where its model is on this machine

    @property
    def release_id(self) -> str:
        return self.manifest.release_id

    @property
    def tree(self) -> Path:
        return self.dir / "tree"

    @property
    def tree_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.tree.rglob("*")
                   if f.is_file() and not f.is_symlink())


def open_release(d: Path, s: Signers) -> Release:
    """Release directory `d` (tree/, bundle.json), checked: signature by a key of `s`,
    the manifest typed, the tree exactly what it lists, the model there at its size."""
    what = f"release {display_path(d)}"
    try:
        data = (d / "tree" / RELEASE_MANIFEST).read_bytes()
        sig = (d / "tree" / RELEASE_SIGNATURE).read_bytes()
    except FileNotFoundError as e:
        raise Refused(f"{what}: refused: {display_path(e.filename)} is missing; make the "
                      "release again with `builder release`") from None
    check_signature(data, sig, s, what)
    m = Manifest.parse(data, what)
    got = listing(d / "tree")
    got["files"] = {k: v for k, v in got["files"].items()
                    if k not in (RELEASE_MANIFEST, RELEASE_SIGNATURE)}
    if got != m.listing():
        raise Refused(f"{what}: refused: its tree differs from its signed {RELEASE_MANIFEST}; "
                      "make the release again with `builder release`")
    return Release(d, m, _model_path(d, m, what))


def _model_path(d: Path, m: Manifest, what: str) -> Path:
    """bundle.json's model path (written here, never signed): a path with nothing Ansible
    would template, holding a model of the signed size and files. The device checks
    every byte against the signed sha256 before it uses it."""
    try:
        raw = json.loads((d / "bundle.json").read_text()).get("model_path")
    except (OSError, ValueError, AttributeError):
        raw = None
    if not isinstance(raw, str) or not raw.startswith("/") or JINJA.search(raw) \
            or any(c in raw for c in "\0\n\r"):
        raise Refused(f"{what}: refused: {display_path(d / 'bundle.json')} names no usable "
                      "model path; make the release again with `builder release`")
    p = Path(raw)
    if m.model.files is None:
        ok = p.is_file() and p.stat().st_size == m.model.bytes
    else:
        ok = p.is_dir() and sorted(str(f.relative_to(p)) for f in p.rglob("*")
                                   if f.is_file()) == sorted(m.model.files)
    if not ok:
        raise Refused(f"{what}: refused: its model {display_path(p)} is missing or not the "
                      f"signed one ({m.model.bytes} bytes, sha256 {m.model.sha256[:16]}...)")
    return p
