"""The public port under attack: the gateway as a process, in front of a stand-in engine
(for what a real one will not do on demand: hang, refuse, stream megabytes) or the real
llama-server with SmolLM2 (hostile and hypothesis-generated requests).

Each test attacks one promise of docs/security.md ("The public port"): half-open and
idle connections beyond the open-file limit, slow heads and bodies, queued bodies built
to blow up the parser, a reader that stops reading, an engine that accepts but never
answers, requests that used to get a 500, key files as people write them. Nothing
asserts a duration: timeouts only keep a broken gateway from hanging the suite."""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.gateway_process import GatewayProcess
from builder.testing.llama_server import LlamaServer, free_port

MODEL_ID = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hi."}]
MiB = 1 << 20
MEMORY_MAX = 128 * MiB  # the unit's MemoryMax


# --- a stand-in engine ---------------------------------------------------------------

class FakeEngine:
    """llama-server's HTTP surface, misbehaving on demand.

    post_status: the status of every POST (200: a reply, or an SSE stream of `events`
    events of `event_bytes` each, `delay` seconds apart); probe_status: GET /metrics and
    /health; hang_posts / hang_all: accept and never answer (POSTs / everything).

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
                    return self._reply(200, json.dumps({
                        "choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": "hi"}}],
                        "usage": {"completion_tokens": 1}}).encode())
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


@pytest.fixture
def fake():
    f = FakeEngine()
    yield f
    f.close()


def _gateway(tmp_path: Path, engine_url: str, **settings) -> GatewayProcess:
    return GatewayProcess(tmp_path / "gw", engine_url, MODEL_ID, **settings)


# --- HTTP helpers --------------------------------------------------------------------

def _request(gw: GatewayProcess, method: str, path: str, body: bytes | dict | None = None,
             *, key: str | bytes | None = None, timeout: float = 60):
    """(status, headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.putrequest(method, path)
    auth = key if key is not None else gw.key
    if auth:
        conn.putheader("Authorization", b"Bearer " + (auth if isinstance(auth, bytes)
                                                       else auth.encode()))
    if data is not None:
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    try:
        return r.status, r.headers, json.loads(payload)
    except ValueError:
        return r.status, r.headers, payload


def _chat(gw: GatewayProcess, body: dict | bytes, **kw):
    return _request(gw, "POST", "/v1/chat/completions", body, **kw)


def _open_stream(gw: GatewayProcess, body: dict, rcvbuf: int | None = None) -> socket.socket:
    """A streaming request on a raw socket; returns once the response has begun."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(60)
    s.connect(("127.0.0.1", gw.port))
    data = json.dumps({**body, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/json\r\nAuthorization: Bearer " + gw.key.encode() +
              b"\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    assert s.recv(12).startswith(b"HTTP/1.1 200")
    return s


def _closed_by_peer(s: socket.socket, timeout: float = 30) -> bool:
    """True once the gateway closes the connection (reads and discards until then)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _in_threads(fn, args: list) -> list:
    results: list = [None] * len(args)

    def run(i: int) -> None:
        try:
            results[i] = fn(*args[i])
        except Exception as e:  # a hang or reset is a result too
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(args))]
    for t in threads:
        t.start()
    return [threads, results]


def _assert_openai_error(status: int, body, code: str | None = None,
                         param: str | None = "-") -> None:
    assert isinstance(body, dict) and set(body.get("error", {})) == {
        "message", "type", "param", "code"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    if param != "-":
        assert body["error"]["param"] == param, body


def _no_tracebacks(gw: GatewayProcess) -> None:
    log = gw.log_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]


# --- connections: deadlines and the cap ------------------------------------------------

def test_idle_connections_beyond_the_fd_limit_do_not_starve_health(fake, tmp_path) -> None:
    """Hundreds of connections that never send a byte, more than the process may open:
    /health keeps answering, and the log does not flood."""
    with _gateway(tmp_path, fake.url, nofile=256) as gw:
        idle = []
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", gw.port))
            idle.append(s)
        try:
            for _ in range(10):
                assert gw.get("/health", key="", timeout=15)[0] == 200
        finally:
            for s in idle:
                s.close()
        assert gw.metric("connections_closed_total", 'reason="evicted"') > 0
        assert len(gw.log_text().splitlines()) < 50
        _no_tracebacks(gw)


