"""The gateway (builder/gateway/) in front of a real llama-server serving SmolLM2-135M:
the official openai client, auth, limits, the queue, disconnects, an engine that dies
mid-stream, metrics, TLS, and the chat page in Debian's headless Chromium."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import self_signed
from harness.gateway_process import GatewayProcess
from harness.llama_server import LlamaServer, free_port

pytestmark = pytest.mark.slow

MODEL_ID = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _engine(x86_engine, model: Path, log: Path, port: int | None = None) -> LlamaServer:
    port = port or free_port()
    return LlamaServer(x86_engine.tool("llama-server"), [
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--ctx-size",
        "2048", "--parallel", "1", "--threads", "2", "--metrics", "--alias", MODEL_ID],
        log, port=port)


@pytest.fixture(scope="module")
def engine(x86_engine, smollm2_gguf: Path, tmp_path_factory):
    with _engine(x86_engine, smollm2_gguf, tmp_path_factory.mktemp("engine") / "log") as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(engine: LlamaServer, tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("gw"), engine.url, MODEL_ID, slots=1,
                        max_queue=1, max_tokens=1000, max_request_bytes=64 * 1024,
                        appliance={"profile": "test", "quant": "Q4_1",
                                   "engine": "llama.cpp", "release_id": "rtest"}) as g:
        yield g


@pytest.fixture
def client(gw: GatewayProcess):
    import openai

    return openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0,
                         timeout=120)


def _engine_tokens_predicted(engine: LlamaServer) -> float:
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(engine.url + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("llamacpp:tokens_predicted_total"):
                return float(line.split()[-1])
    raise AssertionError("llama-server /metrics has no tokens_predicted_total")


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _post(gw: GatewayProcess, path: str, body: bytes | dict, key: str | None = None):
    """(status, headers, parsed JSON) of a POST sent byte for byte."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key != "":
        headers["Authorization"] = f"Bearer {key or gw.key}"
    conn.request("POST", path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, r.headers, json.loads(payload) if payload else None


def _open_stream(gw: GatewayProcess, body: dict) -> tuple[http.client.HTTPConnection,
                                                         http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=120)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True}),
                 headers={"Authorization": f"Bearer {gw.key}",
                          "Content-Type": "application/json"})
    return conn, conn.getresponse()


LONG = {"messages": QUESTION, "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


# --- the official client ----------------------------------------------------------------

def test_openai_client_chat_matches_the_engine_answer(client, engine: LlamaServer) -> None:
    direct = engine.post("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 24,
                                                  "temperature": 0, "seed": 1})
    r = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=24,
                                       temperature=0, seed=1)
    assert r.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert r.usage.completion_tokens == direct["usage"]["completion_tokens"] >= 1


def test_openai_client_streaming_yields_the_same_text_in_pieces(client) -> None:
    whole = client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=24,
                                           temperature=0, seed=1).choices[0].message.content
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model=MODEL_ID, messages=QUESTION, max_tokens=24, temperature=0, seed=1,
        stream=True) if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert "".join(pieces) == whole


def test_openai_client_text_completion_and_models(client) -> None:
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    r = client.completions.create(model=MODEL_ID, prompt="The capital of France is",
                                  max_tokens=8, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0,
        stream=True))
    assert streamed == r.choices[0].text


def test_json_mode_is_passed_to_the_engine(client) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, max_tokens=64, temperature=0,
        messages=[{"role": "user", "content": "Give a JSON object with a key city."}],
        response_format={"type": "json_object"})
    json.loads(r.choices[0].message.content)  # the engine's grammar made it valid JSON


# --- auth and bad input --------------------------------------------------------------

def test_v1_needs_the_key_but_health_and_the_page_do_not(gw: GatewayProcess) -> None:
    import openai

    assert gw.get("/v1/models", key="")[0] == 401
    status, _, body = _post(gw, "/v1/chat/completions", {"messages": QUESTION}, key="")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-edge-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert gw.get("/health", key="") == (200, b'{"status": "ok"}')
    status, page = gw.get("/", key="")
    assert status == 200 and b"<title>edge-llm chat</title>" in page
    assert gw.get("/static/vendor/marked.umd.js", key="")[0] == 200


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"messages": [', 400, None),
    (b'["not", "an", "object"]', 400, None),
    ({"model": "gpt-4o", "messages": QUESTION}, 404, "model"),
    ({"messages": QUESTION, "max_tokens": -5}, 400, "max_tokens"),
    ({"messages": QUESTION, "max_tokens": 100000}, 400, "max_tokens"),
    ({"messages": []}, 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 70000}]}).encode(), 413,
     None),
], ids=["malformed-json", "not-an-object", "unknown-model", "negative-max-tokens",
        "max-tokens-over-limit", "no-messages", "oversized-body"])
