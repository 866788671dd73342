"""The gateway's pure parts: the SSE watcher, the admission queue and slot affinity,
the config and keys files, the bounded JSON parser, the request validator (table-driven
and fuzzed with hypothesis), the log throttle and the connection cap."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.gateway import affinity, boundedjson, sse, validate
from builder.gateway.admission import Admission, QueueFull, Want
from builder.gateway.config import Config, ConfigError, load_keys
from builder.gateway.connections import BUSY, IDLE, WAITING, ConnectionPool
from builder.gateway.logs import Throttle
from builder.gateway.metrics import Metrics
from builder.gateway.sse import StreamWatch

LIM = validate.Limits(max_tokens=100, model_id="m", slots=2)
HI = [{"role": "user", "content": "hi"}]


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


# --- admission -----------------------------------------------------------------------

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


def test_a_place_is_claimed_before_the_slot_and_counts_against_the_queue() -> None:
    """Admission before the body: places (slots + max_queue) are claimed first, so no
    more than that many bodies are ever read."""
    async def scenario() -> None:
        adm = Admission(slots=1, max_queue=1, metrics=Metrics())
        async with adm.place(), adm.place():
            assert adm.running == 0 and adm.waiting == 2  # reading bodies, no slot yet
            with pytest.raises(QueueFull):
                async with adm.place():
                    pass
        assert adm.places == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def scenario() -> tuple[int, int]:
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
        async with adm.slot():  # the slot is free again
            pass
        return adm.waiting, adm.running

    assert asyncio.run(scenario()) == (0, 0)


# --- slot affinity ---------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are the kiosk's assistant. " * 40}


def _turns(first: str, n: int, system: dict | None = SYSTEM) -> list[dict]:
    """A conversation's messages as a client sends them at turn n (from 1)."""
    msgs = [system] if system else []
    for i in range(n):
        msgs.append({"role": "user", "content": f"{first} {i}"})
        if i < n - 1:
            msgs.append({"role": "assistant", "content": f"answer {i}"})
    return msgs


def _want(messages: list[dict], slot: int | None = None) -> Want:
    return Want(affinity.chat_digests({"messages": messages}), slot)


def _give(adm: Admission, want: Want) -> int:
    """A slot, taken and let go at once (as a finished request does)."""
    async def one() -> int:
        async with adm.slot(want) as place:
            return place.id
    return asyncio.run(one())


def test_each_conversation_comes_back_to_its_slot_even_with_a_shared_system_prompt() -> None:
    """llama-server alone gives a second conversation the slot of the first (both hold
    the system prompt), so each turn recomputes the other's history: the gateway keeps a
    conversation where its prefix is, and starts a new one in an unused slot."""
    adm = Admission(slots=2, max_queue=0, metrics=Metrics())
    a1 = _give(adm, _want(_turns("alpha", 1)))
    b1 = _give(adm, _want(_turns("beta", 1)))
    assert a1 != b1
    for n in range(2, 6):
        assert _give(adm, _want(_turns("beta", n))) == b1
        assert _give(adm, _want(_turns("alpha", n))) == a1


def test_a_third_conversation_takes_the_least_recently_used_slot() -> None:
    adm = Admission(slots=2, max_queue=0, metrics=Metrics())
    a = _give(adm, _want(_turns("alpha", 1)))
    b = _give(adm, _want(_turns("beta", 1)))
    assert _give(adm, _want(_turns("alpha", 2))) == a  # b's slot is now the older
    assert _give(adm, _want(_turns("gamma", 1))) == b
    assert _give(adm, _want(_turns("alpha", 3))) == a


