"""The device's API key script (roles/gateway/files/make-api-key), run before every
gateway start: it makes a key when the keys file holds none, in a form the gateway's own
reader accepts, and leaves a file that holds a key alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder.gateway.config import load_keys

SCRIPT = Path(__file__).resolve().parent.parent / "roles/gateway/files/make-api-key"


def make(path: Path) -> str:
    r = subprocess.run(["sh", str(SCRIPT), str(path)], capture_output=True, text=True,
                       check=True)
    return r.stdout


def test_a_missing_file_gets_one_key_only_root_reads(tmp_path: Path) -> None:
    f = tmp_path / "etc/edge-llm/api-keys"
    assert "made a new API key" in make(f)
    [key] = load_keys(str(f))
    assert key.startswith("sk-edge-") and len(key) > 40
    assert f.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("content", [b"", b"\n\n", b"# rotated 2026-11-01\n",
                                     b"\xef\xbb\xbf# a BOM, then a comment\r\n"])
def test_a_file_without_a_key_gets_one_and_keeps_its_comments(tmp_path: Path,
                                                              content: bytes) -> None:
    f = tmp_path / "api-keys"
    f.write_bytes(content)
    make(f)
    assert len(load_keys(str(f))) == 1
    assert f.read_bytes().startswith(content)


def test_a_file_with_a_key_is_left_as_it_is(tmp_path: Path) -> None:
    f = tmp_path / "api-keys"
    f.write_text("# the kiosk's key\nsk-mine  # rotated by ops\n")
    before = f.read_bytes()
    assert make(f) == ""
    assert f.read_bytes() == before and load_keys(str(f)) == ["sk-mine"]