def test_a_request_head_that_never_ends_is_cut_off(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url, header_timeout=1) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert _closed_by_peer(s)
        assert gw.metric("connections_closed_total", 'reason="header_timeout"') == 1


def test_an_idle_keepalive_connection_is_closed(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url, keepalive_timeout=1) as gw:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request("GET", "/health")
        assert conn.getresponse().read() == b'{"status": "ok"}'
        assert _closed_by_peer(conn.sock)


def test_a_body_that_never_ends_gets_408(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url, body_timeout=1) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.settimeout(30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + gw.key.encode() + b"\r\nContent-Length: 100\r\n\r\n{\"messa")
        reply = b""
        while not reply.endswith(b"}}") and (chunk := s.recv(65536)):  # the whole reply
            reply += chunk
        s.close()
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
        assert b'"request_timeout"' in reply


def test_pipelined_requests_from_a_client_that_never_reads_stay_bounded(fake,
                                                                       tmp_path) -> None:
    """aiohttp 3.8 (the device's) queues every pipelined request it parses; the guard
    stops reading at a few. Run with EDGE_LLM_GATEWAY_PYTHON set to an aiohttp 3.8
    interpreter to attack that version."""
    with _gateway(tmp_path, fake.url) as gw:
        flood = socket.create_connection(("127.0.0.1", gw.port))
        burst = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 10_000

        def send() -> None:
            try:
                for _ in range(20):
                    flood.sendall(burst)  # 7 MB of requests; no reply is read
            except OSError:
                pass

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(3)  # it blocks once the gateway stops reading
        peak = 0
        for _ in range(8):  # while the gateway works through what it read
            peak = max(peak, gw.memory("VmHWM"))
            time.sleep(0.25)
        flood.shutdown(socket.SHUT_RDWR)  # also ends the sender's blocked sendall()
        flood.close()
        assert peak < MEMORY_MAX, f"peak RSS {peak / MiB:.0f} MiB"
        polite = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        polite.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        replies = b""
        while replies.count(b'{"status": "ok"}') < 50:
            chunk = polite.recv(65536)
            assert chunk, replies[-200:]
            replies += chunk
        polite.close()


# --- memory: admission before the body, bounded parsing --------------------------------

def _tiny_objects_body(size: int) -> bytes:
    head, tail = b'{"messages": [{"role": "user", "content": "hi"}], "user": [', b"]}"
    n = (size - len(head) - len(tail)) // 3
    return head + b",".join([b"{}"] * n) + tail


def test_queued_hostile_bodies_stay_under_memory_max(fake, tmp_path) -> None:
    """One slot busy, then max_queue requests with 1 MiB bodies of tiny objects (each
    parses to ~25 MB), then max_queue requests with 1 MiB strings: the gateway's peak
    RSS stays under the unit's MemoryMax."""
    fake.events, fake.delay = 600, 0.1  # a reply that holds the slot for a minute
    with _gateway(tmp_path, fake.url, slots=1, max_queue=16) as gw:
        holder = _open_stream(gw, {"messages": HI})
        hostile = _tiny_objects_body(MiB - 100)
        threads, results = _in_threads(lambda: _chat(gw, hostile, timeout=30), [()] * 16)
        deadline = time.monotonic() + 20
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        peak = gw.memory("VmHWM")
        assert peak < MEMORY_MAX, f"peak RSS {peak / MiB:.0f} MiB"
        for got in results:
            assert not isinstance(got, Exception), got
            assert got[0] == 400 and got[2]["error"]["code"] == "json_too_large"
        big = {"messages": [{"role": "user", "content": "x" * (MiB - 200)}], "max_tokens": 1}
        threads, results = _in_threads(lambda: _chat(gw, big, timeout=60), [()] * 16)
        _wait(lambda: gw.metric("queue_depth") == 16, "16 large bodies to queue")
        peak = gw.memory("VmHWM")
        assert peak < MEMORY_MAX, f"peak RSS {peak / MiB:.0f} MiB"
        holder.close()  # the slot frees; the queued ones run
        for t in threads:
            t.join(60)
        assert [r[0] if isinstance(r, tuple) else r for r in results] == [200] * 16


