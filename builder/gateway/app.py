"""The gateway's HTTP application (aiohttp): routes, auth, admission, proxying."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
from pathlib import Path

import aiohttp
from aiohttp import web

from . import affinity, boundedjson, validate
from .admission import Admission, Place, QueueFull, Want
from .config import Config
from .connections import ConnectionPool
from .engine import HUNG, UP, EngineMonitor
from .errors import engine_message, engine_refused, error, unavailable
from .metrics import CONTENT_TYPE, Metrics
from .sse import Scrub, StreamWatch, event, public

__all__ = ["Admission", "Gateway", "QueueFull"]

log = logging.getLogger("edge_llm_gateway")
STATIC = Path(__file__).parent / "static"
# The page and its assets come from this origin only: no CDN, no inline script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
CLIENT_CLOSED = 499  # nginx's status for "the client went away first" (metrics only)
KEY_ID = "edge_llm_key_id"  # request storage: affinity.key_id of the request's API key


class ClientGone(Exception):
    """The client disconnected, or stopped reading and was dropped."""


class Gateway:
    def __init__(self, cfg: Config, keys: list[str]) -> None:
        self.cfg = cfg
        self.keys = [k.encode() for k in keys]
        self.m = Metrics()
        # slot affinity: every request names its engine slot (affinity.py), for an engine
        # that takes llama.cpp's id_slot
        self.affinity = cfg.slot_affinity and "id_slot" in cfg.engine_fields
        self.admission = Admission(cfg.slots, cfg.max_queue, self.m,
                                   confirm=self._slot_idle if self.affinity else None)
        self.engine = EngineMonitor(cfg.engine_url, interval=cfg.engine_probe_interval,
                                    timeout=cfg.engine_probe_timeout,
                                    hung_after=cfg.engine_hung_after,
                                    path=cfg.engine_probe_path,
                                    on_change=self._engine_changed)
        self.limits = validate.Limits(cfg.max_tokens, cfg.model_id, cfg.slots,
                                      frozenset(cfg.engine_fields))
        self.session: aiohttp.ClientSession | None = None
        self.pool: ConnectionPool | None = None  # set by serve(): the connection guard
        self._active: set[asyncio.Task] = set()  # /v1 completions, queued or running
        self._hung_victims: set[asyncio.Task] = set()
        self.m.engine_up.set(0)

    # --- plumbing ---------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_request_bytes,
                              middlewares=[self.track, self.errors, self.auth])
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
        await self.engine.probe(self.session)  # /health knows the state from the start
        probe = asyncio.ensure_future(self.engine.run(self.session))
        yield
        probe.cancel()
        await self.session.close()

    def _engine_changed(self, state: str) -> None:
        self.m.engine_up.set(1 if state == UP else 0)
        self.m.engine_hung.set(1 if state == HUNG else 0)
        if state == HUNG:  # fail what waits on or runs at an engine that stopped answering
            for task in self._active:
                self._hung_victims.add(task)
                task.cancel()

    def _hung_cancelled(self) -> bool:
        """True (and the cancellation consumed) if the engine monitor cancelled us."""
        task = asyncio.current_task()
        if task not in self._hung_victims:
            return False
        self._hung_victims.discard(task)
        if hasattr(task, "uncancel"):
            task.uncancel()
        return True

    @staticmethod
    async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith("/v1/"):
            response.headers.update(PAGE_HEADERS)

    def _api(self, request: web.Request) -> bool:
        """Routes that speak OpenAI errors and need the key."""
        return request.path.startswith("/v1/") or (
            request.path == "/metrics" and self.cfg.metrics_auth)

    @web.middleware
    async def track(self, request: web.Request, handler):
        """The connection guard's BUSY state, and the requests counter."""
        route = request.match_info.route.resource
        label = route.canonical if route is not None else "unmatched"
        if self.pool is not None:
            self.pool.started(request.protocol)
        status = CLIENT_CLOSED
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                await self._flush(request, response)
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except ClientGone:
            status = CLIENT_CLOSED
            return web.Response(status=CLIENT_CLOSED)  # nobody reads it; aiohttp drops it
        finally:
            if self.pool is not None:
                self.pool.finished(request.protocol)
            self.m.requests.labels(label, str(status)).inc()

    @web.middleware
    async def errors(self, request: web.Request, handler):
        """Every error a client of /v1 sees is an OpenAI error object."""
        try:
            return await handler(request)
        except web.HTTPException as e:
            if not self._api(request) or e.status < 400:
                raise
            if e.status == 413:
                return error(413, f"request body larger than {self.cfg.max_request_bytes} "
                             "bytes", code="request_too_large")
            return error(e.status, e.reason, code=None)
        except (ClientGone, asyncio.CancelledError):
            raise
        except ConnectionError as e:  # a write to a client that has gone
            raise ClientGone from e
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            if not self._api(request):
                raise
            return error(500, "internal error in the gateway", kind="server_error",
                         code="internal_error")

    @web.middleware
    async def auth(self, request: web.Request, handler):
        if self.cfg.api_auth and self._api(request):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            # never fails: a header that is not UTF-8 (surrogate-escaped) is just wrong
            given_b = given.strip().encode("utf-8", "backslashreplace")
            # compare with every key, always: the time taken says nothing about which
            ok = False
            for key in self.keys:
                ok |= hmac.compare_digest(given_b, key)
            if scheme.lower() != "bearer" or not ok:
                return error(401, "missing or wrong API key: send 'Authorization: Bearer "
                             "<key>' (the key is in /etc/edge-llm/api-keys on the device)",
                             code="invalid_api_key",
                             headers={"WWW-Authenticate": 'Bearer realm="edge-llm"'})
            request[KEY_ID] = affinity.key_id(given_b)  # whose slots it may reuse
        return await handler(request)

    # --- plain routes -------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-cache"})

    async def health(self, request: web.Request) -> web.Response:
        """From the background probe's last result: cheap, and it never reaches the
        engine, so hammering /health cannot load the engine."""
        if self.engine.up:
            return web.json_response({"status": "ok"})
        body = {"status": "unavailable", "engine": self.engine.state}
        build = self._build_status()
        if build.get("state") in ("building", "failed"):
            body["engine_build"] = build
        return web.json_response(body, status=503, headers={"Retry-After": "2"})

    def _build_status(self) -> dict:
        """What an engine built on the device says of its build (edge-llm-trtllm writes
        it), or {}: a missing or half-written file is no news."""
        if not self.cfg.engine_status_file:
            return {}
        try:
            status = json.loads(Path(self.cfg.engine_status_file).read_bytes())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def _engine_build(self) -> web.Response | None:
        """503 naming the engine build in progress (or failed), else None."""
        st = self._build_status()
        step = f"{st.get('step', '?')} {st.get('steps', '')}".strip()
        if st.get("state") == "building":
            return error(503, f"the engine is being built on this device (step {step}, "
                         f"since {st.get('since', '?')}); the first start with a new model "
                         "or JetPack takes minutes to an hour: retry later",
                         kind="server_error", code="engine_building",
                         headers={"Retry-After": "60"})
        if st.get("state") == "failed":
            return error(503, f"the engine could not be built on this device (step {step}); "
                         "`journalctl -u edge-llm-engine-build` on the device says why",
                         kind="server_error", code="engine_build_failed",
                         headers={"Retry-After": "300"})
        return None

    async def metrics(self, request: web.Request) -> web.Response:
        if self.pool is not None:
            self.m.connections.set(len(self.pool.open))
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

    def _too_large(self) -> web.Response:
        resp = error(413, f"request body larger than {self.cfg.max_request_bytes} bytes",
                     code="request_too_large")
        resp.force_close()
        return resp

    async def _complete(self, request: web.Request, path: str, chat: bool):
        """Admission first (a place in the queue), then the body (read within
        body_timeout, measured before it is parsed), parsing and validation (a mistake is
        answered without waiting), then a slot: a request that has to wait for one keeps
        only its raw body meanwhile and is parsed again once it has a slot, and one at
        the engine holds only the bytes it sent. Parsing, checking and serializing run
        without a pause, so one body at a time is ever parsed. Memory is bounded by
        places x max_request_bytes, plus one parsed body (planner.gateway_memory_max)."""
        if (request.content_length or 0) > self.cfg.max_request_bytes:
            return self._too_large()
        if request.headers.get("Content-Encoding", "identity").strip().lower() not in (
                "", "identity"):
            resp = error(415, "compressed request bodies are not accepted; send plain "
                         "JSON", code="unsupported_encoding")
            resp.force_close()
            return resp
        if self.engine.hung:
            return unavailable("it stopped answering")
        if not self.engine.up and (building := self._engine_build()) is not None:
            return building  # no use queueing for an engine that is minutes away
        task = asyncio.current_task()
        self._active.add(task)
        try:
            async with self.admission.place() as place:
                raw = await self._read_body(request)
                if isinstance(raw, web.Response):
                    return raw
                values, depth = boundedjson.measure(raw)
                if depth > self.cfg.max_json_depth or values > self.cfg.max_json_values:
                    # refused before it waits for a slot; parse() words the reason
                    bad = boundedjson.parse(raw, max_depth=self.cfg.max_json_depth,
                                            max_values=self.cfg.max_json_values)
                    assert isinstance(bad, boundedjson.JsonError)
                    return error(400, bad.message, code=bad.code)
                req = self._checked(raw, chat)
                if isinstance(req, web.Response):
                    return req
                want = self._want(req, chat, request.get(KEY_ID, b""))
                if not place.try_slot(want):
                    del req  # while it waits, only the raw body is held
                    await place.slot(want)
                    req = self._checked(raw, chat)  # the same bytes: the same request
                    if isinstance(req, web.Response):
                        return req
                del raw
                if self.affinity:
                    req["id_slot"] = place.id
                    self.m.slot_assignments.labels(place.kind).inc()
                if not self._may_reuse(place):
                    # what the slot holds is another key's (or, in the engine's host
                    # prompt cache, anyone's): computed again, never reused, so how
                    # fast this answer comes says nothing of others' prompts
                    req["cache_prompt"] = False
                return await self._forward(request, path, req, chat, place)
        except QueueFull:
            self.m.rejected.inc()
            return error(429, f"all {self.cfg.slots} engine slots are busy and "
                         f"{self.cfg.max_queue} requests are waiting; retry later",
                         kind="rate_limit_error", code="queue_full",
                         headers={"Retry-After": str(self.admission.retry_after())})
        except asyncio.CancelledError:
            if self._hung_cancelled():
                return unavailable("it stopped answering")
            self.m.client_disconnects.inc()  # the client went away (aiohttp cancels)
            raise
        except ClientGone:
            self.m.client_disconnects.inc()
            raise
        finally:
            self._active.discard(task)
            self._hung_victims.discard(task)

    def _checked(self, raw: bytes, chat: bool) -> dict | web.Response:
        """The request to send to the engine, or the 400 that refuses it."""
        body = boundedjson.parse(raw, max_depth=self.cfg.max_json_depth,
                                 max_values=self.cfg.max_json_values)
        if isinstance(body, boundedjson.JsonError):
            return error(400, body.message, code=body.code)
        req = (validate.chat if chat else validate.completion)(body, self.limits)
        if isinstance(req, validate.Invalid):
            return error(req.status, req.message, code=req.code, param=req.param)
        return req

    def _want(self, req: dict, chat: bool, owner: bytes) -> Want:
        """Which slot the request should have: the one it names (id_slot), else the one
        holding its conversation (affinity.py); without affinity, any."""
        if not self.affinity:
            return Want(owner=owner)
        named = req.get("id_slot", -1)
        return Want(affinity.chat_digests(req) if chat else affinity.completion_digests(req),
                    named if named >= 0 else None, owner)

    def _may_reuse(self, place: Place) -> bool:
        """Whether the engine may reuse what the request's slot holds: only what the
        same key left there. Without affinity the engine picks the slot (by prompt
        similarity, any key's), so reuse is safe only where there is one key."""
        if "cache_prompt" not in self.limits.engine_fields:
            return True  # an engine that cannot be told (TensorRT-LLM's server)
        return place.own if self.affinity else len(self.keys) <= 1

    async def _slot_idle(self, slot: int) -> None:
        """Returns once the engine runs nothing in `slot` (GET /slots, llama-server's
        slot monitor, answered by its main loop), or it is not running at all. Checked
        after a request that ended before its reply did: llama-server stops a generation
        only when it notices that the connection closed."""
        while self.affinity:
            busy = await self._slot_busy(slot)
            if busy is False:
                return
            if busy is None:  # no slot monitor: pinning would not be safe
                log.warning("the engine does not say which slots are busy (GET /slots): "
                            "slot affinity off")
                self.affinity = False
                return
            await asyncio.sleep(0.1)

    async def _slot_busy(self, slot: int) -> bool | None:
        """True while the engine runs something in `slot` (or cannot say so right now),
        False once it does not (or is not running), None if it has no slot monitor."""
        try:
            async with self.session.get(self.cfg.engine_url + "/slots",
                                        timeout=aiohttp.ClientTimeout(
                                            total=self.cfg.engine_probe_timeout)) as r:
                if r.status != 200:
                    # 404/501: no monitor (llama-server --no-slots, another server);
                    # 503: loading, ask again
                    return None if r.status in (404, 501) else True
                states = json.loads(await r.read())
        except aiohttp.ClientConnectorError as e:
            # not running: nothing runs in a slot, and a new engine starts empty; unless
            # it is our side that is out of file descriptors
            return getattr(e.os_error, "errno", None) in (errno.EMFILE, errno.ENFILE)
        except (TimeoutError, aiohttp.ClientError):
            return True  # hung or restarting: the engine monitor deals with that
        except ValueError:
            return None
        if not isinstance(states, list):
            return None
        for st in states:
            if isinstance(st, dict) and st.get("id") == slot:
                busy = st.get("is_processing")
                return busy if isinstance(busy, bool) else None
        return None

    async def _read_body(self, request: web.Request) -> bytes | web.Response:
        try:
            async with asyncio.timeout(self.cfg.body_timeout):
                return await request.read()
        except TimeoutError:
            self.m.connections_closed.labels("body_timeout").inc()
            resp = error(408, f"the request body did not arrive within "
                         f"{self.cfg.body_timeout:g} s", code="request_timeout")
            resp.force_close()
            return resp
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        except web.RequestPayloadError as e:  # malformed chunked encoding, bad gzip
            resp = error(400, f"the request body is malformed: {e}", code="invalid_body")
            resp.force_close()
            return resp
        except ConnectionError as e:
            raise ClientGone from e

    async def _forward(self, request: web.Request, path: str, req: dict,
                       chat: bool, place: Place) -> web.StreamResponse:
        """Send `req` to the engine and its reply to the client. `req` is emptied once
        serialized: while it runs, a request holds the bytes sent, not its parsed body."""
        route = request.match_info.route.resource.canonical
        param = "messages" if chat else "prompt"
        stream, data = bool(req.get("stream")), json.dumps(req).encode()
        req.clear()
        place.sent = True  # from here on it may be running in the engine
        try:
            upstream = await self.session.post(
                self.cfg.engine_url + path, data=data,
                headers={"Content-Type": "application/json"})
            del data  # sent
        except (TimeoutError, aiohttp.ClientError) as e:
            os_error = getattr(e, "os_error", None)
            if getattr(os_error, "errno", None) in (errno.EMFILE, errno.ENFILE):
                return error(503, "the gateway is out of file descriptors; retry shortly",
                             kind="server_error", code="gateway_overloaded",
                             headers={"Retry-After": "2"})
            self.engine.failed(type(e).__name__)
            place.finished = isinstance(e, aiohttp.ClientConnectorError)  # never arrived
            return self._engine_build() or unavailable(type(e).__name__)
        try:
            if upstream.status != 200:
                return await self._refused(upstream, param, place)
            if not stream:
                return await self._whole(request, upstream, route, place)
            return await self._stream(request, upstream, route, chat, place)
        finally:
            upstream.close()  # not returned to the pool half-read: the engine sees EOF

    async def _refused(self, upstream: aiohttp.ClientResponse, param: str,
                       place: Place) -> web.Response:
        """The engine did not take the request: its 4xx goes on as a 4xx; a 5xx is an
        outage only if the engine also stops answering its probe."""
        try:
            data = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            self.engine.failed(type(e).__name__)
            return unavailable(f"{type(e).__name__} while reading its reply")
        place.finished = True  # an answer in full: the engine is done with it
        if upstream.status == 503 or (upstream.status >= 500
                                      and not await self.engine.probe(self.session)):
            message, _ = engine_message(data)
            self.engine.failed(f"answered {upstream.status}")
            return unavailable(f"it answered {upstream.status}: {message[:200]}")
        log.info("engine refused a request with %d: %s", upstream.status,
                 engine_message(data)[0][:200])
        return engine_refused(upstream.status, data, param)

    async def _whole(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     route: str, place: Place) -> web.Response:
        try:
            data = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            self.engine.failed(type(e).__name__)
            return unavailable(f"{type(e).__name__} while reading its reply")
        place.finished = True
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        with contextlib.suppress(TypeError, AttributeError, KeyError):
            self.m.completion_tokens.labels(route).inc(reply["usage"]["completion_tokens"])
            tps = (reply.get("timings") or {}).get("predicted_per_second")
            if tps:
                self.m.decode_tps.labels(route).observe(tps)
        if public(reply):  # the engine's internals stay here (sse.py)
            data = json.dumps(reply).encode()
        del reply
        response = web.Response(body=data, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json")})
        del data
        place.leave_slot()  # the place, kept, bounds the replies held for slow readers
        await self._flush(request, response)
        return response

    async def _flush(self, request: web.Request, response: web.StreamResponse) -> None:
        """Send a whole reply (JSON, a static file) while the connection still counts as
        busy, within write_timeout: the connection guard may close an idle connection,
        and a reader that stops reading a file must not hold it forever. aiohttp's own
        prepare and write_eof after this do nothing."""
        await self._send(request, response.prepare(request))
        await self._send(request, response.write_eof())

    async def _send(self, request: web.Request, write) -> None:
        """One write to the client, within write_timeout: a client that stops reading
        is dropped, which frees its slot and (upstream closed) its generation."""
        try:
            async with asyncio.timeout(self.cfg.write_timeout):
                await write
        except TimeoutError:
            self.m.connections_closed.labels("write_timeout").inc()
            if request.transport is not None:
                request.transport.abort()
            raise ClientGone("stopped reading") from None
        except ConnectionError as e:  # incl. aiohttp's ClientConnectionResetError
            raise ClientGone(str(e)) from e

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                      route: str, chat: bool, place: Place) -> web.StreamResponse:
        watch, scrub = StreamWatch(chat), Scrub()
        resp = web.StreamResponse(headers={
            "Content-Type": upstream.headers.get("Content-Type", "text/event-stream"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await self._send(request, resp.prepare(request))
        failure = None
        try:
            # each chunk goes out as it arrives: no buffering between engine and client
            async for chunk in upstream.content.iter_any():
                watch.feed(chunk)
                # llama-server sends its last event (or an error) just before it lets
                # the slot go, in the same turn of its main loop
                place.finished = watch.done or watch.error
                out = scrub.feed(chunk)
                if out:
                    await self._send(request, resp.write(out))
        except (TimeoutError, aiohttp.ClientError) as e:  # the engine's side
            failure = type(e).__name__
        except asyncio.CancelledError:
            if not self._hung_cancelled():
                raise
            failure = "it stopped answering"
        with contextlib.suppress(ClientGone):
            if rest := scrub.flush():  # a last line without its newline
                await self._send(request, resp.write(rest))
        if not watch.done and not watch.error:
            failure = failure or "the stream ended without [DONE]"
        if failure:
            log.warning("stream ended by the engine: %s", failure)
            self.m.stream_errors.inc()
            self.engine.failed(failure)
            with contextlib.suppress(ClientGone):
                await self._send(request, resp.write(event({"error": {
                    "message": f"the engine stopped mid-reply ({failure}); it restarts by "
                               "itself, retry shortly",
                    "type": "server_error", "param": None, "code": "engine_unavailable"}})))
        if watch.ttft is not None:
            self.m.ttft.labels(route).observe(watch.ttft)
            self.m.completion_tokens.labels(route).inc(watch.tokens)
        if watch.decode_tps is not None:
            self.m.decode_tps.labels(route).observe(watch.decode_tps)
        with contextlib.suppress(ClientGone):
            await self._send(request, resp.write_eof())
        return resp
