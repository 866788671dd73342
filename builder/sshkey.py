"""The builder's own SSH keys, made on first use in the cache:

- the login key (`ssh/id_ed25519`): put into every image it builds (next to any keys the
  user adds), used by `builder vm`, `builder verify` and fleet runs to reach devices;
- the release signing key (`signing/release_ed25519`): signs release manifests
  (`ssh-keygen -Y sign`); images trust its public half in /etc/edge-llm/allowed_signers.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from .cache import Cache
from .device.layout import SIGNING_NAMESPACE
from .errors import BuilderError
from .run import run


def _keypair(key: Path, comment: str) -> tuple[Path, str]:
    # the private half 0600 in a 0700 directory, whatever a umask or an older builder
    # left: it logs into every device built, or signs what every device runs
    key.parent.chmod(0o700)
    # locked: two builds starting at once must not each make a key and keep one's
    # private half with the other's public half
    with (key.parent / f".{key.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key.exists():
            tmp = key.with_name(key.name + ".tmp")
            for f in (tmp, Path(f"{tmp}.pub")):
                f.unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", tmp],
                what="ssh-keygen")
            Path(f"{tmp}.pub").rename(Path(f"{key}.pub"))
            tmp.rename(key)
    key.chmod(0o600)
    return key, Path(f"{key}.pub").read_text().strip()


def builder_key(cache: Cache) -> tuple[Path, str]:
    """(private key path, public key line) of the login key."""
    return _keypair(cache.dir("ssh") / "id_ed25519", "edge-llm-builder")


def signing_key(cache: Cache, given: Path | None = None) -> tuple[Path, str]:
    """(private key path, public key line) that signs releases: `given` (a key of your
    own, e.g. kept offline) or the builder's, made on first use."""
    if given is None:
        return _keypair(cache.dir("signing") / "release_ed25519", "edge-llm-release")
    pub = Path(f"{given}.pub")
    if not given.is_file() or not pub.is_file():
        raise BuilderError(f"--signing-key {given}: needs the private key and {pub.name} "
                           "beside it (ssh-keygen -t ed25519 -f FILE)")
    return given, pub.read_text().strip()


def allowed_signers_line(public_key: str) -> str:
    """The allowed_signers entry that lets this key sign releases and nothing else."""
    kind, blob = public_key.split()[:2]
    return f'{SIGNING_NAMESPACE} namespaces="{SIGNING_NAMESPACE}" {kind} {blob}'


def sign(key: Path, file: Path) -> Path:
    """file.sig: an SSH signature over file in the release namespace."""
    sig = Path(f"{file}.sig")
    sig.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-Y", "sign", "-f", key, "-n", SIGNING_NAMESPACE, file],
        what="ssh-keygen -Y sign")
    return sig
