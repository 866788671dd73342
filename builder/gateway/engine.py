"""Is the engine serving? A background probe, and the state the gateway answers from.

The probe is `GET /metrics`: llama-server (started with --metrics, as the appliance
does) answers it by posting a METRICS task to its task queue and waiting for the main
loop's result (tools/server/server-context.cpp, get_metrics: post_task(...,
high-priority), then rd.next()); the main loop takes such tasks even while it decodes
(process_single_task accepts METRICS while yielding). So it answers only while the loop
that runs generations turns. `/health` is answered by the HTTP thread alone
(get_health: create_response, then ok) and stays 200 while the main loop is stuck.
Servers without that endpoint (no --metrics: 501; other engines: 404) fall back to
/health.

States: up (the last probe answered 200); down (refused, reset, not ready: requests are
still tried, since a refused connection fails at once); hung (`hung_after` probes in a
row got no answer within `timeout`: requests are answered 503 at once, and those
waiting or running are failed by the gateway's `on_hung`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

log = logging.getLogger("edge_llm_gateway")
UP, DOWN, HUNG = "up", "down", "hung"


class EngineMonitor:
    def __init__(self, url: str, *, interval: float, timeout: float, hung_after: int,
                 path: str = "/metrics",
                 on_change: Callable[[str], None] = lambda state: None) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.hung_after = hung_after
        self.on_change = on_change
        self.state = DOWN
        self.misses = 0  # probes in a row without an answer
        self.path = path
        self._probe: asyncio.Future[bool] | None = None
        self._wake = asyncio.Event()

    @property
    def up(self) -> bool:
        return self.state == UP

    @property
    def hung(self) -> bool:
        return self.state == HUNG

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Probe every `interval` seconds, sooner when woken (a request failed)."""
        while True:
            await self.probe(session)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    def failed(self, why: str) -> None:
        """A request could not reach the engine: down now, probe again soon."""
        if self.state != HUNG:
            self._set(DOWN, why)
        self._wake.set()

    async def probe(self, session: aiohttp.ClientSession) -> bool:
        """One probe; callers arriving while one runs share its result."""
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_once(session))
        return await asyncio.shield(self._probe)

    async def _probe_once(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(self.url + self.path,
                                   timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:
                status = r.status
                await r.read()
        except TimeoutError:
            self.misses += 1
            if self.misses >= self.hung_after:
                self._set(HUNG, f"no answer to GET {self.path} in {self.timeout:g} s, "
                                f"{self.misses} times in a row")
            return False
        except aiohttp.ClientError as e:
            self.misses = 0
            self._set(DOWN, type(e).__name__)
            return False
        self.misses = 0
        if status in (404, 501) and self.path != "/health":
            self.path = "/health"  # no --metrics: only the HTTP thread can be checked
            log.warning("the engine has no /metrics (%d); probing /health instead", status)
            return await self._probe_once(session)
        self._set(UP if status == 200 else DOWN, f"GET {self.path} answered {status}")
        return status == 200

    def _set(self, state: str, why: str) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if state == UP:
            log.info("engine up (was %s)", previous)
        else:
            log.warning("engine %s: %s", state, why)
        self.on_change(state)