def test_a_compressed_body_is_refused_without_unpacking_it(fake, tmp_path) -> None:
    """1 MB of gzip that inflates to 1 GB: aiohttp 3.8 inflates a chunk at a time, whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, in a gzip frame below
    block = packer.compress(bytes(MiB)) + packer.flush(zlib.Z_FULL_FLUSH)  # repeatable
    crc = 0
    for _ in range(1000):
        crc = zlib.crc32(bytes(MiB), crc)
    bomb = (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + block * 1000 + packer.flush()
            + struct.pack("<II", crc, (1000 * MiB) & 0xFFFFFFFF))
    with _gateway(tmp_path, fake.url) as gw:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + gw.key.encode() + b"\r\nContent-Encoding: gzip\r\nContent-Length: "
                  + str(len(bomb)).encode() + b"\r\n\r\n" + bomb)
        head = s.recv(65536)
        s.close()
        peak = gw.memory("VmHWM")
        assert peak < MEMORY_MAX, f"peak RSS {peak / MiB:.0f} MiB"
        assert head.startswith(b"HTTP/1.1 415"), head[:200]


# --- a client that stops reading -----------------------------------------------------

def test_a_reader_that_stops_reading_is_dropped_and_frees_the_slot(fake, tmp_path) -> None:
    fake.events, fake.event_bytes = 100_000, 16_000  # more than every buffer on the way
    with _gateway(tmp_path, fake.url, slots=1, max_queue=4, write_timeout=1) as gw:
        stalled = _open_stream(gw, {"messages": HI}, rcvbuf=4096)  # then reads no more
        try:
            fake.events = 3
            status, _, body = _chat(gw, {"messages": HI}, timeout=30)  # waits for the slot
            assert status == 200, body
        finally:
            stalled.close()
        # the upstream was closed: the engine's write fails, its generation stops
        _wait(lambda: fake.streams_cut == 1, "the engine to see the stream cut")
        assert gw.metric("connections_closed_total", 'reason="write_timeout"') == 1


# --- a hung engine ---------------------------------------------------------------------

def test_an_engine_that_accepts_but_never_answers_gets_503_fast(fake, tmp_path) -> None:
    fake.hang_posts = True  # requests hang; probes still answer, for now
    with _gateway(tmp_path, fake.url, slots=1, max_queue=2, engine_probe_interval=0.2,
                  engine_probe_timeout=0.5, engine_hung_after=2) as gw:
        threads, results = _in_threads(lambda: _chat(gw, {"messages": HI}, timeout=30),
                                       [()] * 3)
        _wait(lambda: gw.metric("queue_depth") == 2, "two requests to queue behind one")
        fake.hang_all = True  # the main loop is stuck: /metrics stops answering too
        for t in threads:
            t.join(40)
        for got in results:  # the running one and the two queued ones
            assert not isinstance(got, Exception), got
            status, headers, body = got
            assert status == 503 and int(headers["Retry-After"]) >= 1
            _assert_openai_error(status, body, "engine_unavailable")
        status, headers, body = _chat(gw, {"messages": HI}, timeout=10)  # no waiting now
        assert status == 503 and headers["Retry-After"]
        assert gw.get("/health", key="")[0] == 503
        fake.hang_all = fake.hang_posts = False  # it comes back (restarted)
        _wait(lambda: gw.get("/health", key="")[0] == 200, "the engine to be seen again")
        assert _chat(gw, {"messages": HI})[0] == 200


def test_health_answers_from_the_probe_and_never_hammers_the_engine(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url, engine_probe_interval=2) as gw:
        before = sum(fake.gets.values())
        for _ in range(100):
            assert gw.get("/health", key="")[0] == 200
        assert sum(fake.gets.values()) - before < 20  # the probe's pace, not the clients'
        assert fake.gets["/metrics"] >= 1  # the probe that goes through the task queue


# --- what the engine refuses ----------------------------------------------------------

@pytest.mark.parametrize(("engine_status", "probe_status", "status", "code"), [
    (400, 200, 400, "rejected_by_engine"),
    (500, 200, 400, "rejected_by_engine"),  # a healthy engine's 500 is about the request
    (500, 503, 503, "engine_unavailable"),
    (503, 503, 503, "engine_unavailable"),
])
def test_engine_refusals_become_openai_errors(fake, tmp_path, engine_status: int,
                                             probe_status: int, status: int,
                                             code: str) -> None:
    with _gateway(tmp_path, fake.url) as gw:
        fake.post_status, fake.probe_status = engine_status, probe_status
        got, headers, body = _chat(gw, {"messages": HI})
        assert got == status
        _assert_openai_error(got, body, code)
        if status == 503:
            assert headers["Retry-After"]
        _no_tracebacks(gw)


# --- clients that leave, keys, /metrics --------------------------------------------------

def _send_stream_request(gw: GatewayProcess, stream: bool = True) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=60)
    data = json.dumps({"messages": HI, "stream": stream}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
              + gw.key.encode() + b"\r\nContent-Length: " + str(len(data)).encode()
              + b"\r\n\r\n" + data)
    return s


def test_clients_leaving_at_any_point_get_no_500_and_free_their_slot(fake, tmp_path) -> None:
    """Mid-stream, while queued, right after asking, while the engine works on a
    non-streamed reply: the slot frees, nothing is counted or logged as a 500."""
    fake.events, fake.delay = 100, 0.05
    with _gateway(tmp_path, fake.url, slots=1, max_queue=4) as gw:
        free = lambda: gw.metric("in_flight") == 0 and gw.metric("queue_depth") == 0  # noqa: E731
        s = _open_stream(gw, {"messages": HI})
        s.recv(100)
        s.close()  # mid-stream
        _wait(free, "the slot to free")
        holder = _open_stream(gw, {"messages": HI})
        queued = _send_stream_request(gw)
        _wait(lambda: gw.metric("queue_depth") == 1, "a request to queue")
        queued.close()  # while queued
        _wait(lambda: gw.metric("queue_depth") == 0, "the queue place to free")
        holder.close()
        _wait(free, "the slot to free")
        _send_stream_request(gw).close()  # right after asking
        fake.hang_posts = True
        waiting = _send_stream_request(gw, stream=False)
        _wait(lambda: gw.metric("in_flight") == 1, "the request to reach the engine")
        waiting.close()  # while the engine works on it
        _wait(free, "the slot to free")
        fake.hang_posts = False
        assert _chat(gw, {"messages": HI})[0] == 200
        text = gw.get("/metrics")[1].decode()
        assert 'status="500"' not in text
        assert gw.metric("client_disconnects_total") >= 4
        _no_tracebacks(gw)


# --- engine slots: one request per slot, even when clients leave ------------------------

def _conversation(gw: GatewayProcess, name: str, turns: int, leave_at: int | None,
                  extra: dict) -> list[int]:
    """A client's conversation, turn after turn; it leaves mid-stream at `leave_at`."""
    messages = [{"role": "system", "content": "Shared instructions. " * 20}]
    statuses = []
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{name} asks {turn}"})
        if turn == leave_at:
            s = _open_stream(gw, {"messages": messages, **extra})
            s.recv(100)
            s.close()
            statuses.append(499)
        else:
            status, _, _ = _chat(gw, {"messages": messages, **extra})
            statuses.append(status)
        messages.append({"role": "assistant", "content": "a"})
    return statuses


