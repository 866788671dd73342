"""One device measured the same way on every target, and held to its profile's bars.

`on_device` runs measure.benchmark through the device's public port (decode tok/s, TTFT
p50/p95, prefill tok/s) and reads over SSH what a client cannot see: the engine's peak
resident memory and, where the engine is built on the device (TensorRT-LLM), how long
that took. `builder bench` prints it; `builder lab run` records it per device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..device.layout import Layout
from ..errors import BuilderError
from ..schema import Profile
from ..units import format_size, parse_size
from . import measure


class BenchFailed(Exception):
    """The benchmark could not be taken; the message says why (one line)."""


def thresholds(p: Profile, manifest: dict[str, Any]) -> dict[str, Any]:
    """The profile's verify.* bars; max_rss auto is the plan's engine share."""
    v = p.verify
    plan = manifest["plan"]
    rss = (plan["total"] - plan["gateway_overhead"] if v.max_rss == "auto"
           else parse_size(v.max_rss))
    return {"min_decode_tps": v.min_decode_tps, "max_ttft_ms": v.max_ttft_ms,
            "max_rss_bytes": rss}


def on_device(manifest: dict[str, Any], api_url: str, ssh: Callable[[str, str], str], *,
              requests: int = 5, max_tokens: int = 32, prefill_words: int = 512
              ) -> dict[str, Any]:
    """The benchmark record of one device. `ssh(command, what)` runs a command on the
    device and returns what it printed (raising a BuilderError when it cannot)."""
    layout = Layout(**manifest["layout"])
    facts_cmd = measure.device_facts_command(layout.engine_unit, layout.engine_status,
                                             layout.api_keys)

    def facts(what: str) -> dict[str, Any] | None:
        # what the command printed holds the device's API key: an error never quotes it
        try:
            return measure.parse_facts(ssh(facts_cmd, what))
        except BuilderError:
            raise BenchFailed(f"{what} over ssh failed (is the device reachable, with "
                              "python3 and sudo for the admin user?)") from None

    before = facts("reading the device's API key")
    if before is None:
        raise BenchFailed("the device printed no facts (is python3 on it?)")
    try:
        b = measure.benchmark(api_url, before.get("api_key") or "", requests=requests,
                              max_tokens=max_tokens, prefill_words=prefill_words)
    except (OSError, ValueError) as e:
        raise BenchFailed(f"the benchmark's requests to {api_url} failed: "
                          f"{getattr(e, 'reason', e)}") from None
    after = facts("reading the engine's peak memory") or {}
    status = after.get("engine_status") or {}
    return {**vars(b), "peak_rss_bytes": after.get("peak_rss_bytes"),
            "engine_build_seconds": status.get("build_seconds"),
            "engine_built_on": manifest["engine"].get("built_on", "host")}


@dataclass
class Check:
    name: str  # decode_tps, ttft_ms_p50, peak_rss_bytes
    label: str
    measured: float | None
    bar: float
    op: str  # ">=" or "<="
    ok: bool


def compare(bench: dict[str, Any], bars: dict[str, Any]) -> list[Check]:
    """The benchmark held to the profile's verify.* bars: decode at least
    min_decode_tps, time to first token (median) at most max_ttft_ms, the engine's peak
    resident memory at most max_rss (auto: the plan's engine share). A value that could
    not be measured does not pass."""
    rules = (("decode_tps", "decode tok/s", "min_decode_tps", ">="),
             ("ttft_ms_p50", "TTFT p50 ms", "max_ttft_ms", "<="),
             ("peak_rss_bytes", "engine peak RSS", "max_rss_bytes", "<="))
    out = []
    for name, label, bar_key, op in rules:
        v, bar = bench.get(name), bars[bar_key]
        ok = v is not None and (v >= bar if op == ">=" else v <= bar)
        out.append(Check(name, label, v, bar, op, ok))
    return out


def describe(c: Check) -> str:
    def fmt(x: float | None) -> str:
        if x is None:
            return "not measured"
        return format_size(int(x)) if c.name == "peak_rss_bytes" else f"{x:g}"

    return f"{c.label} {fmt(c.measured)} (bar {c.op} {fmt(c.bar)})"


# The rows `builder bench` prints, in order: (record key, label, format).
ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("decode_tps", "decode tok/s (median, one stream)", lambda v: f"{v:g}"),
    ("ttft_ms_p50", "time to first token p50 (ms)", lambda v: f"{v:g}"),
    ("ttft_ms_p95", "time to first token p95 (ms)", lambda v: f"{v:g}"),
    ("prefill_tps", "prefill tok/s (uncached long prompt)", lambda v: f"{v:g}"),
    ("prefill_prompt_tokens", "  long prompt (tokens)", lambda v: f"{v:d}"),
    ("peak_rss_bytes", "engine peak RSS", lambda v: format_size(int(v))),
    ("engine_build_seconds", "engine built on the device in (s)", lambda v: f"{v:g}"),
)


# What `builder tune` measured, default against tuned (its overlay's measurements):
# (key, label, format).
TUNED_ROWS: tuple[tuple[str, str, str], ...] = (
    ("decode_tps", "decode tok/s at depth {depth}", "{:.2f}"),
    ("decode_tps_depth0", "decode tok/s at depth 0", "{:.2f}"),
    ("prefill_tps", "prefill tok/s ({prompt}-token prompt)", "{:.1f}"),
    ("ttft_ms", "time to first token, ms ({prompt}-token prompt)", "{:.0f}"),
)


def tuned_side_by_side(overlay: dict[str, Any]) -> tuple[str, list[tuple[str, str, str, str]]]:
    """The tuned overlay's default and tuned measurements as rows (label, default, tuned,
    tuned / default) and a title naming where and when they were taken; no rows when
    the overlay holds none."""
    dev = overlay.get("device") or {}
    meas = overlay.get("measurements") or {}
    test, default, tuned = (meas.get(k) or {} for k in ("test", "default", "tuned"))
    rows = []
    for key, label, fmt in TUNED_ROWS:
        a, b = default.get(key), tuned.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0:
            rows.append((label.format(depth=test.get("depth"),
                                      prompt=test.get("prompt_tokens")),
                         fmt.format(a), fmt.format(b), f"{b / a:.3f}"))
    partial = "" if overlay.get("complete") else ", partial"
    title = (f"builder tune on {dev.get('host')} ({dev.get('cpu')}, {dev.get('cores')} "
             f"CPUs, {dev.get('date')}{partial}): defaults vs tuned")
    return title, rows
