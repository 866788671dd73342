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
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from fake_llama_server import FakeEngine
from harness import self_signed
from harness.gateway_process import GatewayProcess
from harness.llama_server import LlamaServer, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODEL_ID = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "Say hi."}]
MiB = 1 << 20
MEMORY_MAX = 128 * MiB  # the unit's own MemoryMax (a release's drop-in gives it more)


# --- a stand-in engine (tests/fake_llama_server.py) -------------------------------------

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

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_idle_connections_beyond_the_fd_limit_do_not_starve_health(fake, tmp_path,
                                                                   tls: bool) -> None:
    """Hundreds of connections that never send a byte, more than the process may open:
    /health keeps answering, and the log does not flood. With TLS on, the same flood
    never sends a ClientHello: the connections count against max_connections from
    accept() on (asyncio's ssl= server hid them until their handshake finished, so they
    took every descriptor). header_timeout is long there, as an attacker who reconnects
    makes it: what keeps /health answering must be the cap, not the deadline."""
    settings = {}
    if tls:
        cert, key = self_signed(tmp_path)
        settings = {"header_timeout": 120, "tls_cert": str(cert), "tls_key": str(key)}
    with _gateway(tmp_path, fake.url, nofile=256, **settings) as gw:
        assert gw.url.startswith("https://" if tls else "http://")
        idle = []
        for _ in range(400):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", gw.port))
            idle.append(s)
        try:
            for _ in range(10):
                assert gw.get("/health", key="", timeout=30)[0] == 200
        finally:
            for s in idle:
                s.close()
        assert gw.metric("connections_closed_total", 'reason="evicted"') > 0
        assert len(gw.log_text().splitlines()) < 50
        _no_tracebacks(gw)


def test_a_tls_client_is_served_as_it_sends(fake, tmp_path) -> None:
    """TLS started by the guard serves what came with the handshake's last bytes, a
    keep-alive request after it and a streamed reply; a client that speaks plain HTTP to
    the TLS port is closed without a traceback."""
    cert, key = self_signed(tmp_path)
    with _gateway(tmp_path, fake.url, tls_cert=str(cert), tls_key=str(key)) as gw:
        ctx = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=ctx, timeout=30)
        for _ in range(3):  # one connection, kept alive
            conn.request("POST", "/v1/chat/completions", json.dumps(
                {"messages": HI, "stream": True}), {"Authorization": f"Bearer {gw.key}"})
            r = conn.getresponse()
            assert r.status == 200 and r.read().rstrip().endswith(b"data: [DONE]")
        conn.close()
        plain = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _closed_by_peer(plain)
        assert gw.metric("connections_closed_total", 'reason="tls_handshake"') == 1
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


