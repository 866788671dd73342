"""Watch an OpenAI server-sent event stream as it passes through, without changing it:
when the first token came, how many tokens came, whether it ended with [DONE]."""

from __future__ import annotations

import json
import time


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