def test_requests_never_share_an_engine_slot_even_when_clients_leave(fake, tmp_path) -> None:
    """Conversations pinned to slots by the gateway, clients naming a slot themselves,
    and clients leaving mid-stream while the engine takes a while to notice: the engine
    never gets a request for a slot that is still busy."""
    fake.events, fake.delay, fake.cancel_lag = 10, 0.02, 0.5
    with _gateway(tmp_path, fake.url, slots=2, max_queue=16) as gw:
        clients = [(f"c{i}", 4, i % 3 if i % 2 else None,
                    {"id_slot": i % 2} if i % 4 == 3 else {}) for i in range(8)]
        threads, results = _in_threads(lambda *a: _conversation(gw, *a), clients)
        for t in threads:
            t.join(120)
        for got, (_, _, leave_at, _) in zip(results, clients, strict=True):
            assert not isinstance(got, Exception), got
            assert got == [499 if turn == leave_at else 200 for turn in range(4)]
        assert fake.collisions == 0
        assert set(fake.ids) == {0, 1}
        assert fake.gets["/slots"] > 0  # the clients that left: asked before reusing
        _wait(lambda: gw.metric("in_flight") == 0, "every slot to free")
        assert gw.metric("slot_assignments_total", 'kind="client"') >= 1
        _no_tracebacks(gw)


