"""A stand-in for llama-server's HTTP surface (llama.cpp tools/server, the pinned
llama-cpp-python 0.3.36 sdist: server-context.cpp's id_slot, /slots and /metrics, and
its OpenAI-compatible replies), for what the real engine will not do on demand: hang,
refuse, stream megabytes, take a while to notice a client that left."""

from __future__ import annotations

import json
import select
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeEngine:
    """llama-server's HTTP surface, misbehaving on demand.

    post_status: the status of every POST (200: a reply, or an SSE stream of `events`
    events of `event_bytes` each, `delay` seconds apart); probe_status: GET /metrics and
    /health; hang_posts / hang_all: accept and never answer (POSTs / everything);
    logprob_tokens: a whole reply carries that many tokens with 20 top logprobs each
    (llama-server's largest reply per token). Replies carry llama-server's `timings` and
    cached token counts (server-task.cpp, to_json_oaicompat_chat), as it sends them.

    Like llama-server, it runs a request in the slot its id_slot names, tells which slots
    are busy on GET /slots (`slots_status` other than 200: no slot monitor), and stops
    a request `cancel_lag` seconds after it notices that the client closed the
    connection. `ids` lists the id_slot of every POST; `collisions` counts the requests
    that arrived for a slot still busy with another."""

    def __init__(self) -> None:
        self.post_status = 200
        self.probe_status = 200
        self.slots_status = 200
        self.events, self.event_bytes, self.delay = 3, 60, 0.0
        self.hang_posts = self.hang_all = False
        self.logprob_tokens = 0
        self.cancel_lag = 0.0
        self.gets: Counter[str] = Counter()
        self.streams_cut = 0  # streams the gateway closed before the end
        self.ids: list[int | None] = []
        self.busy: Counter[int] = Counter()
        self.collisions = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _hang(self) -> None:
                """Until the client leaves (as llama-server notices) or the fake stops."""
                while not fake._stop.wait(0.1):
                    if self._client_left():
                        fake._stop.wait(fake.cancel_lag)
                        return

            def _client_left(self) -> bool:
                readable, _, _ = select.select([self.connection], [], [], 0)
                try:
                    return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            def _reply(self, status: int, body: bytes, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                fake.gets[self.path] += 1
                if fake.hang_all:
                    return self._hang()
                if self.path == "/slots":
                    with fake._lock:
                        slots = [{"id": i, "is_processing": fake.busy[i] > 0}
                                 for i in range(8)]
                    return self._reply(fake.slots_status, json.dumps(slots).encode())
                self._reply(fake.probe_status, b"llamacpp:requests_processing 0\n",
                            "text/plain")

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                slot = req.get("id_slot")
                held = slot is not None and slot >= 0
                with fake._lock:
                    fake.ids.append(slot)
                    if held:
                        fake.collisions += fake.busy[slot] > 0
                        fake.busy[slot] += 1

                def release() -> None:
                    # llama-server lets the slot go in the same turn of its main loop
                    # that queues the final reply, before it takes the next task: the
                    # slot is idle by the time anyone can read that reply
                    nonlocal held
                    with fake._lock:
                        if held:
                            fake.busy[slot] -= 1
                            held = False
                try:
                    self._post(req, release)
                finally:
                    release()

            def _post(self, req: dict, release) -> None:
                events, size, delay = fake.events, fake.event_bytes, fake.delay
                if fake.hang_posts or fake.hang_all:
                    return self._hang()
                if fake.post_status != 200:
                    release()
                    err = {"code": fake.post_status, "message": "the engine says no",
                           "type": "invalid_request_error" if fake.post_status < 500
                           else "server_error"}
                    return self._reply(fake.post_status, json.dumps({"error": err}).encode())
                if not req.get("stream"):
                    release()
                    choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}}
                    if fake.logprob_tokens:
                        top = [{"id": 1000 + i, "token": f"tok{i}", "bytes": [116, 111, 107],
                                "logprob": -1.5 - i} for i in range(20)]
                        choice["logprobs"] = {"content": [
                            {**top[0], "top_logprobs": top}] * fake.logprob_tokens}
                    return self._reply(200, json.dumps({
                        "choices": [choice],
                        "usage": {"completion_tokens": max(1, fake.logprob_tokens),
                                  "prompt_tokens": 9, "total_tokens": 10,
                                  "prompt_tokens_details": {"cached_tokens": 8}},
                        "timings": {"cache_n": 8, "prompt_n": 1,
                                    "predicted_per_second": 10.0}}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                pad = "x" * size
                try:
                    for _ in range(events):
                        self.wfile.write(b"data: " + json.dumps({"choices": [
                            {"delta": {"content": "a"}, "pad": pad}]}).encode() + b"\n\n")
                        self.wfile.flush()
                        if delay and fake._stop.wait(delay):
                            return
                    release()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except OSError:
                    fake.streams_cut += 1
                    fake._stop.wait(fake.cancel_lag)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
