"""Speed as a client sees it, through a device's public port: one streamed completion
timed at this end (`stream`), and a short benchmark of a few (`benchmark`: decode tok/s,
time to first token p50/p95, prefill tok/s). The verify suite's speed checks,
`builder bench` and `builder lab run` measure with these. Standard library only: the
verify suite imports it."""

from __future__ import annotations

import json
import math
import shlex
import ssl
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..device import api_keys

TLS = ssl.create_default_context()
TLS.check_hostname = False  # a device's certificate is its own (often self-signed)
TLS.verify_mode = ssl.CERT_NONE

SHORT_PROMPT = "What is the capital of France?"
LONG_PROMPT = "Count from one to fifty, in words, one per line."


@dataclass
class Stream:
    ttft: float  # seconds from sending the request to the first generated text
    tokens: int  # completion tokens the engine reports (usage), else text chunks
    decode_tps: float | None  # tokens after the first, per second after the first
    prompt_tokens: int | None = None  # as the engine counted them (usage)


def stream(api_url: str, key: str, max_tokens: int, prompt: str,
           timeout: float = 600) -> Stream:
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
    with urllib.request.urlopen(req, timeout=timeout, context=TLS) as r:
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise ValueError(f"the stream carried an error: {event['error']}")
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    chunks += 1
    if first is None or last is None:
        raise ValueError("the stream carried no text")
    tokens = (usage or {}).get("completion_tokens") or chunks
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else None
    return Stream(ttft=first - start, tokens=tokens, decode_tps=rate,
                  prompt_tokens=(usage or {}).get("prompt_tokens"))


_WORDS = ("the river runs past an old mill where children play and farmers bring grain "
          "in autumn while the town sleeps under a grey sky").split()


def long_prompt(words: int, salt: str) -> str:
    """About `words` tokens of ordinary prose that no prompt cache holds: it opens with
    `salt`, so no earlier request shares a prefix with it."""
    body = " ".join(_WORDS[i % len(_WORDS)] for i in range(words))
    return f"[{salt}] {body}\nIn one word, where do the children play?"


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by the nearest-rank method: a value that was measured."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Benchmark:
    requests: int  # timed requests (after one to warm up)
    max_tokens: int
    decode_tps: float | None  # median over the requests that decoded more than one token
    ttft_ms_p50: float
    ttft_ms_p95: float
    tokens: int  # completion tokens over the timed requests
    prefill_tps: float | None = None  # prompt tokens per second of time to first token
    prefill_prompt_tokens: int | None = None  # the long prompts' size, engine-counted


def benchmark(api_url: str, key: str, *, requests: int = 5, max_tokens: int = 32,
              prefill_words: int = 512, prefill_requests: int = 3,
              timeout: float = 600) -> Benchmark:
    """A short benchmark through the public port: one request to warm up, then
    `requests` streams of up to `max_tokens` tokens, one at a time, then
    `prefill_requests` long prompts (about `prefill_words` tokens each, none cached) whose
    time to first token gives the prefill rate."""
    stream(api_url, key, 2, "Hello.", timeout)  # the first request after boot warms caches
    runs = [stream(api_url, key, max_tokens, LONG_PROMPT if i % 2 else SHORT_PROMPT, timeout)
            for i in range(requests)]
    rates = [r.decode_tps for r in runs if r.decode_tps is not None]
    ttfts = [r.ttft * 1000 for r in runs]
    long = _long_prompts(api_url, key, prefill_words, prefill_requests, timeout)
    fills = [r.prompt_tokens / r.ttft for r in long if r.prompt_tokens]
    return Benchmark(requests=requests, max_tokens=max_tokens,
                     decode_tps=round(statistics.median(rates), 2) if rates else None,
                     ttft_ms_p50=round(percentile(ttfts, 50), 1),
                     ttft_ms_p95=round(percentile(ttfts, 95), 1),
                     tokens=sum(r.tokens for r in runs),
                     prefill_tps=round(statistics.median(fills), 1) if fills else None,
                     prefill_prompt_tokens=max((r.prompt_tokens or 0 for r in long),
                                               default=0) or None)


def _long_prompts(api_url: str, key: str, words: int, n: int, timeout: float
                  ) -> list[Stream]:
    """`n` uncached long prompts; a device whose context cannot take `words` (it answers
    400) gets prompts half as long, down to 32 words."""
    salt = f"{time.time_ns():x}"
    while True:
        try:
            return [stream(api_url, key, 2, long_prompt(words, f"{salt}-{words}-{i}"),
                           timeout) for i in range(n)]
        except urllib.error.HTTPError as e:
            if e.code != 400 or words < 64:
                raise
            words //= 2


# What `benchmark` cannot see from outside, read on the device (as root) by one command:
# the engine's peak resident memory (VmHWM of the unit's main process), the status an
# engine built on the device leaves (edge-llm-trtllm: build_seconds), and the API key,
# read by the gateway's own reader: device/api_keys.py's source runs first in the
# command, so the key is the one the gateway serves whatever the device's tools are.
DEVICE_FACTS = Path(api_keys.__file__).read_text() + """
import json, subprocess, sys
unit, status, keys = sys.argv[1:4]
out = {}
try:
    pid = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit],
                         capture_output=True, text=True).stdout.strip()
    for line in open(f"/proc/{int(pid)}/status"):
        if line.startswith("VmHWM:"):
            out["peak_rss_bytes"] = int(line.split()[1]) * 1024
except (OSError, ValueError):
    pass
try:
    out["engine_status"] = json.load(open(status))
except (OSError, ValueError):
    out["engine_status"] = None
try:
    out["api_key"] = read(keys)[0]
except KeysError:
    out["api_key"] = None
print(json.dumps(out))
"""


def device_facts_command(engine_unit: str, engine_status: str, api_keys: str) -> str:
    """The remote command (for ssh) that prints the device's facts as JSON."""
    return (f"sudo python3 -c {shlex.quote(DEVICE_FACTS)} {shlex.quote(engine_unit)} "
            f"{shlex.quote(engine_status)} {shlex.quote(api_keys)}")


def parse_facts(output: str) -> dict | None:
    """The JSON line DEVICE_FACTS prints (ssh's own notes may come before it), or None."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None