@pytest.mark.parametrize(("later", "kind"), [
    (_turns("alpha", 3), affinity.CONTINUED),  # the next turn
    (_turns("alpha", 2), affinity.CONTINUED),  # the same turn again (regenerate)
    (_turns("alpha", 1), affinity.CONTINUED),  # a prefix of what the slot holds
    ([*_turns("alpha", 2)[:-1], {"role": "user", "content": "edited"}], affinity.OTHER),
    (_turns("beta", 2), affinity.OTHER),
    (_turns("alpha", 2, system={"role": "system", "content": "other"}), affinity.OTHER),
])
def test_what_counts_as_the_same_conversation(later: list[dict], kind: str) -> None:
    slot = affinity.SlotState(_want(_turns("alpha", 2)).digests, given=1)
    assert affinity.kind_of(affinity.rank(_want(later).digests, slot)) == kind


def test_tools_and_template_arguments_are_part_of_the_prefix() -> None:
    msgs = _turns("alpha", 1)
    tool = [{"type": "function", "function": {"name": "f"}}]
    plain = affinity.chat_digests({"messages": msgs})
    assert affinity.chat_digests({"messages": msgs, "tools": tool})[0] != plain[0]
    assert affinity.chat_digests({"messages": msgs, "chat_template_kwargs": {"x": 1}}
                                 )[0] != plain[0]
    assert affinity.chat_digests({"messages": msgs, "temperature": 0}) == plain


def test_one_keys_prefix_never_draws_another_keys_request_to_its_slot() -> None:
    """Key B sending a guess at key A's conversation (A's prefix and more) is not sent
    to A's slot, where the engine would compute only what B guessed wrong; a slot that
    another key (or nobody since the gateway started) had last is not the asker's own,
    so the engine is told not to reuse it."""
    a, b = affinity.key_id(b"sk-a"), affinity.key_id(b"sk-b")

    def give(adm: Admission, messages: list[dict], owner: bytes) -> tuple[int, str, bool]:
        async def one() -> tuple[int, str, bool]:
            async with adm.slot(Want(affinity.chat_digests({"messages": messages}),
                                     owner=owner)) as place:
                return place.id, place.kind, place.own
        return asyncio.run(one())

    two = Admission(slots=2, max_queue=0, metrics=Metrics())
    a_slot, kind, own = give(two, _turns("secret 4711", 1), a)
    assert kind == affinity.FRESH and not own
    b_slot, kind, own = give(two, _turns("secret 4711", 2), b)  # A's prefix and more
    assert b_slot != a_slot and kind == affinity.FRESH and not own
    assert give(two, _turns("secret 4711", 2), a) == (a_slot, affinity.CONTINUED, True)
    assert give(two, _turns("secret 4711", 3), b) == (b_slot, affinity.CONTINUED, True)
    one = Admission(slots=1, max_queue=0, metrics=Metrics())  # keys must share a slot
    give(one, _turns("secret 4711", 1), a)
    assert give(one, _turns("secret 4711", 2), b) == (0, affinity.OTHER, False)
    assert give(one, _turns("secret 4711", 3), a) == (0, affinity.OTHER, False)
    assert give(one, _turns("secret 4711", 4), a) == (0, affinity.CONTINUED, True)


def test_engine_internals_never_reach_the_client() -> None:
    """timings (cache_n, prompt_n), usage's cached token counts and prompt progress are
    removed from whole replies and from stream events however reads cut them; events
    without them pass byte for byte."""
    timings = {"cache_n": 40, "prompt_n": 3, "predicted_per_second": 9.5}
    usage = {"prompt_tokens": 43, "completion_tokens": 1, "total_tokens": 44,
             "prompt_tokens_details": {"cached_tokens": 40}}
    whole = {"choices": [{"message": {"content": "hi"}}], "usage": dict(usage),
             "timings": timings}
    assert sse.public(whole) and whole == {
        "choices": [{"message": {"content": "hi"}}],
        "usage": {"prompt_tokens": 43, "completion_tokens": 1, "total_tokens": 44}}
    assert not sse.public(whole) and not sse.public([1])
    plain = _chunk("Hel")
    events = (plain + b"data: " + json.dumps({"choices": [], "prompt_progress": {
        "total": 43, "cache": 40, "processed": 3}}).encode() + b"\n\n" + _chunk("lo")
        + b"data: " + json.dumps({"choices": [], "usage": usage, "timings": timings}
                                 ).encode() + b"\n\ndata: [DONE]\n\n")
    for step in (1, 7, len(events)):
        scrub, out = sse.Scrub(), b""
        for i in range(0, len(events), step):
            out += scrub.feed(events[i:i + step])
        out += scrub.flush()
        assert out.startswith(plain) and out.endswith(b"data: [DONE]\n\n")
        for word in (b"cache", b"timings", b"prompt_n", b"progress", b"details"):
            assert word not in out
        assert out.count(b'"prompt_tokens": 43') == 1
        watch = StreamWatch(chat=True)
        watch.feed(out)
        assert watch.tokens == 2 and watch.done


