"""Which engine slot a request should run in, so a conversation's next turn finds its
prefix already computed there (pure functions; admission.py does the bookkeeping).

llama-server keeps each slot's KV cache after a request and, for the next request in
that slot, computes only the tokens after the longest common prefix (tools/server/
server-context.cpp, update_slots: `n_past = slot.prompt.tokens.get_common_prefix(...)`).
A chat client resends the whole history each turn, so a conversation that comes back
to its own slot pays only for its new message. Left to itself, llama-server picks the
idle slot whose cached prompt shares the largest fraction with the new one
(get_available_slot, --slot-prompt-similarity 0.1): with one system prompt shared by
every conversation, that is any slot holding any conversation, and a second
conversation overwrites the first one's history while the other slot stays empty.

So the gateway names the slot (llama.cpp's `id_slot`), from what it sent there last:
a request is summarised as a sequence of digests (the prompt-shaping fields, then one
per message; a text prompt in fixed blocks), and a free slot ranks by

  1. its last request and this one continue each other (one is a prefix of the other:
     the next turn, a regenerated answer, a parallel request of the same conversation);
  2. it has not run anything yet (a new conversation does not evict a live one);
  3. the longest common prefix (an edited message keeps what precedes it);
  4. least recently given out (llama-server's own fallback: LRU).

A conversation whose slot now holds another conversation lands on the least recently
used slot; llama-server then looks in its host prompt cache (--cache-ram) for the
conversation's saved state (get_available_slot: `update_cache`, prompt_load).

Keys do not share: a slot remembers which key (a digest of it) sent what it holds, and
only a request of that key can continue it or share its prefix (rank 1 and 3). Ranking
by another key's prefix would send a guess at that key's prompt to the slot holding it,
where the engine computes only the tokens after the common prefix: how fast the answer
comes says how much of the guess was right. The gateway also tells the engine not to
reuse a slot that another key (or nobody since the gateway started) had last
(`cache_prompt: false`, app.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

MAX_DIGESTS = 256  # a longer prefix than this identifies a conversation just as well
TEXT_BLOCK = 256  # characters of a text prompt per digest
TOKEN_BLOCK = 64  # token ids of a token prompt per digest
# fields that change the rendered prompt before the first message (the chat template
# writes tools into the system turn)
_CONTEXT = ("tools", "chat_template_kwargs", "add_generation_prompt",
            "continue_final_message")


def _digest(value: Any) -> bytes:
    raw = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                     default=str)
    return hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def chat_digests(body: dict) -> tuple[bytes, ...]:
    """A chat request: its prompt-shaping fields, then each message."""
    context = _digest(["chat", *(body.get(k) for k in _CONTEXT)])
    messages = body.get("messages")
    if not isinstance(messages, list):
        return (context,)
    return (context, *(_digest(m) for m in messages[:MAX_DIGESTS - 1]))


def completion_digests(body: dict) -> tuple[bytes, ...]:
    """A text completion: its prompt in whole blocks (a prompt that grows by appending
    keeps its earlier blocks), or whole when shorter than one block."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    size = TEXT_BLOCK if isinstance(prompt, str) else TOKEN_BLOCK
    if not isinstance(prompt, (str, list)) or len(prompt) < size:
        return (_digest(["completion", prompt]),)
    whole = len(prompt) - len(prompt) % size
    blocks = [_digest(prompt[i:i + size]) for i in range(0, whole, size)]
    return (_digest(["completion"]), *blocks[:MAX_DIGESTS - 1])


def common_prefix(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class SlotState:
    """What the gateway last gave a slot: the request's digests, when, and to whom."""

    digests: tuple[bytes, ...] = ()
    given: int = 0  # a counter, 0 = never given out since the gateway started
    owner: bytes = b""  # the key that sent it (key_id), b"" without API keys


def key_id(key: bytes) -> bytes:
    """Who sent a request, as slots remember it: a digest of its API key."""
    return hashlib.blake2b(key, digest_size=8, person=b"edge-llm-slot").digest()


# what the assignment was, for the metrics
CONTINUED, FRESH, OTHER, CLIENT = "continued", "fresh", "other", "client"


def rank(want: tuple[bytes, ...], slot: SlotState, owner: bytes = b"") -> tuple[int, int, int]:
    """Higher is better; see the module's docstring. What another key left in a slot
    is nothing to continue or share."""
    lcp = common_prefix(want, slot.digests) if slot.owner == owner else 0
    if slot.digests and want and lcp == min(len(want), len(slot.digests)):
        kind = 2
    elif not slot.given:
        kind = 1
    else:
        kind = 0
    return kind, lcp, -slot.given


def kind_of(rank_: tuple[int, int, int]) -> str:
    return {2: CONTINUED, 1: FRESH}.get(rank_[0], OTHER)
