"""pyecho's server: a small OpenAI-compatible HTTP server in one file of Python's
standard library (it runs on the device's /usr/bin/python3, nothing installed).

It "loads" the release's GGUF model the way an engine does - reads its header and its
vocabulary, checks the file's sha256 against the one it was given - and answers chat and
text completions with tokens drawn from that vocabulary, deterministically from the
prompt: an engine with a real model file, real loading and a real wire format, and no
arithmetic. It keeps the contract every engine behind the gateway keeps
(contracts.Engine.probe): /health answers 503 while loading and 200 after; /metrics is
answered by the worker that runs the requests, so it stops answering when that worker
hangs; requests run one at a time, like one slot.

Settings come from the environment (the release's engine.env): PYECHO_MODEL,
PYECHO_MODEL_SHA256, PYECHO_PORT, PYECHO_ALIAS, PYECHO_WORDS_PER_SECOND.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

# --- GGUF: the header, as ggml's docs/gguf.md lays it out (version 2 and 3) -----------------
# (magic "GGUF", u32 version, u64 tensor count, u64 key-value count, then each key as a
# u64-length string, a u32 value type and the value)

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class NotGguf(ValueError):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise NotGguf("the file ends inside its header")
    return data


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if kind == STRING:
        (n,) = struct.unpack("<Q", _read(f, 8))
        return _read(f, n).decode("utf-8", "replace")
    if kind == ARRAY:
        item, n = struct.unpack("<IQ", _read(f, 12))
        return [_value(f, item) for _ in range(n)]
    raise NotGguf(f"unknown value type {kind}")


def read_header(path: str) -> dict[str, Any]:
    """Every key-value pair of a GGUF file's header."""
    with open(path, "rb") as f:
        if _read(f, 4) != b"GGUF":
            raise NotGguf("no GGUF magic")
        version, _, n_kv = struct.unpack("<IQQ", _read(f, 20))
        if version not in (2, 3):
            raise NotGguf(f"GGUF version {version}")
        out = {}
        for _ in range(n_kv):
            (n,) = struct.unpack("<Q", _read(f, 8))
            key = _read(f, n).decode("utf-8", "replace")
            (kind,) = struct.unpack("<I", _read(f, 4))
            out[key] = _value(f, kind)
        return out


# --- the model -------------------------------------------------------------------------------

class Model:
    def __init__(self, path: str, sha256: str):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if sha256 and digest.hexdigest() != sha256:
            raise SystemExit(f"pyecho: {path}: sha256 {digest.hexdigest()}, expected {sha256}")
        header = read_header(path)
        tokens = header.get("tokenizer.ggml.tokens") or []
        # words a reader can see: byte-level BPE marks a leading space with "\u0120"
        self.words = [t.replace("\u0120", " ") for t in tokens
                      if isinstance(t, str) and t.strip("\u0120").isalpha()] or ["echo"]
        self.arch = header.get("general.architecture", "?")

    def complete(self, prompt: str, max_tokens: int) -> list[str]:
        seed = hashlib.sha256(prompt.encode()).digest()
        out = []
        for i in range(max_tokens):
            h = hashlib.sha256(seed + i.to_bytes(4, "little")).digest()
            out.append(self.words[int.from_bytes(h[:4], "little") % len(self.words)])
        return out


# --- serving ---------------------------------------------------------------------------------

class Engine:
    def __init__(self) -> None:
        self.model: Model | None = None
        self.jobs: queue.Queue[tuple[Any, queue.Queue[Any]]] = queue.Queue()
        self.alias = os.environ.get("PYECHO_ALIAS", "model")
        pace = float(os.environ.get("PYECHO_WORDS_PER_SECOND") or 0)
        self.delay = 1 / pace if pace > 0 else 0.0
        self.served = 0

    def load(self) -> None:
        self.model = Model(os.environ["PYECHO_MODEL"], os.environ.get("PYECHO_MODEL_SHA256", ""))
        threading.Thread(target=self.work, daemon=True).start()

    def work(self) -> None:
        """The one worker: runs each job (a request's tokens, or a probe) in turn."""
        while True:
            job, reply = self.jobs.get()
            reply.put(job())

    def run(self, job: Any, timeout: float = 600) -> Any:
        reply: queue.Queue[Any] = queue.Queue()
        self.jobs.put((job, reply))
        return reply.get(timeout=timeout)