def test_a_growing_text_prompt_keeps_its_earlier_blocks() -> None:
    story = "Once upon a time " * 100
    first = affinity.completion_digests({"prompt": story})
    later = affinity.completion_digests({"prompt": story + "there was a dragon. " * 30})
    assert later[:len(first)] == first and len(later) > len(first)
    assert affinity.completion_digests({"prompt": [story]}) == first
    short = affinity.completion_digests({"prompt": "hi"})
    assert short != affinity.completion_digests({"prompt": "ho"}) and len(short) == 1
    tokens = affinity.completion_digests({"prompt": list(range(200))})
    assert affinity.completion_digests({"prompt": list(range(300))})[:len(tokens)] == tokens


def test_digests_stay_small_for_any_body() -> None:
    many = {"messages": [{"role": "user", "content": str(i)} for i in range(10_000)]}
    assert len(affinity.chat_digests(many)) == affinity.MAX_DIGESTS
    assert len(affinity.completion_digests({"prompt": "x" * (1 << 20)})) == \
        affinity.MAX_DIGESTS
    assert affinity.chat_digests({"messages": "not a list"})


def test_a_named_slot_is_never_given_to_two_requests_at_once() -> None:
    """llama-server handed a request for a busy slot saves that slot to its prompt cache
    and loads another prompt into it under the running generation: admission gives a
    slot to one request at a time, and whoever names a busy slot waits for it while the
    others take the free ones."""
    async def scenario() -> list[str]:
        adm = Admission(slots=2, max_queue=8, metrics=Metrics())
        holding: dict[int, int] = {0: 0, 1: 0}
        log: list[str] = []
        release = {name: asyncio.Event() for name in ("a", "b", "c", "d")}

        async def job(name: str, want: Want) -> None:
            async with adm.slot(want) as place:
                holding[place.id] += 1
                assert holding[place.id] == 1, f"slot {place.id} given twice"
                log.append(f"{name}@{place.id}")
                await release[name].wait()
                holding[place.id] -= 1

        a = asyncio.ensure_future(job("a", Want(slot=0)))
        await asyncio.sleep(0)
        b = asyncio.ensure_future(job("b", Want(slot=0)))  # waits for slot 0
        await asyncio.sleep(0)
        c = asyncio.ensure_future(job("c", _want(_turns("gamma", 1))))  # takes slot 1
        await asyncio.sleep(0)
        assert log == ["a@0", "c@1"] and adm.waiting == 1
        d = asyncio.ensure_future(job("d", _want(_turns("delta", 1))))  # waits: none free
        await asyncio.sleep(0)
        release["a"].set()  # slot 0 frees: b named it and came first
        await asyncio.sleep(0.01)
        assert log[-1] == "b@0"
        release["c"].set()  # slot 1 frees: d takes it
        await asyncio.sleep(0.01)
        assert log[-1] == "d@1"
        release["b"].set()
        release["d"].set()
        await asyncio.gather(a, b, c, d)
        return log

    assert asyncio.run(scenario()) == ["a@0", "c@1", "b@0", "d@1"]


