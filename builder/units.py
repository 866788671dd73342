"""Byte sizes as people write them in profiles ("4GiB", "512M", 1048576)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# Binary multiples for both spellings: RAM and storage sizes in device data sheets are
# quoted in binary units even when written "GB", and profiles are about those.
_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([KMGTkmgt](i?[Bb])?|[Bb])?\s*$"


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as '8GiB', '512M', '1.5 GB'. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4GiB or 512MiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        raise ValueError("write sizes with a unit, e.g. 1.5GiB, not a bare fraction")
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    raise ValueError(f"expected a size such as 4GiB or 512MiB, got {value!r}")


def format_size(n: int) -> str:
    """Short exact form when possible ('4GiB'), else one decimal ('3.7GiB'), for display."""
    for unit, mult in (("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= mult:
            if n % mult == 0:
                return f"{n // mult}{unit}"
            return f"{n / mult:.1f}{unit}"
    return f"{n}B"


def canonical_size(n: int) -> int | str:
    """Form used when writing a profile back out: exact, round-trips through parse_size."""
    for unit, mult in (("TiB", 1024**4), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return n


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(canonical_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
            ],
            "description": "Bytes, or a size with a binary unit: 512MiB, 4GiB, 64G.",
        }
    ),
]


def _size_or_auto(value: object) -> int | str:
    if value == "auto":
        return "auto"
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"expected a size such as 4GiB, or 'auto', got {value!r}") from None


SizeOrAuto = Annotated[
    int | str,
    BeforeValidator(_size_or_auto),
    PlainSerializer(lambda v: v if v == "auto" else canonical_size(v)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
                {"const": "auto"},
            ],
            "description": "A size (512MiB, 4GiB) or 'auto'.",
        }
    ),
]
