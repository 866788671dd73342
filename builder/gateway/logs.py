"""Logging that a client cannot flood: aiohttp's and asyncio's records become one line
without a traceback, and each kind of line is written at most once per period with a
count of the ones held back. (asyncio logs every failed accept() with a traceback, and
aiohttp 3.8 every malformed request: at a few hundred connections a second, that is the
journal filling up.)"""

from __future__ import annotations

import asyncio
import logging
import time

PERIOD = 10.0  # seconds between two lines of the same kind
HTTP_LOG = logging.getLogger("edge_llm_gateway.http")  # aiohttp's server logger, ours


class Throttle(logging.Filter):
    """Per (logger, message template, level): the first record, then nothing for
    PERIOD seconds; the next one that passes says how many were held back. Records of
    other loggers than the gateway's own lose their traceback."""

    def __init__(self, period: float = PERIOD, own: str = "edge_llm_gateway") -> None:
        super().__init__()
        self.period = period
        self.own = own
        self._seen: dict[tuple[str, str, int], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.own:  # aiohttp, asyncio, and our http logger
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        key = (record.name, str(record.msg), record.levelno)
        now = time.monotonic()
        last, held = self._seen.get(key, (-self.period, 0))
        if now - last < self.period:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # templates are few; this only bounds the worst case
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} ({held} more like this in {self.period:.0f} s)"
            record.args = None
        return True


def setup(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    throttle = Throttle()
    for handler in logging.getLogger().handlers:
        handler.addFilter(throttle)


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """The event loop's exception handler: one throttled line per kind, no traceback.
    (The default handler logs a traceback per call, e.g. per accept() failing with
    EMFILE.)"""
    exc = context.get("exception")
    what = context.get("message", "event loop error")
    # the template names the kind, so a new kind of failure is never held back by another
    kind = what.replace("%", "%%") + (f": {type(exc).__name__}: %s" if exc else "")
    logging.getLogger("asyncio").error(kind, *((exc,) if exc else ()))