def test_a_waiter_for_a_busy_slot_does_not_hold_up_the_queue_behind_it() -> None:
    async def scenario() -> list[str]:
        adm = Admission(slots=2, max_queue=8, metrics=Metrics())
        log: list[str] = []
        done = {n: asyncio.Event() for n in ("x", "y", "pinned", "later")}

        async def job(name: str, want: Want) -> None:
            async with adm.slot(want) as place:
                log.append(f"{name}@{place.id}")
                await done[name].wait()

        jobs = []
        for name, want in (("x", Want(slot=0)), ("y", Want(slot=1)),
                           ("pinned", Want(slot=0)), ("later", _want(_turns("z", 1)))):
            jobs.append(asyncio.ensure_future(job(name, want)))
            await asyncio.sleep(0)
        assert adm.waiting == 2
        done["y"].set()  # slot 1 frees: "pinned" came first but waits for slot 0
        await asyncio.sleep(0.01)
        assert log[-1] == "later@1"
        done["x"].set()
        await asyncio.sleep(0.01)
        assert log[-1] == "pinned@0"
        done["pinned"].set()
        done["later"].set()
        await asyncio.gather(*jobs)
        return log

    assert asyncio.run(scenario()) == ["x@0", "y@1", "later@1", "pinned@0"]


def test_a_slot_whose_request_was_cut_off_waits_for_the_engine_to_let_it_go() -> None:
    """A request that ended before its reply (the client left) may still run in the
    engine: its slot is given out again only after confirm() says the engine is done."""
    async def scenario() -> list[str]:
        engine_done = asyncio.Event()
        events: list[str] = []

        async def confirm(slot: int) -> None:
            events.append(f"confirm {slot}")
            await engine_done.wait()

        adm = Admission(slots=1, max_queue=4, metrics=Metrics(), confirm=confirm)
        async with adm.slot(Want()) as place:
            place.sent = True  # sent, never read to the end
        assert adm.free == 0  # not free yet

        async def next_one() -> None:
            async with adm.slot(Want()) as place:
                events.append(f"given {place.id}")
                place.sent = place.finished = True

        waiter = asyncio.ensure_future(next_one())
        await asyncio.sleep(0.01)
        assert events == ["confirm 0"] and adm.waiting == 1
        engine_done.set()
        await waiter
        assert adm.free == 1  # read to the end: free at once, no confirm
        return events

    assert asyncio.run(scenario()) == ["confirm 0", "given 0"]


# --- config and keys -----------------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    ("{", "not JSON"),
    ('{"listen_port": 1}', "model_id: missing"),
    ('{"model_id": "m", "slots": "2"}', "slots: expected int"),
    ('{"model_id": "m", "slots": 0}', "slots: must be at least 1"),
    ('{"model_id": "m", "tls_cert": "/c"}', "give both or neither"),
    ('{"model_id": "m", "header_timeout": 0}', "header_timeout: must be more than 0"),
    ('{"model_id": "m", "max_connections": 0}', "max_connections: must be at least 1"),
    ('{"model_id": "m", "metrics_auth": "no"}', "metrics_auth: expected bool"),
    ('{"model_id": "m", "slot_affinity": 1}', "slot_affinity: expected bool"),
])
def test_config_errors_name_the_field(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "gateway.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Config.load(f)


def test_an_old_config_gets_safe_defaults_for_the_new_settings(tmp_path: Path) -> None:
    f = tmp_path / "gateway.json"
    f.write_text('{"model_id": "m", "max_queue": 4}')
    cfg = Config.load(f)
    assert cfg.metrics_auth and cfg.max_connections == 1024 and cfg.header_timeout == 10
    assert cfg.slot_affinity


@pytest.mark.parametrize(("text", "keys"), [
    ("# device key\nsk-edge-a\n\n sk-edge-b \n", ["sk-edge-a", "sk-edge-b"]),
    ("sk-edge-a\r\nsk-edge-b\r\n", ["sk-edge-a", "sk-edge-b"]),
    ("\ufeffsk-edge-a\n", ["sk-edge-a"]),  # Notepad's byte order mark
    ("sk-edge-a   # laptop\n\t sk-edge-b\t\n", ["sk-edge-a", "sk-edge-b"]),
], ids=["comments-blank-spaces", "crlf", "bom", "inline-comment-tabs"])
def test_keys_files_as_people_write_them(tmp_path: Path, text: str, keys: list[str]) -> None:
    f = tmp_path / "keys"
    f.write_bytes(text.encode())
    assert load_keys(str(f)) == keys


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no API key"),
    (b"# nothing\n\n  \r\n", "no API key"),
    (b"\xff\xfe s\x00k\x00", "not UTF-8"),
    (b"Bearer sk-edge-a\n", "line 1: one key per line"),
])
def test_a_keys_file_without_a_usable_key_is_one_clear_error(tmp_path: Path, data: bytes,
                                                            message: str) -> None:
    f = tmp_path / "keys"
    f.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_keys(str(f))


