"""Speed as a client sees it, through the public port, held against the profile's
verify.min_decode_tps and verify.max_ttft_ms; the measured values go into the JUnit
report as properties (decode_tps, ttft_ms)."""

from __future__ import annotations

import json
import ssl
import statistics
import time
import urllib.request
from dataclasses import dataclass

_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


@dataclass
class Stream:
    ttft: float  # seconds from sending the request to the first generated text
    tokens: int  # completion tokens the engine reports (usage), else text chunks
    decode_tps: float | None  # tokens after the first, per second after the first


def stream(api_url: str, key: str, max_tokens: int, prompt: str) -> Stream:
    """One streamed chat completion, timed at this end. The token count is the engine's
    own (stream_options.include_usage); the rate excludes the first token (prefill)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(api_url + "/v1/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {key}"})
    start = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    with urllib.request.urlopen(req, timeout=600, context=_TLS) as r:
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            assert "error" not in event, event
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    assert first is not None and last is not None, "the stream carried no text"
    tokens = (usage or {}).get("completion_tokens") or chunks
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Stream(ttft=first - start, tokens=tokens, decode_tps=rate)


def test_time_to_first_token_is_within_the_profile(api_url: str, api_key: str,
                                                   thresholds: dict, record_property) -> None:
    stream(api_url, api_key, 2, "Hello.")  # the first request after boot warms caches
    ttfts = [stream(api_url, api_key, 4, "What is the capital of France?").ttft
             for _ in range(3)]
    ttft_ms = statistics.median(ttfts) * 1000
    record_property("ttft_ms", round(ttft_ms, 1))
    assert ttft_ms <= thresholds["max_ttft_ms"], (
        f"time to first token {ttft_ms:.0f} ms (median of 3) is over the profile's "
        f"verify.max_ttft_ms {thresholds['max_ttft_ms']}")


def test_decode_rate_meets_the_profile(api_url: str, api_key: str, thresholds: dict,
                                       record_property) -> None:
    s = stream(api_url, api_key, 48, "Count from one to fifty, in words, one per line.")
    assert s.decode_tps is not None, f"only {s.tokens} token(s) came back"
    record_property("decode_tps", round(s.decode_tps, 2))
    assert s.decode_tps >= thresholds["min_decode_tps"], (
        f"decode {s.decode_tps:.2f} tokens/s over {s.tokens} tokens is under the "
        f"profile's verify.min_decode_tps {thresholds['min_decode_tps']}")
