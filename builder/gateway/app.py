"""The gateway's HTTP application (aiohttp): routes, auth, admission, proxying."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from .config import Config
from .metrics import CONTENT_TYPE, Metrics
from .sse import StreamWatch, event

log = logging.getLogger("edge_llm_gateway")
STATIC = Path(__file__).parent / "static"
# The page and its assets come from this origin only: no CDN, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None, param: str | None = None,
          headers: dict | None = None) -> web.Response:
    """An OpenAI-style error object."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status=status, headers=headers)


class QueueFull(Exception):
    pass


class Admission:
    """At most `slots` requests at the engine; up to `max_queue` more wait in arrival
    order; beyond that, refuse at once (429) rather than pile up on a small device."""

    def __init__(self, slots: int, max_queue: int, metrics: Metrics) -> None:
        self.slots, self.max_queue, self.m = slots, max_queue, metrics
        self._sem = asyncio.Semaphore(slots)
        self.waiting = 0
        self._mean_seconds = 5.0  # recent request duration, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self._mean_seconds * (self.waiting + 1) / self.slots))

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._sem.locked():
            if self.waiting >= self.max_queue:
                raise QueueFull
            self.waiting += 1
            self.m.queue_depth.set(self.waiting)
            try:
                await self._sem.acquire()
            finally:
                self.waiting -= 1
                self.m.queue_depth.set(self.waiting)
        else:
            await self._sem.acquire()
        self.m.in_flight.inc()
        start = time.monotonic()
        try:
            yield
        finally:
            self._sem.release()
            self.m.in_flight.dec()
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.monotonic() - start)