# --- bounded JSON --------------------------------------------------------------------

def test_measure_counts_values_and_depth_but_not_brackets_in_strings() -> None:
    # 6 values; the count is an upper bound (containers + separators + 1)
    assert boundedjson.measure(b'{"a": [1, 2, {"b": "[[[{{{"}]}') == (8, 3)
    assert boundedjson.measure(b'"just a string with \\" and [ inside"') == (1, 0)


@pytest.mark.parametrize(("raw", "code"), [
    (b"[" * 100 + b"]" * 100, "json_too_deep"),
    (b"[" * 200_000, "json_too_deep"),  # would overflow the parser's stack
    (b"[" + b"{}," * 5000 + b"{}]", "json_too_large"),
    (b'{"a": NaN}', "invalid_json"),
    (b'{"a": 1e999}', "invalid_json"),
    (b'{"a": "\xff"}', "invalid_json"),
    (b'{"a": ', "invalid_json"),
    (b"1" * 5000, "invalid_json"),  # Python's int digit limit
])
def test_parse_refuses_what_would_cost_memory_or_crash(raw: bytes, code: str) -> None:
    got = boundedjson.parse(raw, max_depth=64, max_values=1000)
    assert isinstance(got, boundedjson.JsonError) and got.code == code


def test_a_max_size_body_of_tiny_objects_is_refused_before_parsing() -> None:
    raw = b'{"messages": [], "x": [' + b",".join([b"{}"] * 340_000) + b"]}"
    got = boundedjson.parse(raw, max_depth=64, max_values=100_000)
    assert isinstance(got, boundedjson.JsonError) and got.code == "json_too_large"


# --- the validator ------------------------------------------------------------------

def _chat(**fields) -> dict:
    return {"messages": HI, **fields}


def _schema(properties: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "string"}
                                             for i in range(properties)}}


