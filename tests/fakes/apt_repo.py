"""Signed local apt repositories for the fakes: .deb files, Packages/Release indices, gpg.

Shared by tests/fakes/rpi (Raspberry Pi's archive) and tests/fakes/jetson (NVIDIA's Jetson
repository). Builds .deb files from an in-memory description with dpkg-deb (no debhelper,
no fakeroot), indexes them with apt-ftparchive and signs the Release with a throw-away key
made in a temporary GNUPGHOME.

Host tools: dpkg-deb (dpkg), apt-ftparchive (apt-utils), gpg + gpgconf (gnupg), xz.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    """subprocess.run with check and an error that shows what the tool said."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


# --------------------------------------------------------------------------- .deb


@dataclass
class DebSpec:
    name: str
    version: str
    arch: str
    control: dict[str, str]  # extra fields, in order, after Package/Version/Architecture
    files: dict[str, bytes] = field(default_factory=dict)  # "usr/lib/x" -> content
    modes: dict[str, int] = field(default_factory=dict)  # path -> mode (default 0644)
    dirs: list[str] = field(default_factory=list)  # extra (empty) directories
    scripts: dict[str, str] = field(default_factory=dict)  # preinst/postinst/prerm/postrm
    conffiles: list[str] = field(default_factory=list)  # absolute paths
    links: dict[str, str] = field(default_factory=dict)  # "usr/lib/x.so.1" -> "x.so.1.2"

    @property
    def filename(self) -> str:
        upstream = self.version.split(":", 1)[-1]  # the epoch is not in file names
        return f"{self.name}_{upstream}_{self.arch}.deb"

    @property
    def source(self) -> str:
        return self.control.get("Source", self.name).split(" ", 1)[0]

    def pool_dir(self, component: str = "main") -> str:
        """pool/<component>/<prefix>/<source>, prefix as Debian's archive tools make it."""
        src = self.source
        prefix = src[:4] if src.startswith("lib") else src[0]
        return f"pool/{component}/{prefix}/{src}"


def build_deb(spec: DebSpec, out_dir: Path, work: Path, source_date_epoch: str) -> Path:
    """dpkg-deb --build of `spec` into out_dir; mtimes clamped to source_date_epoch."""
    stage = work / f"{spec.name}_{spec.arch}"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "DEBIAN").mkdir(parents=True)
    os.chmod(stage, 0o755)
    size = 0
    sums = []
    for rel, data in sorted(spec.files.items()):
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, spec.modes.get(rel, 0o644))
        size += len(data)
        if not rel.startswith("etc/"):
            sums.append(f"{hashlib.md5(data).hexdigest()}  {rel}\n")
    for rel in spec.dirs:
        (stage / rel).mkdir(parents=True, exist_ok=True)
    for rel, target in sorted(spec.links.items()):
        path = stage / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
    for d in [stage, *(p for p in stage.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.chmod(d, 0o755)

    fields = [
        ("Package", spec.name),
        ("Version", spec.version),
        ("Architecture", spec.arch),
        ("Installed-Size", str(max(1, (size + 1023) // 1024))),
        *spec.control.items(),
    ]
    control = "".join(f"{k}: {v}\n" for k, v in fields)
    (stage / "DEBIAN" / "control").write_text(control)
    if sums:
        (stage / "DEBIAN" / "md5sums").write_text("".join(sums))
    if spec.conffiles:
        (stage / "DEBIAN" / "conffiles").write_text("".join(f"{c}\n" for c in spec.conffiles))
    for name, text in spec.scripts.items():
        p = stage / "DEBIAN" / name
        p.write_text(text)
        os.chmod(p, 0o755)
    for p in (stage / "DEBIAN").iterdir():
        if p.name not in spec.scripts:
            os.chmod(p, 0o644)

    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / spec.filename
    env = {**os.environ, "SOURCE_DATE_EPOCH": source_date_epoch}
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "-z6", "--build", str(stage), str(deb)],
        env=env)
    shutil.rmtree(stage)
    return deb


# --------------------------------------------------------------------------- gpg


@contextmanager
def gnupg_home(prefix: str = "fake-apt-gpg-") -> Iterator[Path]:
    # A short path: gpg-agent's socket lives in the home dir and sun_path is 108 bytes.
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(home, 0o700)
    try:
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def gpg(home: Path, *args: str) -> str:
    return run(["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty",
                "--pinentry-mode", "loopback", "--passphrase", "", *args]).stdout


def generate_key(home: Path, uid: str) -> str:
    """A fresh ed25519 signing key in `home`; returns its fingerprint."""
    gpg(home, "--quick-generate-key", uid, "ed25519", "sign", "never")
    for line in gpg(home, "--list-secret-keys", "--with-colons").splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise RuntimeError("gpg generated no key")


def export_public(home: Path, fpr: str) -> tuple[bytes, str]:
    """(binary keyring, ASCII-armored key) of the public half."""
    binary = run(["gpg", "--homedir", str(home), "--batch", "--export", fpr],
                 capture_output=True, text=False).stdout
    return binary, gpg(home, "--armor", "--export", fpr)


def sign_release(home: Path, dist: Path, fpr: str) -> None:
    """InRelease (clearsigned) and Release.gpg (detached) for dist/Release."""
    common = ["--local-user", fpr, "--digest-algo", "SHA512"]
    gpg(home, *common, "--clearsign", "--output", str(dist / "InRelease"), str(dist / "Release"))
    gpg(home, *common, "--armor", "--detach-sign", "--output", str(dist / "Release.gpg"),
        str(dist / "Release"))


# --------------------------------------------------------------------------- indices


def write_indices(root: Path, suite: str, components: Sequence[str], arch: str,
                  release_fields: Mapping[str, str], *, xz: bool = True,
                  component_release: bool = True) -> None:
    """dists/<suite>/<comp>/binary-<arch>/Packages(.gz, .xz) from pool/<comp>, and the
    suite's Release (unsigned: sign_release signs it)."""
    dist = root / "dists" / suite
    for old in ("Release", "InRelease", "Release.gpg"):
        (dist / old).unlink(missing_ok=True)
    for comp in components:
        bindir = dist / comp / f"binary-{arch}"
        bindir.mkdir(parents=True, exist_ok=True)
        packages = run(["apt-ftparchive", "packages", f"pool/{comp}"], cwd=root).stdout
        (bindir / "Packages").write_text(packages)
        (bindir / "Packages.gz").write_bytes(gzip.compress(packages.encode(), 9, mtime=0))
        if xz:
            run(["xz", "-6", "-k", "-f", str(bindir / "Packages")])
        if component_release:
            (bindir / "Release").write_text(
                f"Archive: {release_fields['Suite']}\nOrigin: {release_fields['Origin']}\n"
                f"Label: {release_fields['Label']}\nComponent: {comp}\n"
                f"Architecture: {arch}\n"
            )
    opts: list[str] = []
    for key, value in release_fields.items():
        opts += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    release = run(["apt-ftparchive", *opts, "release", "."], cwd=dist).stdout
    (dist / "Release").write_text(release)