class Gateway:
    def __init__(self, cfg: Config, keys: list[str]) -> None:
        self.cfg = cfg
        self.keys = [k.encode() for k in keys]
        self.m = Metrics()
        self.admission = Admission(cfg.slots, cfg.max_queue, self.m)
        self.session: aiohttp.ClientSession | None = None
        self.models = {cfg.model_id}

    # --- plumbing ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_bytes,
                              middlewares=[self.count, self.errors, self.auth])
        r = app.router
        r.add_get("/", self.index)
        r.add_static("/static/", STATIC, show_index=False)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/models", self.list_models)
        r.add_get("/v1/appliance", self.appliance)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_post("/v1/completions", self.completions)
        app.cleanup_ctx.append(self._client)
        app.on_response_prepare.append(self._page_headers)
        return app

    async def _client(self, app):
        # connect fails fast (engine down), reads wait for slow CPUs. A fresh loopback
        # connection per request (force_close): reusing a keep-alive connection the engine
        # has just timed out fails the request, and a dropped connection is how the engine
        # learns that a client went away.
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5,
                                        sock_read=self.cfg.request_timeout)
        self.session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=0, force_close=True))
        probe = asyncio.ensure_future(self._probe_loop())
        yield
        probe.cancel()
        await self.session.close()

    async def _probe_loop(self) -> None:
        while True:
            await self.engine_ready()
            await asyncio.sleep(5)

    async def engine_ready(self) -> bool:
        try:
            async with self.session.get(self.cfg.engine_url + "/health",
                                        timeout=aiohttp.ClientTimeout(total=2)) as r:
                up = r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            up = False
        self.m.engine_up.set(1 if up else 0)
        return up

    @staticmethod
    async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith("/v1/"):
            response.headers.update(PAGE_HEADERS)

    @web.middleware
    async def count(self, request: web.Request, handler):
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            self.m.requests.labels(label, str(status)).inc()

    @web.middleware
    async def errors(self, request: web.Request, handler):
        """Every error a client of /v1 sees is an OpenAI error object."""
        try:
            return await handler(request)
        except web.HTTPException as e:
            if not request.path.startswith("/v1/") or e.status < 400:
                raise
            if e.status == 413:
                return error(413, f"request body larger than {self.cfg.max_request_bytes} "
                             "bytes", code="request_too_large")
            return error(e.status, e.reason, code=None)

    @web.middleware
    async def auth(self, request: web.Request, handler):
        if self.cfg.api_auth and request.path.startswith("/v1/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            given_b = given.strip().encode()
            # compare with every key, always: the time taken says nothing about which
            ok = False
            for key in self.keys:
                ok |= hmac.compare_digest(given_b, key)
            if scheme.lower() != "bearer" or not ok:
                return error(401, "missing or wrong API key: send 'Authorization: Bearer "
                             "<key>' (the key is in /etc/edge-llm/api-keys on the device)",
                             code="invalid_api_key",
                             headers={"WWW-Authenticate": 'Bearer realm="edge-llm"'})
        return await handler(request)

    # --- plain routes -------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-cache"})

    async def health(self, request: web.Request) -> web.Response:
        ok = await self.engine_ready()
        return web.json_response({"status": "ok" if ok else "unavailable"},
                                 status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.m.exposition(),
                            headers={"Content-Type": CONTENT_TYPE})

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.cfg.model_id, "object": "model", "created": 0,
             "owned_by": "edge-llm"}]})

    async def appliance(self, request: web.Request) -> web.Response:
        return web.json_response({**self.cfg.appliance, "model_id": self.cfg.model_id,
                                  "slots": self.cfg.slots, "max_tokens": self.cfg.max_tokens})

    # --- completions ------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "/v1/chat/completions", chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "/v1/completions", chat=False)

    def _check(self, body, chat: bool) -> web.Response | None:
        """The request's shape and limits; an error response, or None when fine."""
        if not isinstance(body, dict):
            return error(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in self.models:
            return error(404, f"the model '{model}' does not exist on this appliance; "
                         f"it serves '{self.cfg.model_id}' (GET /v1/models)",
                         code="model_not_found", param="model")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) for m in msgs):
                return error(400, "'messages' must be a non-empty list of message objects",
                             param="messages")
        elif not isinstance(body.get("prompt"), (str, list)):
            return error(400, "'prompt' must be a string or a list", param="prompt")
        named = [k for k in ("max_tokens", "max_completion_tokens", "n_predict")
                 if body.get(k) is not None]
        for k in named:
            v = body[k]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                return error(400, f"'{k}' must be a positive integer, got {v!r}", param=k)
            if v > self.cfg.max_tokens:
                return error(400, f"'{k}' is {v}; this appliance allows at most "
                             f"{self.cfg.max_tokens} tokens per request", param=k)
        if not named:
            body["max_tokens"] = self.cfg.max_tokens  # never an unbounded generation
        n = body.get("n", 1)
        if n != 1:
            return error(400, "'n' must be 1 on this appliance", param="n")
        return None

    async def _complete(self, request: web.Request, path: str, chat: bool):
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as e:
            return error(400, f"the request body is not valid JSON: {e}")
        bad = self._check(body, chat)
        if bad is not None:
            return bad
        stream = bool(body.get("stream"))
        try:
            async with self.admission.slot():
                return await self._forward(request, path, body, stream, chat)
        except QueueFull:
            self.m.rejected.inc()
            return error(429, f"all {self.cfg.slots} engine slots are busy and "
                         f"{self.cfg.max_queue} requests are waiting; retry later",
                         kind="rate_limit_error", code="queue_full",
                         headers={"Retry-After": str(self.admission.retry_after())})
        except asyncio.CancelledError:
            self.m.client_disconnects.inc()  # aiohttp cancels the handler on disconnect
            raise

    def _unavailable(self, why: str) -> web.Response:
        log.warning("engine unavailable: %s", why)
        self.m.engine_up.set(0)
        return error(503, f"the engine is not available ({why}); it restarts by itself, "
                     "retry shortly", kind="server_error", code="engine_unavailable",
                     headers={"Retry-After": "2"})

    async def _forward(self, request: web.Request, path: str, body: dict, stream: bool,
                       chat: bool) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical
        try:
            upstream = await self.session.post(self.cfg.engine_url + path, json=body)
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            return self._unavailable(type(e).__name__)
        try:
            if upstream.status != 200 or not stream:
                return await self._whole(upstream, route)
            return await self._stream(request, upstream, route, chat)
        finally:
            upstream.close()  # not returned to the pool half-read: the engine sees EOF

    async def _whole(self, upstream: aiohttp.ClientResponse, route: str) -> web.Response:
        try:
            data = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            return self._unavailable(f"{type(e).__name__} while reading its reply")
        headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json")}
        if upstream.status == 503:
            headers["Retry-After"] = "2"
        if upstream.status == 200:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                reply = json.loads(data)
                self.m.completion_tokens.labels(route).inc(
                    reply["usage"]["completion_tokens"])
                tps = (reply.get("timings") or {}).get("predicted_per_second")
                if tps:
                    self.m.decode_tps.labels(route).observe(tps)
        return web.Response(body=data, status=upstream.status, headers=headers)

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                      route: str, chat: bool) -> web.StreamResponse:
        watch = StreamWatch(chat)
        resp = web.StreamResponse(headers={
            "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        failure = None
        try:
            # each chunk goes out as it arrives: no buffering between engine and client
            async for chunk in upstream.content.iter_any():
                watch.feed(chunk)
                await resp.write(chunk)
        except ConnectionResetError:  # the client left: dropping upstream cancels the work
            self.m.client_disconnects.inc()
            return resp
        except (TimeoutError, aiohttp.ClientError) as e:
            failure = type(e).__name__
        if not watch.done and not watch.error:
            failure = failure or "the stream ended without [DONE]"
        if failure:
            log.warning("stream ended by the engine: %s", failure)
            self.m.stream_errors.inc()
            self.m.engine_up.set(0)
            with contextlib.suppress(ConnectionResetError):
                await resp.write(event({"error": {
                    "message": f"the engine stopped mid-reply ({failure}); it restarts by "
                               "itself, retry shortly",
                    "type": "server_error", "param": None, "code": "engine_unavailable"}}))
        if watch.ttft is not None:
            self.m.ttft.labels(route).observe(watch.ttft)
            self.m.completion_tokens.labels(route).inc(watch.tokens)
        if watch.decode_tps is not None:
            self.m.decode_tps.labels(route).observe(watch.decode_tps)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp
