"""The builder's own SSH key: put into every image it builds (next to any keys the user
adds), used by `builder vm`, `builder verify` and fleet runs to reach devices."""

from __future__ import annotations

from pathlib import Path

from .cache import Cache
from .run import run


def builder_key(cache: Cache) -> tuple[Path, str]:
    """(private key path, public key line), generated on first use."""
    key = cache.dir("ssh") / "id_ed25519"
    if not key.exists():
        tmp = key.with_name("id_ed25519.tmp")
        for f in (tmp, tmp.with_suffix(".tmp.pub")):
            f.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-llm-builder",
             "-f", tmp], what="ssh-keygen")
        tmp.with_name("id_ed25519.tmp.pub").rename(key.with_name("id_ed25519.pub"))
        tmp.rename(key)
    key.chmod(0o600)
    return key, key.with_name("id_ed25519.pub").read_text().strip()
