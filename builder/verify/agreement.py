"""Does the device answer like this machine? A few fixed prompts asked with greedy
decoding (temperature 0) through the OpenAI chat API, with each answer token's
log-probability and the top alternatives (`logprobs`, `top_logprobs`): once of the
release's model on this machine (the reference, Engine.host_server), once of the device
through its public port (`builder verify`, verify.min_agreement).

The first `tokens` tokens of each answer must agree. Two CPU backends (x86 and ARM
kernels, another thread count) round differently, so where the reference's first and
second choices are within TIE_NATS of each other, greedy decoding may pick either: a
device that picks a token the reference ranked that close is a tie, and the answers are
compared up to it (after it each continues its own text). A device token the reference
ranked further below (or not among its top) is a divergence: a wrong model file, chat
template or tokenizer, or a broken engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write one sentence about the sea.",
    "Name three prime numbers.",
)
TOP = 5  # alternatives per token (top_logprobs)
TIE_NATS = 0.1  # a device token within this of the reference's choice is a tie


def request(prompt: str, tokens: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "seed": 0, "logprobs": True, "top_logprobs": TOP}


@dataclass(frozen=True)
class Token:
    text: str
    logprob: float
    top: dict[str, float]  # the alternatives and their log-probabilities


def tokens_of(reply: Any, what: str) -> list[Token]:
    """The answer's tokens in an OpenAI chat completion (ValueError naming what is
    missing: the reply is untrusted)."""
    try:
        content = reply["choices"][0]["logprobs"]["content"]
        out = []
        for c in content:
            top = {str(t["token"]): float(t["logprob"]) for t in c.get("top_logprobs") or []}
            out.append(Token(str(c["token"]), float(c["logprob"]), top))
    except (KeyError, IndexError, TypeError, ValueError):
        raise ValueError(f"{what}: the reply has no per-token log-probabilities "
                         "(choices[0].logprobs.content)") from None
    return out


@dataclass(frozen=True)
class Outcome:
    agreed: int  # tokens that agree from the start
    diverged_at: int | None  # the first position where the device chose otherwise
    tie: bool  # that choice was within TIE_NATS of the reference's
    detail: str

    @property
    def passed(self) -> bool:
        return self.diverged_at is None or self.tie


def compare(reference: list[Token], device: list[Token], tokens: int) -> Outcome:
    """How the device's answer agrees with the reference over the first `tokens`."""
    n = min(tokens, len(reference))
    for i in range(n):
        ref = reference[i]
        if i >= len(device):
            return Outcome(i, i, False, f"the device's answer ends after {i} tokens; the "
                           f"reference goes on with {ref.text!r}")
        dev = device[i]
        if dev.text == ref.text:
            continue
        # how far below its own choice the reference ranked the device's
        alt = ref.top.get(dev.text)
        gap = math.inf if alt is None else ref.logprob - alt
        tie = gap <= TIE_NATS
        ranked = ("not among its top choices" if alt is None
                  else f"{gap:.3f} nats below it")
        return Outcome(i, i, tie, f"token {i}: the device chose {dev.text!r} where the "
                       f"reference chose {ref.text!r} ({ranked}"
                       f"{'; a tie within ' + str(TIE_NATS) if tie else ''}); agreed "
                       f"before it: {json.dumps(''.join(t.text for t in reference[:i]))}")
    if n < tokens and len(device) > n:  # the reference's answer ended there
        return Outcome(n, n, False, f"the reference's answer ends after {n} tokens; the "
                       f"device goes on with {device[n].text!r}")
    return Outcome(n, None, False, f"the first {n} tokens agree")


def ask(url: str, body: dict[str, Any], key: str | None = None, timeout: float = 600
        ) -> Any:
    """POST `body` to url/v1/chat/completions; its JSON reply (ValueError when it is
    not one)."""
    import urllib.error
    import urllib.request

    from ..lab.measure import TLS

    headers = {"Content-Type": "application/json",
               **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"{url}/v1/chat/completions",
                                 data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=TLS) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        raise ValueError(f"{url}: HTTP {e.code}: {e.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{url}: {e}") from None
