"""JSON request bodies parsed within a memory and stack budget (pure).

json.loads of a 1 MiB body of tiny objects (`[{},{},...]`) builds ~340,000 dicts: about
25 MB, twenty times the body. A body nested 100,000 deep overflows the C parser's stack
(RecursionError). So before parsing, one pass over the bytes (string contents blanked
out by a regex, then counted by C-level bytes methods) measures how many values the
body holds and how deep it nests, and a body over either limit is refused unparsed.
Within the limits, parsing costs a few MB at most. NaN, Infinity and numbers too large
for a double are refused too: llama.cpp's JSON parser rejects them, and they are not JSON.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate

# A JSON string, escapes included (unrolled so a long string costs one linear scan).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_OPEN_CLOSE = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class JsonError:
    """Why a body was refused; `code` is the OpenAI-style error code."""

    message: str
    code: str


def measure(raw: bytes) -> tuple[int, int]:
    """(values, depth) of a JSON text, without parsing it. Values counts containers
    plus separators (an upper bound on scalars); brackets inside strings do not count.
    On malformed text the numbers are approximate, which is fine: it fails to parse."""
    bare = _STRING.sub(b'""', raw)
    containers = bare.count(b"[") + bare.count(b"{")
    values = containers + bare.count(b",") + bare.count(b":") + 1
    if containers == 0:
        return values, 0
    steps = array("b", bare.translate(_OPEN_CLOSE, _NOT_BRACKET))
    return values, max(accumulate(steps))


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def parse(raw: bytes, *, max_depth: int, max_values: int) -> object | JsonError:
    """The parsed body, or why not. Never raises."""
    values, depth = measure(raw)
    if depth > max_depth:
        return JsonError(f"the request body nests JSON {depth} levels deep; this appliance "
                         f"accepts at most {max_depth}", "json_too_deep")
    if values > max_values:
        return JsonError(f"the request body holds about {values} JSON values; this "
                         f"appliance accepts at most {max_values}", "json_too_large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return JsonError(f"the request body is not UTF-8 (byte {e.start})", "invalid_json")
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_finite)
    except RecursionError:  # cannot happen within max_depth; belt and braces
        return JsonError("the request body nests JSON too deeply", "json_too_deep")
    except ValueError as e:  # JSONDecodeError, int digit limit, _finite, _constant
        return JsonError(f"the request body is not valid JSON: {e}", "invalid_json")
