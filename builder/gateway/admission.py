"""Admission to the engine: `slots` requests run at once, `max_queue` more hold a place
and wait in arrival order, and any beyond that are refused at once (429).

A request claims its place before its body is read, and is given a slot (in the order
places asked for one) before its body is parsed: at most slots + max_queue bodies are
in memory, raw, and at most `slots` parsed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator

from .metrics import Metrics


class QueueFull(Exception):
    pass


class Place:
    """A claimed place; `await place.slot()` waits for an engine slot."""

    def __init__(self, admission: Admission) -> None:
        self._adm = admission
        self.has_slot = False
        self.started = 0.0

    async def slot(self) -> None:
        await self._adm._acquire()
        self.has_slot = True
        self.started = time.monotonic()
        self._adm._gauges()


class Admission:
    def __init__(self, slots: int, max_queue: int, metrics: Metrics) -> None:
        self.slots, self.max_queue, self.m = slots, max_queue, metrics
        self.places = 0  # claimed, with or without a slot
        self.running = 0  # holding a slot
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._mean_seconds = 5.0  # recent time in a slot, for Retry-After

    @property
    def waiting(self) -> int:
        return self.places - self.running

    def retry_after(self) -> int:
        return max(1, math.ceil(self._mean_seconds * (self.waiting + 1) / self.slots))

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[Place]:
        if self.places >= self.slots + self.max_queue:
            raise QueueFull
        self.places += 1
        place = Place(self)
        self._gauges()
        try:
            yield place
        finally:
            self.places -= 1
            if place.has_slot:
                self.running -= 1
                self._release()
                self._mean_seconds = (0.8 * self._mean_seconds
                                      + 0.2 * (time.monotonic() - place.started))
            self._gauges()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """A place and then a slot, in one step."""
        async with self.place() as place:
            await place.slot()
            yield

    async def _acquire(self) -> None:
        if self._free and not self._waiters:
            self._free -= 1
            self.running += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # granted just as it was cancelled: pass the slot on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)
        self.running += 1

    def _release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    def _gauges(self) -> None:
        self.m.queue_depth.set(self.waiting)
        self.m.in_flight.set(self.running)