def test_bad_requests_get_an_openai_error_object(gw: GatewayProcess, body, status,
                                                 param) -> None:
    got, _, err = _post(gw, "/v1/chat/completions", body)
    assert got == status
    assert set(err["error"]) == {"message", "type", "param", "code"}
    assert err["error"]["message"] and err["error"]["param"] == param


def test_unknown_model_is_not_found_for_the_openai_client(client) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist on this appliance"):
        client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=4)


# --- admission, disconnects ----------------------------------------------------------

def test_full_queue_gets_429_and_a_disconnect_frees_the_slot(gw: GatewayProcess,
                                                             engine: LlamaServer) -> None:
    before = _engine_tokens_predicted(engine)
    conn, first = _open_stream(gw, LONG)  # holds the only slot
    assert first.status == 200
    first.readline()
    queued: dict = {}

    def second() -> None:
        queued["status"], _, queued["body"] = _post(
            gw, "/v1/chat/completions", {"messages": QUESTION, "max_tokens": 4})

    t = threading.Thread(target=second)
    t.start()
    _wait(lambda: gw.metric("queue_depth") == 1, "the second request to queue")
    status, headers, err = _post(gw, "/v1/chat/completions", {"messages": QUESTION})
    assert status == 429 and err["error"]["code"] == "queue_full"
    assert int(headers["Retry-After"]) >= 1
    # the first client goes away: its generation stops and the queued request runs
    first.close()
    conn.close()
    t.join(timeout=120)
    assert queued["status"] == 200
    _wait(lambda: gw.metric("in_flight") == 0, "the slots to empty")
    generated = _engine_tokens_predicted(engine) - before - 4
    assert generated < LONG["max_tokens"], "the abandoned generation ran to the end"
    assert gw.metric("client_disconnects_total") >= 1
    assert gw.metric("queue_rejections_total") >= 1


def test_metrics_count_requests_and_time_tokens(gw: GatewayProcess, client) -> None:
    list(client.chat.completions.create(model=MODEL_ID, messages=QUESTION, max_tokens=8,
                                        stream=True))
    ok = 'route="/v1/chat/completions",status="200"'
    assert gw.metric("requests_total", ok) >= 1
    assert gw.metric("time_to_first_token_seconds_count") >= 1
    assert gw.metric("decode_tokens_per_second_count") >= 1
    assert gw.metric("engine_up") == 1
    body = gw.get("/metrics")[1].decode()
    rss = next(ln for ln in body.splitlines() if ln.startswith("process_resident_memory"))
    assert float(rss.split()[-1]) > 0


# --- slot affinity: the next turn finds its prefix ------------------------------------

WORDS = ("river stone cloud house paper music garden window light table market bridge "
         "winter summer forest engine ticket letter").split()