@pytest.mark.parametrize(("body", "param", "status"), [
    (_chat(model=["m"]), "model", 400),
    (_chat(model={"id": "m"}), "model", 400),
    (_chat(model="gpt-4o"), "model", 404),
    (_chat(stream="false"), "stream", 400),
    (_chat(stream=False, stream_options={"include_usage": True}), "stream_options", 400),
    (_chat(temperature=2.5), "temperature", 400),
    (_chat(temperature="0.5"), "temperature", 400),
    (_chat(top_p=1.5), "top_p", 400),
    (_chat(presence_penalty=-3), "presence_penalty", 400),
    (_chat(frequency_penalty=True), "frequency_penalty", 400),
    (_chat(n=2), "n", 400),
    (_chat(max_tokens=0), "max_tokens", 400),
    (_chat(max_completion_tokens=101), "max_completion_tokens", 400),
    (_chat(n_predict=-1), "n_predict", 400),
    (_chat(max_tokens=1.5), "max_tokens", 400),
    (_chat(seed="1"), "seed", 400),
    (_chat(stop=["a", "b", "c", "d", "e"]), "stop", 400),
    (_chat(stop=[1]), "stop[0]", 400),
    (_chat(logprobs=1), "logprobs", 400),
    (_chat(top_logprobs=5), "top_logprobs", 400),
    (_chat(logprobs=True, top_logprobs=21), "top_logprobs", 400),
    (_chat(response_format={"type": "xml"}), "response_format.type", 400),
    (_chat(response_format={"type": "json_schema"}), "response_format.json_schema", 400),
    (_chat(response_format={"type": "json_schema", "json_schema": {"name": "a b"}}),
     "response_format.json_schema.name", 400),
    (_chat(tools=[]), "tools", 400),
    (_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "tools[0].function.parameters", 400),
    (_chat(tool_choice="auto"), "tool_choice", 400),
    (_chat(tool_choice="always", tools=[{"type": "function", "function": {"name": "f"}}]),
     "tool_choice", 400),
    (_chat(grammar="root ::= \"a\"", json_schema={}), "grammar", 400),
    (_chat(grammar="root ::= " + "(" * 65 + '"a"' + ")" * 65), "grammar", 400),
    (_chat(grammar="root ::= " + '"a" | ' * 6000 + '"b"'), "grammar", 400),
    (_chat(json_schema=_schema(257)), "json_schema.properties", 400),
    (_chat(json_schema={"type": "array", "items": _schema(300)}),
     "json_schema.items.properties", 400),
    (_chat(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": _schema(257)}}),
     "response_format.json_schema.schema.properties", 400),
    (_chat(tools=[{"type": "function", "function": {"name": "f", "parameters": _schema(257)}}]),
     "tools[0].function.parameters.properties", 400),
    (_chat(tools=[{"type": "function", "function": {"name": f"f{i}", "parameters": _schema(
        256)}} for i in range(9)]), "tools", 400),  # 2,304 properties in all
    (_chat(chat_format=3), "chat_format", 400),  # llama-server's internal field
    (_chat(temprature=0.5), "temprature", 400),
    (_chat(prompt="x"), "prompt", 400),
    (_chat(mirostat=3), "mirostat", 400),
    (_chat(top_k=-1), "top_k", 400),
    (_chat(id_slot=2), "id_slot", 400),
    (_chat(metadata={"a": 1}), "metadata.a", 400),
    (_chat(modalities=["text", "audio"]), "modalities[1]", 400),
    (_chat(functions=[]), "functions", 400),
    (_chat(extra={"big": 2**70}), "extra.big", 400),  # the 64-bit check comes first
    ({"messages": []}, "messages", 400),
    ({"messages": "hi"}, "messages", 400),
    ({}, "messages", 400),
    ({"messages": [{"content": "hi"}]}, "messages[0].role", 400),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", 400),
    ({"messages": [{"role": "function", "content": "hi"}]}, "messages[0].role", 400),
    ({"messages": [{"role": "user"}]}, "messages[0].content", 400),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", 400),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", 400),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", 400),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].type", 400),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
     "messages[0].content[0].text", 400),
    ({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
     "messages[0].tool_calls", 400),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id", 400),
    ({"messages": [{"role": "assistant"}]}, "messages[0].content", 400),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": {}}}]}]},
     "messages[0].tool_calls[0].function.arguments", 400),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content", 400),
    ([1, 2], None, 400),
    ("hello", None, 400),
])
def test_chat_mistakes_are_4xx_naming_the_field(body, param: str | None, status: int) -> None:
    got = validate.chat(body, LIM)
    assert isinstance(got, validate.Invalid), got
    assert (got.param, got.status) == (param, status), got.message
    assert got.message


