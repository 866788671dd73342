"""Admission to the engine: `slots` requests run at once, `max_queue` more hold a place
and wait in arrival order, and any beyond that are refused at once (429).

A request claims its place before its body is read, and is given a slot (in the order
places asked for one) once its body has been checked, and keeps its place until its
reply is sent (a whole reply gives its slot back first): at most slots + max_queue
requests and replies are in memory (app.py parses one body at a time).

Slots are numbered, and each is given to one request at a time: with slot affinity
(affinity.py) the gateway tells the engine which slot to use, and a client may name one
itself (llama.cpp's id_slot), so two requests must never be given the same slot. A
request that names a slot waits for that slot; any other takes the best free slot for
its conversation at once (a busy slot can only be running another request of the same
conversation, since giving a slot out records who has it). Whenever a slot frees, the
earliest waiter that can use it gets it, so nobody waits while a slot they could use
is free, and nobody waits behind a later arrival for the same slot.

A request that ended without its reply read to the end (the client left, the engine
failed, the stream was cut) may still be running in the engine for a moment: llama-
server cancels a generation only when its HTTP thread notices the closed connection.
Its slot is given out again only once `confirm(slot)` says the engine has let it go:
llama-server handed a request for a busy slot would defer it, but first save the busy
slot to its prompt cache and load another prompt into it (get_available_slot, when
id_slot names a busy slot), under the generation still running there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from . import affinity
from .metrics import Metrics

log = logging.getLogger("edge_llm_gateway")


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Want:
    """What a request asks of admission: the digests of its prompt (affinity.py), the
    slot it named itself, if any, and who asks (affinity.key_id of its API key)."""

    digests: tuple[bytes, ...] = ()
    slot: int | None = None
    owner: bytes = b""


@dataclass(frozen=True)
class Given:
    slot: int
    kind: str  # how it was chosen (affinity.CONTINUED, ...)
    own: bool  # the slot last ran a request of the same key: the engine may reuse it


@dataclass
class _Waiter:
    want: Want
    future: asyncio.Future[tuple[int, str]]  # the slot given, and how it was chosen


class Place:
    """A claimed place; `await place.slot(want)` waits for an engine slot."""

    def __init__(self, admission: Admission) -> None:
        self._adm = admission
        self.has_slot = False
        self.id = -1  # the slot, once given
        self.kind = ""  # how it was chosen (affinity.CONTINUED, ...)
        self.own = False  # the slot last ran a request of the same key
        self.started = 0.0
        self.sent = False  # the request went to the engine ...
        self.finished = False  # ... and its reply was read to the end
        self.sending = False  # the slot is back; the reply is being sent to the client

    def try_slot(self, want: Want = Want()) -> bool:
        """Take a slot now if one is free for this request and nobody waits for it."""
        got = self._adm._try(want)
        if got is not None:
            self._given(got)
        return got is not None

    async def slot(self, want: Want = Want()) -> None:
        if not self.try_slot(want):
            self._given(await self._adm._wait(want))

    def leave_slot(self) -> None:
        """Give the slot back now and keep the place while a whole reply goes to the
        client: a client slow to read it does not hold up the engine, and the places
        still bound how many replies the gateway holds."""
        if self.has_slot:
            self._adm._free_slot(self)
            self.sending = True
            self._adm.sending += 1
            self._adm._gauges()

    def _given(self, got: Given) -> None:
        self.id, self.kind, self.own = got.slot, got.kind, got.own
        self.has_slot = True
        self.started = time.monotonic()
        self._adm.running += 1
        self._adm._gauges()


class Admission:
    def __init__(self, slots: int, max_queue: int, metrics: Metrics, *,
                 confirm: Callable[[int], Awaitable[None]] | None = None) -> None:
        """confirm(slot): returns once the engine no longer runs anything in `slot`;
        awaited before a slot whose request ended uncertainly is given out again."""
        self.slots, self.max_queue, self.m = slots, max_queue, metrics
        self.confirm = confirm
        self.places = 0  # claimed, with or without a slot
        self.running = 0  # holding a slot
        self.sending = 0  # done with their slot, sending their reply
        self.state = [affinity.SlotState() for _ in range(slots)]
        self._free = set(range(slots))
        self._waiters: deque[_Waiter] = deque()
        self._given_out = 0  # slots given so far (for least recently used)
        self._confirming: set[asyncio.Task] = set()
        self._mean_seconds = 5.0  # recent time in a slot, for Retry-After

    @property
    def waiting(self) -> int:
        return self.places - self.running - self.sending

    @property
    def free(self) -> int:
        return len(self._free)

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
            self._free_slot(place)
            self.places -= 1
            self.sending -= place.sending
            self._gauges()

    def _free_slot(self, place: Place) -> None:
        if not place.has_slot:
            return
        place.has_slot = False
        self.running -= 1
        self._mean_seconds = (0.8 * self._mean_seconds
                              + 0.2 * (time.monotonic() - place.started))
        if place.sent and not place.finished and self.confirm is not None:
            task = asyncio.ensure_future(self._release_confirmed(place.id))
            self._confirming.add(task)
            task.add_done_callback(self._confirming.discard)
        else:
            self._release(place.id)

    @contextlib.asynccontextmanager
    async def slot(self, want: Want = Want()) -> AsyncIterator[Place]:
        """A place and then a slot, in one step."""
        async with self.place() as place:
            await place.slot(want)
            yield place

    # --- choosing and handing out slots --------------------------------------------------

    def _choose(self, want: Want) -> tuple[int, str] | None:
        """The best free slot for `want`, or None."""
        if want.slot is not None:
            return (want.slot, affinity.CLIENT) if want.slot in self._free else None
        if not self._free:
            return None
        def rank(s: int) -> tuple[int, int, int]:
            return affinity.rank(want.digests, self.state[s], want.owner)

        best = max(self._free, key=lambda s: (rank(s), -s))
        return best, affinity.kind_of(rank(best))

    def _take(self, slot: int, kind: str, want: Want) -> Given:
        self._free.discard(slot)
        last = self.state[slot]
        self._given_out += 1
        self.state[slot] = affinity.SlotState(want.digests, self._given_out, want.owner)
        # a slot nobody had since the gateway started may hold anyone's tokens
        return Given(slot, kind, own=bool(last.given) and last.owner == want.owner)

    def _try(self, want: Want) -> Given | None:
        # nobody waiting could use a free slot (_dispatch runs whenever one frees), so
        # taking one now passes no one
        got = self._choose(want)
        return None if got is None else self._take(*got, want)

    async def _wait(self, want: Want) -> Given:
        fut: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(want, fut)
        self._waiters.append(waiter)
        try:
            slot, kind = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release(fut.result()[0])  # given just as it was cancelled: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return self._take(slot, kind, want)

    def _release(self, slot: int) -> None:
        self._free.add(slot)
        self._dispatch()

    def _dispatch(self) -> None:
        """Free slots to waiters, earliest first, each the best free slot it can use."""
        for waiter in list(self._waiters):
            if not self._free:
                return
            if waiter.future.done():
                continue
            got = self._choose(waiter.want)
            if got is not None:
                # reserved for this waiter: _wait records it when the waiter resumes
                self._free.discard(got[0])
                waiter.future.set_result(got)

    async def _release_confirmed(self, slot: int) -> None:
        try:
            await self.confirm(slot)  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose a slot to a bug in the check
            log.exception("checking that engine slot %d is idle failed", slot)
        self._release(slot)

    def _gauges(self) -> None:
        self.m.queue_depth.set(self.waiting)
        self.m.in_flight.set(self.running)
