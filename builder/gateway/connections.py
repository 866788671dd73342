"""Client connections under a cap and deadlines, in front of aiohttp's HTTP protocol.

Why a wrapper around the protocol factory rather than aiohttp's own settings: aiohttp
3.8 (Debian bookworm) has no deadline at all for a connection that never completes its
first request (its keep-alive timer starts after a response), newer aiohttp reuses the
keep-alive timeout for it, and neither caps connections; their limits (max_line_size,
max_field_size, max_headers) bound the size of a request head, not its time, and
max_headers even changed meaning (bytes in 3.8, a count in 3.9+). A plain
asyncio.Protocol that forwards every call to aiohttp's RequestHandler works the same on
both, through public asyncio API only.

Each connection is in one of three states:
  WAITING  connected (its TLS handshake, if any, still going), or data came after an
           idle spell, and no handler runs yet: the handshake and the request head must
           be done within `header_timeout`
  BUSY     a handler runs (the app's middleware says so): its own deadlines apply (body
           read, each write to the client)
  IDLE     the handler returned; the response is flushing or the connection waits for
           the next keep-alive request: closed after `idle_timeout`
At `max_connections`, a new connection evicts the one that has been WAITING or IDLE the
longest, so idle or half-open connections held by someone else never lock out a client
that sends its request at once (/health stays answerable); when every connection is
BUSY, the new one gets a canned 503 and is closed.

TLS is started here, on a connection already admitted (loop.start_tls), not by the
listening socket (create_server(ssl=...)): asyncio would call the protocol only once the
handshake is done, so half-done handshakes held descriptors the cap never saw (9,000
silent TCP connections to the TLS port starved /health at the unit's 4096 files). So
plain and TLS connections are counted, evicted and timed the same way, from accept().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import ssl
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger("edge_llm_gateway")

WAITING, BUSY, IDLE = "waiting", "busy", "idle"
# aiohttp 3.8 parses every pipelined request it receives into a queue without a limit
# (RequestHandler._messages): a client sending requests without reading the replies
# grew the gateway past 900 MB. aiohttp 3.9+ stops reading at 32 queued; on 3.8 the
# guard does, at this many.
PIPELINE_MAX = 16
_REFUSED_BODY = (b'{"error": {"message": "too many open connections; retry shortly", '
                 b'"type": "server_error", "param": null, "code": "too_many_connections"}}')
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY)


def fd_budget(max_connections: int, slots: int) -> int:
    """The connection cap that fits this process's open-file limit, raising the soft
    limit toward the hard one if needed. Each client may hold two descriptors (its
    socket, and a file while a static asset is sent); the reserve covers engine
    connections (one per slot, one per slot being checked with GET /slots, plus the
    probe), the listening socket, logs and Python."""
    reserve = 64 + 2 * slots
    need = 2 * max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY:
        return max_connections
    cap = max(1, min(max_connections, (soft - reserve) // 2))
    if cap < max_connections:
        log.warning("max_connections lowered from %d to %d to fit the open-file limit %d "
                    "(raise LimitNOFILE to at least %d)", max_connections, cap, soft, need)
    return cap


class Guarded(asyncio.Protocol):
    """One client connection: forwards everything to aiohttp's protocol once admitted."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.state = WAITING
        self.deadline = 0.0
        self.busy = 0
        self.task: asyncio.Task | None = None  # the running handler, while BUSY
        self.closed = False
        self.queued: object = None  # aiohttp 3.8's parsed-request queue, when unbounded
        self.reading_paused = False
        self.early: list[bytes] = []  # decrypted before the upgrade returned to us
        self.handshake: asyncio.Future | None = None  # the TLS upgrade (held: a task)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.pool.admit(self):
            self.closed = True
            if self.pool.tls is None:  # a TLS client could not read it
                transport.write(_REFUSED)  # type: ignore[attr-defined]
            transport.close()
            return
        if self.pool.tls is None:
            self._serve(transport)  # type: ignore[arg-type]
        else:
            self.handshake = asyncio.ensure_future(self._upgrade())

    async def _upgrade(self) -> None:
        """The TLS handshake, while the connection counts as WAITING (the sweeper and
        eviction close it like any other), then aiohttp's protocol on the TLS transport."""
        if self.closed:  # evicted before this task first ran
            return
        try:
            tls = await asyncio.get_running_loop().start_tls(
                self.transport, self, self.pool.tls, server_side=True,  # type: ignore[arg-type]
                # the sweeper ends it at header_timeout; asyncio's own timer is a backstop
                ssl_handshake_timeout=2 * self.pool.header_timeout)
        except (OSError, ValueError, RuntimeError):  # a client that failed or left
            if not self.closed:
                self.pool.forget(self)
                self.pool.on_close("tls_handshake")
            return
        if self.closed or tls is None or tls.is_closing():
            self.pool.forget(self)
            if tls is not None:
                tls.abort()
            return
        self.transport = tls
        self._serve(tls)
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)

    def _serve(self, transport: asyncio.Transport) -> None:
        self.inner = self.pool.factory()
        self.pool.by_inner[self.inner] = self
        if not hasattr(self.inner, "_max_msg_queue_size"):  # aiohttp < 3.9
            self.queued = getattr(self.inner, "_messages", None)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            # asyncio's TLS layer passes on what came with the handshake's last bytes
            # before start_tls returns: kept for aiohttp (one read at most)
            if not self.closed:
                self.early.append(data)
            return
        if self.state == IDLE:
            self.pool.enter(self, WAITING)
        self.inner.data_received(data)
        if self.queued is not None and len(self.queued) > PIPELINE_MAX:  # type: ignore[arg-type]
            self.pause()

    def pause(self) -> None:
        # through aiohttp's protocol, so that its own flow control (request bodies)
        # knows reading is paused
        if not self.reading_paused and self.inner is not None:
            self.reading_paused = True
            self.inner.pause_reading()  # type: ignore[attr-defined]

    def resume_if_drained(self) -> None:
        if self.reading_paused and len(self.queued) <= PIPELINE_MAX // 2:  # type: ignore[arg-type]
            self.reading_paused = False
            self.inner.resume_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self.inner is None:
            return
        if self.busy and self.pool.cancel_on_disconnect and self.task is not None:
            self.task.cancel()  # aiohttp 3.8 lets the handler run on; newer ones cancel
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class ConnectionPool:
    """The protocol factory for loop.create_server: caps and deadlines (see above)."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], *, max_connections: int,
                 header_timeout: float, idle_timeout: float,
                 on_close: Callable[[str], None] = lambda reason: None,
                 cancel_on_disconnect: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        """tls: serve TLS on every connection (the handshake starts once admitted)."""
        self.factory = factory
        self.tls = tls
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.on_close = on_close
        self.cancel_on_disconnect = cancel_on_disconnect
        self.open: set[Guarded] = set()
        self.by_inner: dict[asyncio.Protocol, Guarded] = {}
        self._evictable: OrderedDict[Guarded, None] = OrderedDict()  # oldest first
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> Guarded:
        return Guarded(self)

    # --- states -------------------------------------------------------------------------

    def admit(self, conn: Guarded) -> bool:
        if len(self.open) >= self.max_connections:
            victim = next(iter(self._evictable), None)
            if victim is None:
                self.on_close("refused")
                return False
            self.close(victim, "evicted")
        self.open.add(conn)
        self.enter(conn, WAITING)
        self._start_sweeping()
        return True

    def enter(self, conn: Guarded, state: str) -> None:
        conn.state = state
        if state == BUSY:
            self._evictable.pop(conn, None)
            return
        now = asyncio.get_running_loop().time()
        conn.deadline = now + (self.header_timeout if state == WAITING else self.idle_timeout)
        self._evictable[conn] = None
        self._evictable.move_to_end(conn)

    def started(self, inner: object) -> None:
        """A handler began on this connection (called by the app's middleware)."""
        conn = self.by_inner.get(inner)  # type: ignore[arg-type]
        if conn is not None and not conn.closed:
            conn.busy += 1
            conn.task = asyncio.current_task()
            self.enter(conn, BUSY)
            conn.resume_if_drained()  # aiohttp took a request off its queue

    def finished(self, inner: object) -> None:
        conn = self.by_inner.get(inner)  # type: ignore[arg-type]
        if conn is not None and conn.busy:
            conn.busy -= 1
            if not conn.busy:
                conn.task = None
                if not conn.closed:
                    self.enter(conn, IDLE)

    def forget(self, conn: Guarded) -> None:
        self.open.discard(conn)
        self._evictable.pop(conn, None)
        if conn.inner is not None:
            self.by_inner.pop(conn.inner, None)
        conn.closed = True

    def close(self, conn: Guarded, reason: str) -> None:
        """Drop a connection now (RST): its descriptor is free at once."""
        self.open.discard(conn)
        self._evictable.pop(conn, None)
        conn.closed = True
        self.on_close(reason)
        if conn.transport is not None:
            conn.transport.abort()

    # --- deadlines ------------------------------------------------------------------------

    def _start_sweeping(self) -> None:
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._period(), self._sweep)

    def _period(self) -> float:
        return max(0.05, min(1.0, self.header_timeout / 4, self.idle_timeout / 4))

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for conn in [c for c in self._evictable if c.deadline <= now]:
            self.close(conn, "header_timeout" if conn.state == WAITING else "idle_timeout")
        if self.open:
            self._start_sweeping()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