@pytest.mark.parametrize("body", [
    _chat(),
    _chat(model="m", stream=True, stream_options={"include_usage": True}, temperature=0,
          top_p=1, seed=-1, stop="\n", max_tokens=100, n=1, user="u", logprobs=True,
          top_logprobs=3, presence_penalty=-2, frequency_penalty=2, logit_bias={"15": -100},
          response_format={"type": "json_object"}),
    _chat(response_format={"type": "json_schema", "json_schema": {
        "name": "city", "schema": {"type": "object"}, "strict": True}}),
    _chat(tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False),
    {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Really."}]},
        {"role": "user", "content": "Weather?", "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny.", "refusal": None}]},
    _chat(top_k=40, min_p=0.05, typical_p=1, repeat_penalty=1.1, repeat_last_n=64,
          ignore_eos=True, cache_prompt=False, n_probs=2, mirostat=2, mirostat_tau=5,
          mirostat_eta=0.1, grammar="root ::= \"a\"", samplers=["top_k", "temperature"],
          id_slot=1, return_tokens=True, timings_per_token=True, dry_multiplier=0.8,
          dry_base=1.75, dry_allowed_length=2, dry_penalty_last_n=-0 or 0,
          dry_sequence_breakers=["\n"], n_predict=10),
    _chat(temperature=None, stop=None, max_tokens=None),  # null means the default
    _chat(grammar="# nested 64 deep; what literals, classes and comments hold is text\n"
          "root ::= " + "(" * 64 + '"((((" [(((] # ((((\n' + ")" * 64),
    _chat(json_schema={"type": "array", "items": _schema(256)},
          tools=[{"type": "function", "function": {"name": f"f{i}", "parameters": _schema(
              256)}} for i in range(7)]),  # 2,048 properties in all
], ids=["minimal", "openai-fields", "json-schema", "tools", "roles", "llama-fields",
        "nulls", "grammar-at-the-limits", "schemas-at-the-limits"])
def test_valid_chat_requests_pass(body: dict) -> None:
    got = validate.chat(body, LIM)
    assert isinstance(got, dict), got
    assert not [k for k, v in got.items() if v is None]
    assert any(k in got for k in ("max_tokens", "max_completion_tokens", "n_predict"))


def test_chat_fills_in_the_token_limit() -> None:
    assert validate.chat(_chat(), LIM) == {"messages": HI, "max_tokens": 100}


@pytest.mark.parametrize(("prompt", "sent"), [
    ("Once", "Once"),
    (["Once"], "Once"),
    ([1, 2, 3], [1, 2, 3]),
    ([[1, 2, 3]], [1, 2, 3]),
])
def test_one_prompt_passes_unwrapped(prompt, sent) -> None:
    assert validate.completion({"prompt": prompt}, LIM)["prompt"] == sent


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": ["a", 1]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt[0]"),
    ({"prompt": [-1]}, "prompt[0]"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": {"text": "a"}}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "a", "echo": True}, "echo"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
    ({"prompt": "a", "suffix": "b"}, "suffix"),
    ({"prompt": "a", "logprobs": 6}, "logprobs"),
    ({"prompt": "a", "messages": HI}, "messages"),
])
def test_completion_mistakes_name_the_field(body: dict, param: str) -> None:
    got = validate.completion(body, LIM)
    assert isinstance(got, validate.Invalid) and got.param == param, got


def test_completion_drops_the_fields_the_engine_would_fail_on() -> None:
    got = validate.completion({"prompt": "a", "echo": False, "best_of": 1, "suffix": None,
                               "logprobs": 2}, LIM)
    assert got == {"prompt": "a", "logprobs": 2, "max_tokens": 100}


# --- the validator under hypothesis ---------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                 max_size=4),
    max_leaves=20)
FIELDS = sorted({*validate._CHAT, *validate._COMPLETION, *validate.EXTENSION_FIELDS, "bogus"})
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "x"])},
    optional={"content": st.one_of(st.text(), st.none(), JSON,
                                   st.lists(st.fixed_dictionaries(
                                       {"type": st.sampled_from(["text", "image_url"])},
                                       optional={"text": st.text() | JSON}), max_size=2)),
              "tool_call_id": st.text() | JSON, "name": st.text() | JSON,
              "tool_calls": JSON})
