"""A disk image's published set (builder/image.publish): the raw image, its block map and
a compressed copy that decompresses to the same bytes, in either format a target asks
for, placed raw-image-last so its presence means the set is whole."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.cache import sha256_file
from builder.image import publish


@pytest.mark.parametrize(("compress", "unpack"), [("xz", ["xz", "-dc"]),
                                                  ("zst", ["zstd", "-dc"])])
def test_the_set_is_the_image_its_bmap_and_a_copy_that_unpacks_to_it(
        tmp_path: Path, compress: str, unpack: list[str]) -> None:
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    raw = tmp / "disk.img"
    with raw.open("wb") as f:  # sparse, with data at both ends: what bmap maps
        f.write(b"boot" * 1024)
        f.seek(32 << 20)
        f.write(b"root" * 1024)
    digest = sha256_file(raw)
    r = publish(tmp, out, "disk.img", root_partuuid="abcd0123-02", kernel_version="6.6",
                log_file=None, compress=compress)
    assert r.raw == out / "disk.img" and r.zst == out / f"disk.img.{compress}"
    assert r.sha256 == digest == sha256_file(r.raw)
    unpacked = subprocess.run([*unpack, str(r.zst)], capture_output=True, check=True).stdout
    assert len(unpacked) == r.size and unpacked.startswith(b"boot")
    assert "<bmap" in r.bmap.read_text() and not list(tmp.iterdir())
