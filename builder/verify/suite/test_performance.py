"""Speed as a client sees it, through the public port, held against the profile's
verify.min_decode_tps and verify.max_ttft_ms; the measured values go into the JUnit
report as properties (decode_tps, ttft_ms). The measuring is builder/lab/measure.py's, which
`builder lab run` benchmarks with too."""

from __future__ import annotations

import statistics

from builder.lab.measure import LONG_PROMPT, SHORT_PROMPT, stream


def test_time_to_first_token_is_within_the_profile(api_url: str, api_key: str,
                                                   thresholds: dict, record_property) -> None:
    stream(api_url, api_key, 2, "Hello.")  # the first request after boot warms caches
    ttfts = [stream(api_url, api_key, 4, SHORT_PROMPT).ttft
             for _ in range(3)]
    ttft_ms = statistics.median(ttfts) * 1000
    record_property("ttft_ms", round(ttft_ms, 1))
    assert ttft_ms <= thresholds["max_ttft_ms"], (
        f"time to first token {ttft_ms:.0f} ms (median of 3) is over the profile's "
        f"verify.max_ttft_ms {thresholds['max_ttft_ms']}")


def test_decode_rate_meets_the_profile(api_url: str, api_key: str, thresholds: dict,
                                       record_property) -> None:
    s = stream(api_url, api_key, 48, LONG_PROMPT)
    assert s.decode_tps is not None, f"only {s.tokens} token(s) came back"
    record_property("decode_tps", round(s.decode_tps, 2))
    assert s.decode_tps >= thresholds["min_decode_tps"], (
        f"decode {s.decode_tps:.2f} tokens/s over {s.tokens} tokens is under the "
        f"profile's verify.min_decode_tps {thresholds['min_decode_tps']}")