# requests close enough to valid that most checks are reached, not just the first
REQUEST = st.fixed_dictionaries(
    {}, optional={"messages": st.lists(MESSAGE, max_size=3) | JSON,
                  "prompt": st.text() | st.lists(st.integers(-1, 2**33), max_size=3) | JSON,
                  **{f: JSON | st.integers() | st.floats(allow_nan=False) | st.booleans()
                     for f in FIELDS}})


SCALAR = (st.none() | st.booleans() | st.integers(-3, 3000) | st.floats(-3, 3)
          | st.text(max_size=5) | st.sampled_from(["auto", "text", "json_object", "user"]))
# a valid request with up to three fields set to near-miss values
MUTATED = st.builds(
    lambda base, fields: {**base, **fields},
    st.sampled_from([{"messages": HI}, {"prompt": "Once"}]),
    st.dictionaries(st.sampled_from(FIELDS), SCALAR | st.lists(SCALAR, max_size=5) | JSON,
                    max_size=3))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON | REQUEST | MUTATED)
def test_the_validator_never_raises_and_answers_4xx_or_a_request(body) -> None:
    for check in (validate.chat, validate.completion):
        got = check(body, LIM)
        if isinstance(got, validate.Invalid):
            assert 400 <= got.status < 500 and got.message
        else:
            assert isinstance(got, dict)
            json.dumps(got, allow_nan=False).encode("utf-8")  # what goes to the engine
            assert got.get("max_tokens", 1) <= LIM.max_tokens


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_the_parser_never_raises(raw: bytes) -> None:
    boundedjson.parse(raw, max_depth=8, max_values=50)


# --- logging and connections ---------------------------------------------------------

def test_throttle_passes_one_line_per_kind_per_period_without_tracebacks() -> None:
    throttle = Throttle(period=60)
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        import sys
        exc = sys.exc_info()
    records = [logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "socket.accept() out of system resource", None, exc)
               for _ in range(1000)]
    passed = [r for r in records if throttle.filter(r)]
    assert len(passed) == 1 and passed[0].exc_info is None


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.written = b""

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted


class _Inner(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        pass


def test_the_cap_evicts_the_longest_waiting_connection_never_a_busy_one() -> None:
    async def scenario() -> None:
        pool = ConnectionPool(_Inner, max_connections=3, header_timeout=60,
                              idle_timeout=60)
        conns = []
        for _ in range(3):
            c = pool()
            c.connection_made(_Transport())
            conns.append(c)
        pool.started(conns[0].inner)  # a request runs on the oldest
        assert conns[0].state == BUSY and conns[1].state == WAITING
        newcomer = pool()
        newcomer.connection_made(_Transport())
        assert conns[1].transport.aborted and not conns[0].transport.aborted
        pool.finished(conns[0].inner)
        assert conns[0].state == IDLE
        pool.started(conns[2].inner)
        pool.started(newcomer.inner)
        third = pool()
        third.connection_made(_Transport())  # evicts the idle one
        assert conns[0].transport.aborted
        pool.started(third.inner)
        refused = pool()
        t = _Transport()
        refused.connection_made(t)  # all busy: a quick 503, closed
        assert t.written.startswith(b"HTTP/1.1 503") and t.aborted
        pool.stop()

    asyncio.run(scenario())


def test_deadlines_close_waiting_and_idle_connections() -> None:
    async def scenario() -> list[str]:
        closed: list[str] = []
        pool = ConnectionPool(_Inner, max_connections=10, header_timeout=0.2,
                              idle_timeout=0.2, on_close=closed.append)
        waiting, idle, busy = pool(), pool(), pool()
        for c in (waiting, idle, busy):
            c.connection_made(_Transport())
        pool.started(idle.inner)
        pool.finished(idle.inner)
        pool.started(busy.inner)
        await asyncio.sleep(0.6)
        assert waiting.transport.aborted and idle.transport.aborted
        assert not busy.transport.aborted
        pool.stop()
        return sorted(closed)

    assert asyncio.run(scenario()) == ["header_timeout", "idle_timeout"]