def _words(seed: int, n: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _two_slots(x86_engine, model: Path, log: Path) -> LlamaServer:
    """llama-server with 2 slots and its defaults otherwise (a host prompt cache, the
    similarity slot choice)."""
    port = free_port()
    return LlamaServer(x86_engine.tool("llama-server"), [
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--ctx-size",
        str(2 * 8192), "--parallel", "2", "--threads", "2", "--metrics", "--alias",
        MODEL_ID], log, port=port)


def _interleaved(port: int, key: str | None, systems: list[str], turns: int,
                 engine: LlamaServer) -> list[list]:
    """Conversations taking turns (one turn of each, then the next round): for each
    conversation, per turn, (tokens the engine reused, tokens of the prompt), as the
    engine counts them (the gateway keeps its counts from clients)."""
    chats = [[{"role": "system", "content": text}] for text in systems]
    seen: list[list] = [[] for _ in chats]
    for turn in range(turns):
        for i, messages in enumerate(chats):
            messages.append({"role": "user", "content": f"{turn}: {_words(i * 100 + turn, 12)}"})
            computed = engine.counter("prompt_tokens_total")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            conn.request("POST", "/v1/chat/completions", json.dumps({
                "messages": messages, "max_tokens": 4, "temperature": 0}),
                {"Content-Type": "application/json",
                 **({"Authorization": f"Bearer {key}"} if key else {})})
            reply = json.loads(conn.getresponse().read())
            conn.close()
            computed = engine.counter("prompt_tokens_total") - computed
            prompt = reply["usage"]["prompt_tokens"]
            seen[i].append((prompt - computed, prompt))
            messages.append({"role": "assistant",
                             "content": reply["choices"][0]["message"]["content"] or ""})
    return seen


def _recomputed(seen: list[list]) -> list[tuple[int, int, int]]:
    """(conversation, turn, tokens of its previous prompt computed again) wherever a
    turn did not find the whole previous prompt in the engine (2 tokens of slack for
    where the template's tokens meet the reply's)."""
    return [(i, t, prev - cached) for i, turns in enumerate(seen)
            for t, ((cached, _), (_, prev)) in enumerate(zip(turns[1:], turns, strict=False), 1)
            if cached < prev - 2]


def test_each_turn_reuses_the_previous_prompt_despite_a_shared_system_prompt(
        x86_engine, tiny_q4: Path, tmp_path: Path) -> None:
    """Two conversations with one long system prompt, taking turns on a 2-slot engine.
    llama-server alone puts the second conversation in the first one's slot (it shares
    the most with it) and from then on each turn recomputes its whole history; through
    the gateway, each conversation keeps its slot and each turn computes only its new
    message."""
    systems = [_words(1, 700)] * 2
    with _two_slots(x86_engine, tiny_q4, tmp_path / "direct.log") as srv:
        alone = _interleaved(srv.port, None, systems, turns=4, engine=srv)
    with _two_slots(x86_engine, tiny_q4, tmp_path / "engine.log") as srv, \
            GatewayProcess(tmp_path / "gw", srv.url, MODEL_ID, slots=2) as gw:
        pinned = _interleaved(gw.port, gw.key, systems, turns=4, engine=srv)
        assert gw.metric("slot_assignments_total", 'kind="continued"') == 6
    assert _recomputed(pinned) == []
    assert _recomputed(alone), "llama-server alone kept every conversation's prefix: " \
        "its slot choice changed, see builder/gateway/affinity.py"


def test_more_conversations_than_slots_come_back_from_the_prompt_cache(
        x86_engine, tiny_q4: Path, tmp_path: Path) -> None:
    """Three conversations with their own long system prompts on 2 slots: a turn whose
    slot now holds another conversation goes to the least recently used slot, and
    llama-server loads the conversation from its host prompt cache (--cache-ram)."""
    systems = [f"Conversation {i}. {_words(10 + i, 700)}" for i in range(3)]
    with _two_slots(x86_engine, tiny_q4, tmp_path / "engine.log") as srv, \
            GatewayProcess(tmp_path / "gw", srv.url, MODEL_ID, slots=2) as gw:
        seen = _interleaved(gw.port, gw.key, systems, turns=3, engine=srv)
    assert all(turns[0][0] < 100 < 1000 < turns[0][1] for turns in seen)  # turn 1: computed
    assert _recomputed(seen) == []


def test_a_client_that_drops_its_oldest_turn_keeps_the_rest_of_the_cache(
        x86_engine, tiny_q4: Path, tmp_path: Path) -> None:
    """The appliance's engine settings (--cache-reuse): when a client trims the history
    to fit the context, the turns after the cut are shifted in the KV cache, not
    computed again."""
    from builder.engines.llama_cpp.server import server_args
    from builder.schema import Runtime

    port = free_port()
    args = server_args(Runtime(context_length=8192), str(tiny_q4), port=port, threads=2,
                       alias=MODEL_ID)
    history = [{"role": "system", "content": _words(1, 100)}]
    for i in range(4):
        history += [{"role": "user", "content": _words(10 + i, 80)},
                    {"role": "assistant", "content": _words(20 + i, 80)}]
    with LlamaServer(x86_engine.tool("llama-server"), args, tmp_path / "engine.log",
                     port=port) as srv, \
            GatewayProcess(tmp_path / "gw", srv.url, MODEL_ID, slots=1) as gw:
        def computed(messages: list[dict]) -> float:
            """Prompt tokens the engine computed for this request (not found cached)."""
            before = srv.counter("prompt_tokens_total")
            status, _, reply = _post(gw, "/v1/chat/completions", {
                "messages": [*messages, {"role": "user", "content": "and now?"}],
                "max_tokens": 2})
            assert status == 200, reply
            return srv.counter("prompt_tokens_total") - before

        whole = computed(history)
        trimmed = computed(history[:1] + history[3:])  # the oldest question and answer go
    assert trimmed < whole / 10, (whole, trimmed)


# --- the engine dies -----------------------------------------------------------------

def test_engine_killed_mid_stream_gives_a_clean_error_then_recovers(
        x86_engine, smollm2_gguf: Path, tmp_path: Path) -> None:
    import openai

    eng = _engine(x86_engine, smollm2_gguf, tmp_path / "engine.log")
    eng.start()
    try:
        with GatewayProcess(tmp_path / "gw", eng.url, MODEL_ID, max_tokens=1000) as gw:
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=gw.key, max_retries=0)
            stream = client.chat.completions.create(model=MODEL_ID, stream=True, **{
                k: v for k, v in LONG.items() if k != "ignore_eos"},
                extra_body={"ignore_eos": True})
            got = 0
            with pytest.raises(openai.APIError, match="engine stopped mid-reply"):
                for _chunk in stream:
                    got += 1
                    if got == 3:
                        eng.proc.kill()
            # while it is down: 503 with a JSON error at once, not a hang
            status, headers, err = _post(gw, "/v1/chat/completions",
                                         {"messages": QUESTION, "max_tokens": 4})
            assert status == 503 and err["error"]["code"] == "engine_unavailable"
            assert headers["Retry-After"]
            assert gw.get("/health", key="")[0] == 503
            eng.start()  # what systemd's Restart=on-failure does on the device
            r = client.chat.completions.create(model=MODEL_ID, messages=QUESTION,
                                               max_tokens=4)
            assert r.choices[0].message.content
            assert gw.metric("stream_errors_total") == 1
    finally:
        eng.stop()