def test_without_a_slot_monitor_the_engine_chooses_its_slots(fake, tmp_path) -> None:
    fake.events, fake.delay, fake.slots_status = 20, 0.02, 501
    with _gateway(tmp_path, fake.url, slots=2) as gw:
        assert _chat(gw, {"messages": HI})[0] == 200
        assert fake.ids[-1] in (0, 1)
        s = _open_stream(gw, {"messages": HI})
        s.recv(100)
        s.close()  # the gateway cannot learn when the engine lets the slot go ...
        _wait(lambda: "slot affinity off" in gw.log_text(), "the gateway to ask /slots")
        assert _chat(gw, {"messages": HI})[0] == 200
        assert fake.ids[-1] is None  # ... so it stops naming slots
        _no_tracebacks(gw)


def test_an_engine_without_id_slot_gets_none(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url, slots=2,
                  engine_fields=["ignore_eos", "min_p", "top_k"]) as gw:
        for _ in range(3):
            assert _chat(gw, {"messages": HI})[0] == 200
        assert fake.ids == [None] * 3
        status, _, body = _chat(gw, {"messages": HI, "id_slot": 0})
        assert status == 400 and body["error"]["code"] == "unknown_parameter"


def test_metrics_need_the_key(fake, tmp_path) -> None:
    with _gateway(tmp_path, fake.url) as gw:
        status, _, body = _request(gw, "GET", "/metrics", key="")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert gw.get("/metrics")[0] == 200
    with _gateway(tmp_path, fake.url, metrics_auth=False) as gw:
        assert gw.get("/metrics", key="")[0] == 200


@pytest.mark.parametrize("text", [
    "# the device key\n{key}\n",
    "{key}\r\n",
    "\n\n   {key}   \n\n",
    "\ufeff{key}\n",
    "{key}  # laptop\n",
], ids=["comment", "crlf", "blank-lines-spaces", "bom", "inline-comment"])
def test_keys_files_as_people_write_them_work(fake, tmp_path, text: str) -> None:
    gw = _gateway(tmp_path, fake.url)
    gw.keys_text = text.replace("{key}", gw.key)
    with gw:
        assert gw.get("/v1/models")[0] == 200
        assert gw.get("/v1/models", key="sk-edge-other")[0] == 401


@pytest.mark.parametrize("data", [b"", b"# no key yet\n\n", b"\xff\xfe\x00garbage"],
                         ids=["empty", "only-comments", "not-utf8"])
