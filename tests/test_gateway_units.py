"""The gateway's pure parts: the SSE watcher, the admission queue, the config file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from builder.gateway.app import Admission, QueueFull
from builder.gateway.config import Config, ConfigError, load_keys
from builder.gateway.metrics import Metrics
from builder.gateway.sse import StreamWatch


def _chunk(text: str | None, chat: bool = True) -> bytes:
    choice = {"delta": {"content": text}} if chat else {"text": text}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def test_stream_watch_counts_tokens_split_across_reads() -> None:
    stream = _chunk(None) + _chunk("Hel") + _chunk("lo") + _chunk("!") + b"data: [DONE]\n\n"
    w = StreamWatch(chat=True)
    for i in range(0, len(stream), 7):  # reads cut events anywhere
        w.feed(stream[i:i + 7])
    assert w.tokens == 3 and w.done and not w.error
    assert w.ttft is not None and w.ttft >= 0


def test_stream_watch_sees_an_error_event_and_a_missing_done() -> None:
    w = StreamWatch(chat=False)
    w.feed(_chunk("a", chat=False) + b'data: {"error": {"message": "x"}}\n\n')
    assert w.tokens == 1 and w.error and not w.done


def test_admission_queues_up_to_the_limit_then_refuses() -> None:
    async def scenario() -> list[str]:
        adm = Admission(slots=1, max_queue=1, metrics=Metrics())
        order: list[str] = []
        release = asyncio.Event()

        async def job(name: str) -> None:
            async with adm.slot():
                order.append(name)
                await release.wait()

        first = asyncio.ensure_future(job("first"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(job("second"))  # waits
        await asyncio.sleep(0)
        assert adm.waiting == 1
        with pytest.raises(QueueFull):
            async with adm.slot():
                pass
        assert adm.retry_after() >= 1
        release.set()
        await asyncio.gather(first, second)
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> int:
        adm = Admission(slots=1, max_queue=4, metrics=Metrics())
        hold = asyncio.Event()

        async def holder() -> None:
            async with adm.slot():
                await hold.wait()

        async def waiter() -> None:
            async with adm.slot():
                pass

        h = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        w = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        w.cancel()  # the client went away while queued
        await asyncio.sleep(0)
        hold.set()
        await h
        return adm.waiting

    assert asyncio.run(scenario()) == 0


@pytest.mark.parametrize(("content", "message"), [
    ("{", "not JSON"),
    ('{"listen_port": 1}', "model_id: missing"),
    ('{"model_id": "m", "slots": "2"}', "slots: expected int"),
    ('{"model_id": "m", "slots": 0}', "slots: must be at least 1"),
    ('{"model_id": "m", "tls_cert": "/c"}', "give both or neither"),
])
def test_config_errors_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "gateway.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Config.load(f)


def test_keys_file_skips_comments_and_must_hold_a_key(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# device key\nsk-edge-a\n\n sk-edge-b \n")
    assert load_keys(str(f)) == ["sk-edge-a", "sk-edge-b"]
    f.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no API key"):
        load_keys(str(f))
