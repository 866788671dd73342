"""A Debian (or Debian-like) root filesystem made by mmdebstrap, for any architecture,
as a cached tarball. A foreign architecture runs its maintainer scripts under
qemu-user (binfmt.ensure sets that up). Extra apt repositories (a vendor's kernel and
firmware) are named with their signing keys. The versions that went in are recorded
from the rootfs's dpkg status. SOURCE_DATE_EPOCH, when set, is passed to mmdebstrap,
which clamps file times to it for reproducible output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cache import Cache, sha256_file
from ..progress import step
from ..run import run
from ..schema import Profile
from . import BASE_PACKAGES, Rootfs, compose, parse_dpkg_status, role_packages
from .binfmt import ensure, host_arch

ROOTFS_VERSION = 3
# What an appliance never reads (manuals, docs but their licences, translations): not
# unpacked, so not indexed by man-db either, which takes minutes under qemu-user.
DPKG_PATHS = ("exclude=/usr/share/man/*", "exclude=/usr/share/info/*",
              "exclude=/usr/share/doc/*", "include=/usr/share/doc/*/copyright",
              "exclude=/usr/share/locale/*", "include=/usr/share/locale/locale.alias")


@dataclass(frozen=True)
class AptSource:
    """One more apt repository (a vendor's kernel and firmware), signed by `keyring`.

    mmdebstrap runs apt from the host, so during the build the repository is named by
    its build-time URI with the keyring's host path; the rootfs then gets the entry a
    device uses: `device_uri`, signed by the same keyring copied into the rootfs."""

    name: str  # the entry's file name in the rootfs: /etc/apt/sources.list.d/<name>.list
    uri: str  # where the build reads it: http(s)://, copy:// or a local directory
    suite: str
    components: tuple[str, ...]
    keyring: Path  # OpenPGP keyring (binary or armored) that signs its Release
    device_uri: str  # what the device's apt uses

    @property
    def build_uri(self) -> str:
        """Local directories through copy:// (mmdebstrap's apt cannot read file:// from
        inside its chroot)."""
        if self.uri.startswith("file://"):
            return "copy://" + self.uri.removeprefix("file://")
        if self.uri.startswith("/"):
            return "copy://" + self.uri
        return self.uri

    @property
    def keyring_inside(self) -> str:
        """Where the rootfs keeps the key. apt de-armors a signed-by file only when its
        name ends in .asc, so the suffix follows the content, never the given name
        (which could also carry apt options: "k. trusted=yes")."""
        with self.keyring.open("rb") as f:
            armored = f.read(36).startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
        return f"/etc/apt/keyrings/{self.name}{'.asc' if armored else '.gpg'}"

    def line(self, uri: str, keyring: str) -> str:
        return f"deb [signed-by={keyring}] {uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class DebianSpec:
    suite: str
    arch: str  # Debian architecture
    mirror: str
    packages: list[str]
    qemu: str  # qemu-user name for this architecture (aarch64), used when foreign
    sources: tuple[AptSource, ...] = ()
    # shell run by mmdebstrap at the end with $1 = the rootfs (--customize-hook)
    hooks: tuple[str, ...] = ()
    variant: str = "minbase"
    what: str = field(default="device.arch", compare=False)  # the setting errors name

    def key_inputs(self) -> dict:
        d = asdict(self)
        d.pop("what")
        d["sources"] = [{**asdict(s), "keyring": sha256_file(s.keyring)}
                        for s in self.sources]
        return d


def build(spec: DebianSpec, cache: Cache) -> Rootfs:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    inputs = {"rootfs_version": ROOTFS_VERSION, **spec.key_inputs(),
              "source_date_epoch": epoch}

    def do_build(out: Path, log_file: Path) -> dict:
        if spec.arch != host_arch():
            ensure(spec.qemu, f"{spec.what}: {spec.arch}")
        status = out.parent / "dpkg-status"
        args = ["mmdebstrap", f"--variant={spec.variant}", f"--architectures={spec.arch}",
                f"--include={','.join(spec.packages)}", "--aptopt=Acquire::Retries \"3\"",
                *(f"--dpkgopt=path-{rule}" for rule in DPKG_PATHS)]
        for src in spec.sources:
            inside = src.keyring_inside
            listed = f"/etc/apt/sources.list.d/{src.name}.list"
            args += [  # the build-time entry out of sources.list, the device's in its place
                "--customize-hook=mkdir -p \"$1\"/etc/apt/keyrings",
                f"--customize-hook=copy-in {src.keyring} /etc/apt/keyrings/",
                f"--customize-hook=mv \"$1\"/etc/apt/keyrings/{src.keyring.name} "
                f"\"$1\"{inside}",
                f"--customize-hook=grep -vF -- '{src.build_uri}' \"$1\"/etc/apt/sources.list "
                f"> \"$1\"/etc/apt/sources.list.new; mv \"$1\"/etc/apt/sources.list.new "
                f"\"$1\"/etc/apt/sources.list",
                f"--customize-hook=echo '{src.line(src.device_uri, inside)}' > \"$1\"{listed}"]
        # apt checks signatures as its unprivileged _apt user, which cannot read a
        # keyring under a private directory (a home, a 0700 temp dir): it gets a copy
        keys = Path(tempfile.mkdtemp(prefix="edge-llm-apt-keys-"))
        keys.chmod(0o755)
        build_keys = []
        for i, src in enumerate(spec.sources):
            shutil.copyfile(src.keyring, keys / f"{i}-{src.keyring.name}")
            (keys / f"{i}-{src.keyring.name}").chmod(0o644)
            build_keys.append(keys / f"{i}-{src.keyring.name}")
        args += ["--customize-hook=rm -f \"$1\"/etc/hostname",
                 *(f"--customize-hook={h}" for h in spec.hooks),
                 f"--customize-hook=copy-out /var/lib/dpkg/status {status.parent}",
                 spec.suite, out / "rootfs.tar", spec.mirror,
                 *(s.line(s.build_uri, str(k)) for s, k in zip(spec.sources, build_keys,
                                                                 strict=True))]
        try:
            with step(f"mmdebstrap {spec.suite} {spec.arch} ({len(spec.packages)} packages)"
                      ) as line:
                run(args, what="mmdebstrap", log_file=log_file, on_line=line,
                    env={"SOURCE_DATE_EPOCH": epoch} if epoch else None)
        finally:
            shutil.rmtree(keys, ignore_errors=True)
        installed = parse_dpkg_status((status.parent / "status").read_text())
        (status.parent / "status").unlink()
        return {"packages": installed}

    return Rootfs(cache.get_or_build("rootfs", inputs, do_build,
                                     label=f"rootfs {spec.suite} {spec.arch}"))


def from_profile(p: Profile, arch: str, gnu_triplet: str, *, boot: tuple[str, ...] = (),
                 runtime: tuple[str, ...] = (), sources: tuple[AptSource, ...] = (),
                 hooks: tuple[str, ...] = ()) -> DebianSpec:
    """The rootfs of a profile: its suite and mirror, the base every appliance runs, the
    roles' packages, the target's boot packages, the engine's runtime libraries and the
    profile's os.packages."""
    return DebianSpec(
        suite=p.os.suite, arch=arch, mirror=p.os.mirror,
        packages=compose(BASE_PACKAGES, role_packages(), boot, runtime,
                         extra=list(p.os.packages)),
        qemu=gnu_triplet.split("-")[0], sources=sources, hooks=hooks)