def _costly_bodies(size: int) -> list[dict]:
    """Valid chat requests of at most `size` bytes that cost the gateway the most: a
    tool's parameters holding as many small objects as max_json_values allows, and one
    string that a single emoji makes 4 bytes a character once parsed."""
    def fit(make) -> dict:
        n = size
        while len(json.dumps(make(n), ensure_ascii=False).encode()) > size - 100:
            n = n * 9 // 10
        return make(n)

    objects = fit(lambda n: {"messages": HI, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "x": [{"a": "x" * 18}] * min(
            n // 28, 33_000)}}}]})
    emoji = fit(lambda n: {"messages": [{"role": "user", "content": "\U0001F600" + "a" * n}]})
    return [objects, emoji]


def test_a_full_gateway_stays_under_its_planned_memory_max(fake, tmp_path) -> None:
    """The largest shipped profile's slots (orin-agx-64gb: 8) and queue, every place
    taken by a valid max-size body that costs the most once parsed, streams holding the
    slots; then every reply a whole one of max_tokens tokens with 20 logprobs each,
    which its client never reads. The gateway's peak RSS stays under the MemoryMax its
    release gives it (the plan's gateway figure); at the unit's old fixed 128M, these 24
    requests took it to 166 MiB (OOM-killed on a device)."""
    from stand_ins import build_context

    from builder import build as build_mod
    from builder.fleet import release
    from builder.profiles import ProfileStore

    store = ProfileStore()
    name = max(store.names(), key=lambda n: store.load(n).concrete().runtime.parallel)
    ctx = build_context(name)
    p = ctx.p
    slots, queue = p.runtime.parallel, p.service.max_queue
    planned = ctx.plan.gateway_overhead  # the release carries the plan's figure
    assert f"MemoryMax={planned}\n" in release.gateway_unit_conf(build_mod.release_inputs(ctx))
    fake.events, fake.delay = 600, 0.1  # streams that hold their slots for a minute
    fake.logprob_tokens = p.service.max_tokens
    bodies = _costly_bodies(p.service.max_request_bytes)
    with _gateway(tmp_path, fake.url, slots=slots, max_queue=queue,
                  max_tokens=p.service.max_tokens,
                  max_request_bytes=p.service.max_request_bytes) as gw:
        holders = [_open_stream(gw, bodies[i % 2]) for i in range(slots)]
        waiting = []
        for i in range(queue):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing
            s.connect(("127.0.0.1", gw.port))
            data = json.dumps(bodies[i % 2], ensure_ascii=False).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      b"Bearer " + gw.key.encode() + b"\r\nContent-Length: "
                      + str(len(data)).encode() + b"\r\n\r\n" + data)
            waiting.append(s)
        _wait(lambda: gw.metric("queue_depth") == queue, "the queue to fill")
        peak = gw.memory("VmHWM")
        for s in holders:
            s.close()  # the queued ones run; their replies wait for readers
        _wait(lambda: gw.metric("queue_depth") == 0 and gw.metric("in_flight") == 0,
              "every queued request to be answered")
        peak = max(peak, gw.memory("VmHWM"))
        for s in waiting:
            s.close()
        assert peak < planned, f"peak RSS {peak / MiB:.0f} MiB, planned {planned / MiB:.0f}"
        assert _chat(gw, {"messages": HI})[0] == 200
        _no_tracebacks(gw)


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


@pytest.mark.slow
def test_grammars_and_schemas_the_engine_would_choke_on_are_refused(x86_engine, tiny_q4: Path,
                                                                     tmp_path: Path) -> None:
    """A 40 KB grammar of nested groups killed llama-server (SIGSEGV: its grammar parser
    recurses once per group, and the stack a systemd unit gets by default is 8 MiB); a
    schema object of 2,000 optional properties kept it converting for seconds. The
    gateway refuses both, naming the field, and the engine goes on answering, grammars
    at the caps included."""
    port = free_port()
    stack = ["sh", "-c", 'ulimit -s 8192 && exec "$@"', "sh"]  # systemd's DefaultLimitSTACK
    with LlamaServer(x86_engine.tool("llama-server"), [
            "--model", str(tiny_q4), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "512", "--parallel", "1", "--threads", "2", "--metrics"],
            tmp_path / "engine.log", port=port, wrapper=stack) as srv, \
            _gateway(tmp_path, srv.url) as gw:
        deep = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000
        status, _, body = _chat(gw, {"messages": HI, "max_tokens": 2, "grammar": deep})
        assert status == 400, body
        _assert_openai_error(status, body, "invalid_value", "grammar")
        wide = {"type": "object", "properties": {f"p{i}": {"type": "string"}
                                                 for i in range(2000)}}
        status, _, body = _chat(gw, {"messages": HI, "max_tokens": 2, "json_schema": wide})
        assert status == 400, body
        _assert_openai_error(status, body, "invalid_value", "json_schema.properties")
        at_cap = "root ::= " + "(" * 64 + '"a"' + ")" * 64
        for _ in range(2):  # the engine is alive and takes what is let through
            status, _, body = _chat(gw, {"messages": HI, "max_tokens": 2, "grammar": at_cap})
            assert status == 200, body
            assert body["choices"][0]["message"]["content"] == "a"
        assert srv.proc.poll() is None, srv.log_tail()
        assert gw.get("/health", key="")[0] == 200
        _no_tracebacks(gw)


@pytest.mark.slow
def test_one_key_cannot_learn_another_keys_prompt_through_the_engines_cache(
        x86_engine, tiny_q4: Path, tmp_path: Path) -> None:
    """Key A's prompt holds a PIN and A keeps sending it; key B sends the same prompt
    with guesses. The engine computes only what follows the longest prefix its slot
    holds, and used to say how much it found cached (timings.cache_n, usage's
    cached_tokens), and the gateway sent B's guess to A's slot because it continued A's
    prefix: the right guess read as more cached tokens, digit by digit. Now B sees no
    cache counts, never lands in A's slot by A's prefix, and the engine computes as
    many tokens for the right guess as for a wrong one."""
    key_a, key_b = "sk-edge-" + "a" * 43, "sk-edge-" + "b" * 43
    preamble = ("You are the vault assistant of the harbour office. Keep every secret you "
                "are told and answer questions about opening hours, fees and berths. ") * 3
    secret = preamble + "The PIN is 4711. Never say it."
    port = free_port()
    with LlamaServer(x86_engine.tool("llama-server"), [
            "--model", str(tiny_q4), "--host", "127.0.0.1", "--port", str(port),
            "--ctx-size", "2048", "--parallel", "2", "--threads", "2", "--metrics",
            "--cache-reuse", "256", "--alias", MODEL_ID], tmp_path / "engine.log",
            port=port) as srv, \
            _gateway(tmp_path, srv.url, slots=2, keys_text=f"{key_a}\n{key_b}\n") as gw:
        def complete(key: str, prompt: str, **extra) -> tuple[dict, float]:
            """The reply B gets, and how many prompt tokens the engine computed for it."""
            before = srv.counter("prompt_tokens_total")
            status, _, reply = _request(gw, "POST", "/v1/completions", {
                "prompt": prompt, "max_tokens": 1, "temperature": 0, **extra}, key=key,
                timeout=300)
            assert status == 200, reply
            return reply, srv.counter("prompt_tokens_total") - before

        complete(key_a, secret)
        complete(key_b, preamble + "The PIN is 5555.")  # B's own slot, from now on
        computed = {}
        for guess in ("0000", "1234", "4711", "9999", "2580"):  # no two start alike
            complete(key_a, secret)  # the victim, active: its prompt is back in its slot
            reply, computed[guess] = complete(key_b, preamble + f"The PIN is {guess}")
            seen = json.dumps(reply)
            for word in ("timings", "cache_n", "cached_tokens", "prompt_progress"):
                assert word not in seen, seen
        assert computed["4711"] == computed["0000"] == computed["9999"], computed
        status, _, raw = _request(gw, "POST", "/v1/completions", {
            "prompt": preamble + "The PIN is 4711", "max_tokens": 2, "stream": True,
            "stream_options": {"include_usage": True}, "return_progress": True,
            "timings_per_token": True}, key=key_b, timeout=300)
        assert status == 200 and b"[DONE]" in raw
        for word in (b"timings", b"cache_n", b"cached_tokens", b"prompt_progress"):
            assert word not in raw, raw[max(0, raw.find(word) - 300):raw.find(word) + 100]
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
