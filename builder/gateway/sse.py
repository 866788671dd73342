"""An OpenAI server-sent event stream as it passes through: watched (when the first
token came, how many tokens came, whether it ended with [DONE]), and cleared of what the
engine says about its own state (`public`, `Scrub`)."""

from __future__ import annotations

import json
import time

# What llama-server adds to a reply about its own state (tools/server/server-task.cpp:
# `timings` with cache_n and prompt_n, usage.prompt_tokens_details.cached_tokens,
# return_progress's prompt_progress, and the native fields). How much of a prompt the
# engine found cached says whether an earlier prompt, another key's included, started
# the same way: an oracle that let one key read another's prompt token by token.
INTERNAL = ("timings", "prompt_progress", "tokens_cached", "tokens_evaluated", "id_slot",
            "generation_settings", "__verbose")
INTERNAL_USAGE = ("prompt_tokens_details", "input_tokens_details")
_MARKERS = tuple(f'"{k}"'.encode() for k in (*INTERNAL, *INTERNAL_USAGE))


def public(obj: object) -> bool:
    """Drop the engine's internals from a reply object, in place; True if any were."""
    if not isinstance(obj, dict):
        return False
    usage = obj.get("usage")
    found = [(obj, k) for k in INTERNAL if k in obj]
    if isinstance(usage, dict):
        found += [(usage, k) for k in INTERNAL_USAGE if k in usage]
    for where, key in found:
        del where[key]
    return bool(found)


class Scrub:
    """Events of a stream without the engine's internals. Lines pass as soon as they
    are whole; an event line holding none of them passes byte for byte."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        return b"".join(self._line(line) + b"\n" for line in lines)

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return self._line(rest) if rest else b""

    @staticmethod
    def _line(line: bytes) -> bytes:
        if not line.startswith(b"data:") or not any(m in line for m in _MARKERS):
            return line
        try:
            obj = json.loads(line[5:])
        except ValueError:
            return line
        return b"data: " + json.dumps(obj).encode() if public(obj) else line


class StreamWatch:
    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.started = time.monotonic()
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.tokens = 0
        self.done = False
        self.error = False
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if obj.get("error"):
            self.error = True
            return
        for choice in obj.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content") if self.chat \
                else choice.get("text")
            if piece:
                now = time.monotonic()
                if self.first_token is None:
                    self.first_token = now
                self.last_token = now
                self.tokens += 1  # llama-server (and vLLM/TRT-LLM servers) send a token per event

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def decode_tps(self) -> float | None:
        if self.tokens < 2 or self.last_token == self.first_token:
            return None
        return (self.tokens - 1) / (self.last_token - self.first_token)


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
