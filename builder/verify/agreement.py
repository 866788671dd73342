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


def request(prompt: str, tokens: int, logprobs: bool = True, model: str = "reference"
            ) -> dict[str, Any]:
    """The greedy request for `model` (the id the device serves: OpenAI's API requires
    it, and TensorRT-LLM's server refuses a request without it); `logprobs` False for a
    device whose engine does not return them (Engine.logprobs): its answer is then
    compared as text (compare_text)."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": tokens, "temperature": 0, "seed": 0,
            **({"logprobs": True, "top_logprobs": TOP} if logprobs else {})}


def text_of(reply: Any, what: str) -> str:
    """The answer's text in an OpenAI chat completion (ValueError: it is untrusted)."""
    try:
        text = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise ValueError(f"{what}: the reply has no answer text "
                         "(choices[0].message.content)")
    return text


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


def _ranked(ref: Token, chose: str, tie_nats: float) -> tuple[bool, str]:
    """Whether the device's choice `chose` is a tie with the reference's, and how the
    reference ranked it."""
    alt = ref.top.get(chose)
    gap = math.inf if alt is None else ref.logprob - alt
    tie = gap <= tie_nats
    return tie, (("not among its top choices" if alt is None
                  else f"{gap:.3f} nats below it") + (f"; a tie within {tie_nats}"
                                                      if tie else ""))


def compare(reference: list[Token], device: list[Token], tokens: int,
            tie_nats: float = TIE_NATS) -> Outcome:
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
        tie, ranked = _ranked(ref, dev.text, tie_nats)
        return Outcome(i, i, tie, f"token {i}: the device chose {dev.text!r} where the "
                       f"reference chose {ref.text!r} ({ranked}); agreed "
                       f"before it: {json.dumps(''.join(t.text for t in reference[:i]))}")
    if n < tokens and len(device) > n:  # the reference's answer ended there
        return Outcome(n, n, False, f"the reference's answer ends after {n} tokens; the "
                       f"device goes on with {device[n].text!r}")
    return Outcome(n, None, False, f"the first {n} tokens agree")


def compare_text(reference: list[Token], text: str, tokens: int,
                 tie_nats: float = TIE_NATS) -> Outcome:
    """`compare` for a device that answers text only (no log-probabilities): the text
    must go on with each of the reference's first `tokens` tokens in turn; where it goes
    on with another of the reference's top alternatives, that is the device's choice."""
    n, at = min(tokens, len(reference)), 0
    for i in range(n):
        ref, rest = reference[i], text[at:]
        if ref.text and rest.startswith(ref.text):
            at += len(ref.text)
            continue
        agreed = json.dumps(text[:at])
        if not rest:
            return Outcome(i, i, False, f"the device's answer ends after {i} tokens; the "
                           f"reference goes on with {ref.text!r}")
        # the longest alternative the text goes on with is the token it chose
        chose = max((a for a in ref.top if a and a != ref.text and rest.startswith(a)),
                    key=len, default=None)
        if chose is None:
            return Outcome(i, i, False, f"token {i}: the device went on with "
                           f"{rest[:24]!r} where the reference chose {ref.text!r} (not "
                           f"among its top choices); agreed before it: {agreed}")
        tie, ranked = _ranked(ref, chose, tie_nats)
        return Outcome(i, i, tie, f"token {i}: the device chose {chose!r} where the "
                       f"reference chose {ref.text!r} ({ranked}); agreed before it: "
                       f"{agreed}")
    if n < tokens and text[at:]:  # the reference's answer ended there
        return Outcome(n, n, False, f"the reference's answer ends after {n} tokens; the "
                       f"device goes on with {text[at:at + 24]!r}")
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