ENGINE = Engine()


def _prompt(body: dict[str, Any], chat: bool) -> str:
    if chat:
        return "\n".join(str(m.get("content", "")) for m in body.get("messages", [])
                         if isinstance(m, dict))
    return str(body.get("prompt", ""))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pyecho"

    def log_message(self, fmt: str, *args: Any) -> None:  # the journal keeps errors only
        pass

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "code": status}})

    def do_GET(self) -> None:
        if self.path == "/health":
            if ENGINE.model is None:
                return self._error(503, "Loading model")
            return self._send(200, {"status": "ok"})
        if ENGINE.model is None:
            return self._error(503, "Loading model")
        if self.path == "/metrics":  # answered by the worker: a hung worker answers nothing
            served = ENGINE.run(lambda: ENGINE.served, timeout=30)
            return self._send(200, f"pyecho_requests_total {served}\n".encode(),
                              "text/plain; version=0.0.4")
        if self.path == "/v1/models":
            return self._send(200, {"object": "list", "data": [
                {"id": ENGINE.alias, "object": "model", "owned_by": "pyecho"}]})
        self._error(404, f"no {self.path}")

    def do_POST(self) -> None:
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            return self._error(404, f"no {self.path}")
        if ENGINE.model is None:
            return self._error(503, "Loading model")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return self._error(400, f"the body is not a JSON object: {e}")
        max_tokens = body.get("max_tokens") or 16
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return self._error(400, "max_tokens must be a positive integer")
        prompt = _prompt(body, chat)
        model = ENGINE.model

        def job() -> list[str]:
            ENGINE.served += 1
            return model.complete(prompt, max_tokens)

        words = ENGINE.run(job)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                 "total_tokens": len(prompt.split()) + len(words)}
        rid, created = f"pyecho-{time.time_ns()}", int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                       "finish_reason": "length"} if chat else
                      {"index": 0, "text": text, "finish_reason": "length"})
            return self._send(200, {"id": rid, "object": kind, "created": created,
                                     "model": ENGINE.alias, "choices": [choice],
                                     "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(choice: dict[str, Any], **extra: Any) -> None:
            obj = {"id": rid, "object": kind + (".chunk" if chat else ""), "created": created,
                   "model": ENGINE.alias, "choices": [choice], **extra}
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        for i, w in enumerate(words):
            event({"index": 0, "delta": {"content": w}, "finish_reason": None} if chat
                  else {"index": 0, "text": w, "finish_reason": None})
            if i + 1 < len(words) and ENGINE.delay:
                time.sleep(ENGINE.delay)
        last = ({"index": 0, "delta": {}, "finish_reason": "length"} if chat
                else {"index": 0, "text": "", "finish_reason": "length"})
        include = (body.get("stream_options") or {}).get("include_usage")
        event(last, **({"usage": usage} if include else {}))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main() -> int:
    host = sys.argv[sys.argv.index("--host") + 1] if "--host" in sys.argv else "127.0.0.1"
    server = ThreadingHTTPServer((host, int(os.environ.get("PYECHO_PORT", "8081"))), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ENGINE.load()  # /health says 503 until this returns
    except (OSError, ValueError) as e:
        print(f"pyecho: cannot load {os.environ.get('PYECHO_MODEL')}: {e}", file=sys.stderr)
        return 1
    print(f"pyecho: {ENGINE.model.arch} model loaded, {len(ENGINE.model.words)} words; "
          f"serving {ENGINE.alias} on {host}:{server.server_port}", file=sys.stderr, flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