# --- TLS and configuration ----------------------------------------------------------

def test_tls_serves_https_with_the_given_certificate(engine: LlamaServer,
                                                     tmp_path: Path) -> None:
    import ssl
    import urllib.error
    import urllib.request

    cert, key = self_signed(tmp_path)
    with GatewayProcess(tmp_path / "gw", engine.url, MODEL_ID, tls_cert=str(cert),
                        tls_key=str(key)) as gw:
        assert gw.url.startswith("https://")
        req = urllib.request.Request(gw.url + "/v1/models",
                                     headers={"Authorization": f"Bearer {gw.key}"})
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            assert json.load(r)["data"][0]["id"] == MODEL_ID
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(gw.url + "/health", timeout=30)  # not trusted by default


def test_a_wrong_config_is_one_line_naming_the_field(tmp_path: Path) -> None:
    import sys

    cfg = tmp_path / "gateway.json"
    cfg.write_text(json.dumps({"model_id": "m", "slot": 2}))
    r = subprocess.run([sys.executable, "-m", "builder.gateway", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert f"{cfg}: slot: unknown setting" in r.stderr


# --- the chat page ---------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are missing: "
                    "`builder doctor --install --stage test` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1100,800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_chat_page_streams_an_answer(browser, gw: GatewayProcess, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(gw.url + "/")
    # first visit: the page asks for the key, once
    key_input = wait.until(ec.visibility_of_element_located((By.ID, "key-input")))
    key_input.send_keys(gw.key, Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "appliance"), MODEL_ID))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("Write a Python function that adds two numbers, in a code block.",
                     Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".msg.assistant .stats"),
                                                "tok/s"))
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    stats = reply.find_element(By.CLASS_NAME, "stats").text
    assert "TTFT" in stats and "tokens" in stats
    assert len(reply.text) > len(stats) + 10
    shot = tmp_path / "chat-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    # multi-turn: the second question carries the first exchange
    prompt.send_keys("Thanks!", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")) == 2)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.user")) == 2
    # a reload remembers the key: no dialog this time
    browser.get(gw.url + "/")
    wait.until(ec.text_to_be_present_in_element((By.ID, "appliance"), MODEL_ID))
    assert not browser.find_element(By.ID, "key-dialog").is_displayed()
    # Stop ends a reply mid-stream and keeps what came
    browser.find_element(By.ID, "prompt").send_keys(
        "Write a very long story about a dragon.", Keys.ENTER)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "streaming"))
    browser.find_element(By.ID, "stop").click()
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, ".msg.assistant .stats"),
                                                "stopped"))
    stopped = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    assert "stopped" in stopped.find_element(By.CLASS_NAME, "stats").text
    assert browser.find_element(By.ID, "send").is_enabled()
