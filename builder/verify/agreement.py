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


MAX_TOP = 20  # alternatives a reply may give per token (OpenAI's top_logprobs bound)
MAX_TOKEN_BYTES = 256


@dataclass(frozen=True)
class Token:
    text: str
    logprob: float
    top: dict[str, float]  # the alternatives and their log-probabilities
    # the bytes of the token and of each alternative where the reply gives them
    # (llama-server's `bytes`: a character split over two tokens is whole only there,
    # its `token` text is cut to valid UTF-8); None: their texts' UTF-8
    raw: bytes | None = None
    top_raw: dict[bytes, float] | None = None

    @property
    def data(self) -> bytes:
        return self.text.encode() if self.raw is None else self.raw

    @property
    def alternatives(self) -> dict[bytes, float]:
        return ({k.encode(): v for k, v in self.top.items()} if self.top_raw is None
                else self.top_raw)


def _entry(c: Any, where: str) -> tuple[str, float, bytes | None]:
    """One token of a reply's logprobs, typed: its text, a finite log-probability, and
    its bytes when given (ValueError naming `where`)."""
    if not isinstance(c, dict):
        raise ValueError(f"{where}: not an object")
    text, lp, raw = c.get("token"), c.get("logprob"), c.get("bytes")
    if not isinstance(text, str) or len(text) > MAX_TOKEN_BYTES:
        raise ValueError(f"{where}.token: not a string of at most {MAX_TOKEN_BYTES}")
    if type(lp) not in (int, float) or not -1e6 < lp <= 1e-3:
        raise ValueError(f"{where}.logprob: not a finite log-probability")
    if raw is not None and not (isinstance(raw, list) and len(raw) <= MAX_TOKEN_BYTES
                                and all(type(b) is int and 0 <= b <= 255 for b in raw)):
        raise ValueError(f"{where}.bytes: not a list of byte values")
    return text, float(lp), None if raw is None else bytes(raw)


def tokens_of(reply: Any, what: str, most: int = 4096) -> list[Token]:
    """The answer's tokens in an OpenAI chat completion, at most `most` of them, each
    typed (ValueError naming what is missing or malformed: the reply is untrusted)."""
    try:
        content = reply["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, list):
        raise ValueError(f"{what}: the reply has no per-token log-probabilities "
                         "(choices[0].logprobs.content)")
    if len(content) > most:
        raise ValueError(f"{what}: {len(content)} tokens, more than the {most} asked for")
    out = []
    for i, c in enumerate(content):
        where = f"{what}: choices[0].logprobs.content[{i}]"
        text, lp, raw = _entry(c, where)
        top = c.get("top_logprobs") or []
        if not isinstance(top, list) or len(top) > MAX_TOP:
            raise ValueError(f"{where}.top_logprobs: not a list of at most {MAX_TOP}")
        alts = [_entry(t, f"{where}.top_logprobs[{j}]") for j, t in enumerate(top)]
        out.append(Token(text, lp, {t: a for t, a, _ in alts}, raw,
                         None if raw is None or any(r is None for _, _, r in alts)
                         else {r: a for _, a, r in alts if r is not None}))
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


def _ranked(logprob: float, alt: float | None, tie_nats: float) -> tuple[bool, str]:
    """Whether the device's choice, which the reference gave `alt` (None: not among its
    top), is a tie with the reference's own (`logprob`), and how it was ranked."""
    gap = math.inf if alt is None else logprob - alt
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
        tie, ranked = _ranked(ref.logprob, ref.top.get(dev.text), tie_nats)
        return Outcome(i, i, tie, f"token {i}: the device chose {dev.text!r} where the "
                       f"reference chose {ref.text!r} ({ranked}); agreed "
                       f"before it: {json.dumps(''.join(t.text for t in reference[:i]))}")
    if n < tokens and len(device) > n:  # the reference's answer ended there
        return Outcome(n, n, False, f"the reference's answer ends after {n} tokens; the "
                       f"device goes on with {device[n].text!r}")
    return Outcome(n, None, False, f"the first {n} tokens agree")


def _shown(b: bytes) -> str:
    return repr(b.decode(errors="replace"))


def compare_text(reference: list[Token], text: str, tokens: int,
                 tie_nats: float = TIE_NATS) -> Outcome:
    """`compare` for a device that answers text only (no log-probabilities): its text's
    bytes must go on with each of the reference's first `tokens` tokens' bytes in turn.
    Where it goes on with another of the reference's top alternatives instead (the
    longest that fits, unless the reference's own token fits and the text goes on with
    the reference's next one), that is the device's choice, ranked as `compare` ranks."""
    data, n, at = text.encode(), min(tokens, len(reference)), 0
    for i in range(n):
        ref, rest = reference[i], data[at:]
        own = ref.data
        fits = {b: lp for b, lp in ref.alternatives.items()
                if b and b != own and rest.startswith(b)}
        if rest.startswith(own) and (
                not any(len(b) > len(own) for b in fits) or i + 1 == len(reference)
                or rest[len(own):].startswith(reference[i + 1].data)):
            at += len(own)
            continue
        agreed = json.dumps(data[:at].decode(errors="replace"))
        if not rest:
            return Outcome(i, i, False, f"the device's answer ends after {i} tokens; the "
                           f"reference goes on with {ref.text!r}")
        if not fits:
            return Outcome(i, i, False, f"token {i}: the device went on with "
                           f"{_shown(rest[:24])} where the reference chose {ref.text!r} "
                           f"(not among its top choices); agreed before it: {agreed}")
        chose = max(fits, key=len)
        tie, ranked = _ranked(ref.logprob, fits[chose], tie_nats)
        return Outcome(i, i, tie, f"token {i}: the device chose {_shown(chose)} where the "
                       f"reference chose {ref.text!r} ({ranked}); agreed before it: "
                       f"{agreed}")
    if n < tokens and data[at:]:  # the reference's answer ended there
        return Outcome(n, n, False, f"the reference's answer ends after {n} tokens; the "
                       f"device goes on with {_shown(data[at:at + 24])}")
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