def test_a_keys_file_without_a_key_is_one_line_and_exit_2(tmp_path, data: bytes) -> None:
    keys, cfg = tmp_path / "keys", tmp_path / "gateway.json"
    keys.write_bytes(data)
    cfg.write_text(json.dumps({"model_id": "m", "keys_file": str(keys)}))
    r = subprocess.run([sys.executable, "-m", "builder.gateway", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and str(keys) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# --- hostile requests against the real engine ---------------------------------------------

@pytest.fixture(scope="module")
def engine(x86_engine, smollm2_gguf: Path, tmp_path_factory):
    port = free_port()
    with LlamaServer(x86_engine.tool("llama-server"), [
            "--model", str(smollm2_gguf), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "2048", "--parallel", "1", "--threads", "2", "--metrics",
            "--alias", MODEL_ID], tmp_path_factory.mktemp("engine") / "log",
            port=port) as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(engine: LlamaServer, tmp_path_factory):
    # max_tokens=4: whatever the fuzzer gets through generates at most 4 tokens
    with GatewayProcess(tmp_path_factory.mktemp("gw"), engine.url, MODEL_ID, slots=1,
                        max_queue=4, max_tokens=4) as g:
        yield g


def _deep(n: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": "hi"}], "user": ' + b"[" * n + \
        b"]" * n + b"}"


HOSTILE = [
    ("model-list", {"messages": HI, "model": [MODEL_ID]}, 400, "model"),
    ("model-object", {"messages": HI, "model": {"id": MODEL_ID}}, 400, "model"),
    ("deep-nesting", _deep(100_000), 400, None),
    ("stream-string", {"messages": HI, "stream": "false"}, 400, "stream"),
    ("unknown-field", {"messages": HI, "temprature": 0}, 400, "temprature"),
    ("internal-field", {"messages": HI, "chat_format": 99}, 400, "chat_format"),
    ("bad-role", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ("tool-no-id", {"messages": [{"role": "tool", "content": "x"}]}, 400,
     "messages[0].tool_call_id"),
    ("content-number", {"messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content"),
    ("image", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}]}]}, 400,
     "messages[0].content[0].type"),
    ("temperature", {"messages": HI, "temperature": 9}, 400, "temperature"),
    ("top-k-string", {"messages": HI, "top_k": "40"}, 400, "top_k"),
    ("five-stops", {"messages": HI, "stop": list("abcde")}, 400, "stop"),
    ("response-format", {"messages": HI, "response_format": {"type": "yaml"}}, 400,
     "response_format.type"),
    ("tools-shape", {"messages": HI, "tools": [{"type": "function"}]}, 400,
     "tools[0].function"),
    ("nan", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400,
     None),
    ("huge-number", b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1e999}', 400,
     None),
    ("huge-int", {"messages": HI, "metadata": {"n": str(2**70)}, "seed": 2**70}, 400,
     "seed"),
    ("lone-surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400,
     "messages[0].content"),
    ("not-utf8", b'{"messages": [{"role": "user", "content": "\xff"}]}', 400, None),
    ("echo", None, 400, "echo"),
    ("prompt-list", None, 400, "prompt"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("body", "status", "param"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_hostile_requests_get_a_4xx_naming_the_field(gw: GatewayProcess, engine, body,
                                                      status: int, param) -> None:
    if body is None:  # the text completion cases
        body = ({"prompt": "a", "echo": True} if param == "echo" else
                {"prompt": ["Once upon", "a time", "there was"]})
        got, _, err = _request(gw, "POST", "/v1/completions", body)
    else:
        got, _, err = _chat(gw, body)
    assert got == status, err
    _assert_openai_error(got, err, param=param)
    _no_tracebacks(gw)


@pytest.mark.slow
def test_a_non_utf8_authorization_header_is_401_not_500(gw: GatewayProcess) -> None:
    status, _, body = _chat(gw, {"messages": HI}, key=b"\xff\xfe\x80sk-edge")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    _no_tracebacks(gw)


@pytest.mark.slow
def test_engine_rejections_pass_on_as_4xx(gw: GatewayProcess) -> None:
    """The engine's own 400 (a prompt longer than its context) goes on as a 4xx."""
    status, _, body = _request(gw, "POST", "/v1/completions",
                               {"prompt": "word " * 5000, "max_tokens": 1})
    assert 400 <= status < 500, body
    _assert_openai_error(status, body)


@pytest.mark.slow
def test_a_client_naming_a_busy_slot_cannot_disturb_the_generation_there(
        x86_engine, smollm2_gguf: Path, tmp_path: Path) -> None:
    """llama-server handed a request for a busy slot (id_slot) defers it, but first saves
    the busy slot to its prompt cache and loads the best cached prompt for the new
    request into it, under the generation running there (get_available_slot): that
    generation goes on from another conversation's KV cache. The gateway gives a slot
    to one request at a time, so the second request waits and the first one's answer
    is what it would have been alone."""
    port = free_port()
    story = {"prompt": "Write a long story about a dragon who learns to bake bread.",
             "max_tokens": 60, "ignore_eos": True, "temperature": 0, "id_slot": 0,
             "cache_prompt": False}
    other = "river stone cloud house paper music garden window light " * 20
    with LlamaServer(x86_engine.tool("llama-server"), [
            "--model", str(smollm2_gguf), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "8192", "--parallel", "2", "--threads", "2", "--metrics",
            "--alias", MODEL_ID], tmp_path / "engine.log", port=port) as srv, \
            _gateway(tmp_path, srv.url, slots=2) as gw:
        def complete(body: dict) -> str:
            status, _, reply = _request(gw, "POST", "/v1/completions", body, timeout=600)
            assert status == 200, reply
            return reply["choices"][0]["text"]

        complete({"prompt": other, "max_tokens": 2, "id_slot": 0})  # cached, later
        alone = complete(story)
        complete({"prompt": other, "max_tokens": 2, "id_slot": 0})
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=600)
        conn.request("POST", "/v1/completions", json.dumps({**story, "stream": True}),
                     {"Authorization": f"Bearer {gw.key}", "Content-Type":
                      "application/json"})
        r = conn.getresponse()
        pieces, intruder = [], None
        for line in r:
            if line.startswith(b"data: {"):
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
            if len(pieces) == 5 and intruder is None:  # the story is being written
                intruder = _in_threads(complete, [(
                    {"prompt": other + "and more", "max_tokens": 2, "id_slot": 0},)])
        conn.close()
        intruder[0][0].join(600)
        assert intruder[1][0] is not None and not isinstance(intruder[1][0], Exception)
        assert "".join(pieces) == alone
        _no_tracebacks(gw)


# --- hypothesis against the running gateway -----------------------------------------------
# --- hypothesis against the running gateway -----------------------------------------------

_SCALAR = (st.none() | st.booleans() | st.integers(-2, 5) | st.floats(-3, 3) | st.text(max_size=4)
           | st.sampled_from(["auto", "none", "text", "json_object", "function", "user"]))
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_FIELDS = ["model", "stream", "temperature", "top_p", "stop", "seed", "n", "max_tokens",
           "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
           "presence_penalty", "frequency_penalty", "logit_bias", "stream_options",
           "top_k", "min_p", "repeat_penalty", "grammar", "json_schema", "samplers",
           "n_probs", "mirostat", "id_slot", "ignore_eos", "cache_prompt", "n_keep",
           "dry_multiplier", "chat_template_kwargs", "reasoning_format", "user", "bogus"]
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"])},
    optional={"content": st.text(max_size=20) | _JSON, "tool_call_id": st.text(max_size=4),
              "tool_calls": _JSON, "name": st.text(max_size=4)})
_BODY = _JSON | st.builds(
    lambda msgs, fields: {"messages": msgs, **fields},
    st.lists(_MESSAGE, min_size=1, max_size=3) | st.just(HI),
    st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=3))


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_BODY)
def test_hypothesis_bodies_never_get_a_5xx(gw: GatewayProcess, body) -> None:
    status, _, reply = _chat(gw, json.dumps(body).encode())
    assert status < 500, (body, reply)
    if status >= 400:
        _assert_openai_error(status, reply)


@pytest.mark.slow
def test_after_the_fuzzing_the_engine_is_healthy_and_the_log_is_clean(gw) -> None:
    assert gw.get("/health", key="")[0] == 200
    _no_tracebacks(gw)
    assert not re.search(r"^ERROR", gw.log_text(), re.M), gw.log_text()[-3000:]
