"""The API keys file (/etc/edge-llm/api-keys), read one way by everyone who reads it: the
gateway (which serves with these keys), the release gate (edge-llm-release activate,
which tests a release with the first key) and the benchmark and verify suite (which
read it over SSH). Two readers that disagree on a file mean a device that serves its
clients but fails every release gate, so there is one reader.

Standard library only. This file is the device tools' module (edge_llm_device.api_keys);
the gateway's package holds it as a link (builder/gateway/api_keys.py), so each release
carries the same bytes as lib/edge_llm_gateway/api_keys.py.

The file is read as people write it: blank lines, # comments (whole-line or after a
key), spaces around a key, CRLF line ends and a UTF-8 byte order mark are all fine. A
key is one word: no spaces and no '#'.
"""

from __future__ import annotations

from pathlib import Path


class KeysError(ValueError):
    """The file cannot give a key; the message names the file (and the line)."""


def parse(data: bytes, path: str | Path) -> list[str]:
    """The keys in a keys file's bytes, in order; `path` names it in errors."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KeysError(f"{path}: the API keys file is not UTF-8 text") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        if len(key.split()) > 1:
            raise KeysError(f"{path}: line {n}: one key per line, without spaces")
        keys.append(key)
    if not keys:
        raise KeysError(f"{path}: no API key in the file (one per line)")
    return keys


def read(path: str | Path) -> list[str]:
    """The keys in the file at `path` (at least one), or KeysError saying why not."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise KeysError(f"{path}: cannot read the API keys: {e.strerror}") from None
    return parse(data, path)
