"""The Edge-LLM adapter (builder/device/edgellm_serve.py) as the device runs it: a
process on loopback (`python3 -I edgellm_serve.py ...`, as edge-llm-edgellm serve execs
it) over a stand-in of Edge-LLM's runtime binding, talked to over HTTP, alone and behind
the real gateway.

Each test attacks one promise: one request at a time on a runtime that is not
thread-safe, no file paths or other non-text content reaching the runtime, typed and
ranged fields, a prompt too long a 400 and not a 500, a client that leaves stopping its
generation, loopback only, a capped body, complete OpenAI chunks the gateway passes on.
Nothing asserts a duration: deadlines only keep a broken adapter from hanging the suite."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from harness.gateway_process import GatewayProcess
from harness.llama_server import free_port

import builder.device

ADAPTER = Path(builder.device.__file__).with_name("edgellm_serve.py")
MODEL_ID = "qwen3-0.6b-int4"
MAX_INPUT, KV = 512, 1024
REPLY = "w0 w1 w2 w3 w4 "  # the fake's default reply: five tokens
HI = [{"role": "user", "content": "Say hi."}]

# A stand-in of TensorRT-Edge-LLM 0.9.1's runtime binding `_edgellm_runtime`
# (7f061f2, experimental/pybind/edgellm_pybind.cpp:272-500): the same classes, methods
# and fields, in pure Python, failing where the real one fails. Tokens are UTF-8 bytes
# (a chat template's markers one each); the reply is "w0 w1 ..." (fake-runtime.json in
# the engine directory says how long, how fast, and whether it fails); every request,
# its end and every overlap are written to fake-runtime.log there.
FAKE_BINDING = r'''
"""fake _edgellm_runtime: TensorRT-Edge-LLM 0.9.1 (7f061f2) experimental/pybind/
edgellm_pybind.cpp:272-500, in pure Python."""
import enum
import json
import os
import threading
import time
from pathlib import Path

_state = threading.Lock()
_busy = [False]


class FinishReason(enum.Enum):  # :405-411, cpp/runtime/streaming.h FinishReason
    NOT_FINISHED = 0
    END_ID = 1
    LENGTH = 2
    CANCELLED = 3
    ERROR = 4
    STOP_WORDS = 5


class MessageContent:  # :347-359
    def __init__(self, type="", content=""):
        self.type, self.content = type, content


class Message:  # :361-371
    def __init__(self, role="", contents=()):
        self.role, self.contents = role, list(contents)


def create_text_message(role, text):  # :373-384
    return Message(role, [MessageContent("text", text)])


class Request:  # :401-414
    def __init__(self, messages=()):
        self.messages = list(messages)
        self.image_buffers, self.audio_buffers, self.stop_strings = [], [], []
        self.logit_bias = {}


class StreamChunk:  # :413-419
    def __init__(self, token_ids=(), text="", finished=False,
                 reason=FinishReason.NOT_FINISHED):
        self.token_ids, self.text, self.finished, self.reason = \
            list(token_ids), text, finished, reason
        self.logprobs = []


class StreamChannel:  # :421-436, cpp/runtime/streaming.cpp:40-200
    def __init__(self, _key=None):
        if _key is not StreamChannel:
            raise TypeError("StreamChannel: no constructor defined; use create()")
        self._cv = threading.Condition()
        self._pending = []
        self._finished = self._cancelled = self._attached = False
        self._reason = FinishReason.NOT_FINISHED
        self._interval, self._skip = 1, True

    @staticmethod
    def create():
        return StreamChannel(StreamChannel)

    def try_pop(self):
        with self._cv:
            return self._pending.pop(0) if self._pending else None

    def wait_pop(self, timeout_ms):
        with self._cv:
            self._cv.wait_for(lambda: self._pending or self._finished or self._cancelled,
                              timeout_ms / 1000)
            return self._pending.pop(0) if self._pending else None

    def is_finished(self):
        return self._finished

    def get_reason(self):
        return self._reason if self._finished else FinishReason.NOT_FINISHED

    def is_cancelled(self):
        return self._cancelled

    def cancel(self):
        with self._cv:
            self._cancelled = True
            self._cv.notify_all()

    def set_stream_interval(self, n):
        self._interval = max(1, n)

    def get_stream_interval(self):
        return self._interval

    def set_skip_special_tokens(self, skip):
        self._skip = skip

    def get_skip_special_tokens(self):
        return self._skip

    def _push(self, chunk):
        with self._cv:
            self._pending.append(chunk)
            if chunk.finished:
                self._finished, self._reason = True, chunk.reason
            self._cv.notify_all()


_TYPED = {"temperature": float, "top_p": float, "top_k": int, "max_generate_length": int,
          "num_logprobs": int, "apply_chat_template": bool, "add_generation_prompt": bool,
          "enable_thinking": bool, "disable_spec_decode": bool,
          "save_system_prompt_kv_cache": bool, "lora_weights_name": str}


class LLMGenerationRequest:  # :441-456
    def __init__(self):
        object.__setattr__(self, "requests", [])
        object.__setattr__(self, "stream_channels", [])
        object.__setattr__(self, "formatted_requests", [])
        # no defaults in the C++ struct (cpp/runtime/llmRuntimeUtils.h:128-131): the
        # binding's py::init<>() value-initializes them to zero
        for k, v in (("temperature", 0.0), ("top_p", 0.0), ("top_k", 0),
                     ("max_generate_length", 0), ("num_logprobs", 0), ("apply_chat_template", True),
                     ("add_generation_prompt", True), ("enable_thinking", False),
                     ("disable_spec_decode", False), ("save_system_prompt_kv_cache", False),
                     ("lora_weights_name", "")):
            object.__setattr__(self, k, v)

    def __setattr__(self, name, value):
        want = _TYPED.get(name)
        if want is None and name not in ("requests", "stream_channels", "formatted_requests"):
            raise AttributeError(f"'LLMGenerationRequest' object has no attribute '{name}'")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # pybind11 converts an int to a float, not the reverse
        if want is not None and (not isinstance(value, want)
                                 or (want is int and isinstance(value, bool))):
            raise TypeError(f"incompatible type for {name}: {type(value).__name__}")
        object.__setattr__(self, name, value)


class LLMGenerationResponse:  # :458-463
    def __init__(self):
        self.output_ids, self.output_texts, self.logprobs, self.finish_reasons = [], [], [], []


def _log(engine_dir, **record):
    with _state, open(Path(engine_dir) / "fake-runtime.log", "a") as f:
        f.write(json.dumps(record) + "\n")


def _knobs(engine_dir):
    try:
        return json.loads((Path(engine_dir) / "fake-runtime.json").read_text())
    except OSError:
        return {}


class LLMRuntime:  # :468-500
    def __init__(self, engine_dir, multimodal_engine_dir="", lora_weights_map=None):
        plugin = os.environ.get("EDGELLM_PLUGIN_PATH", "build/libNvInfer_edgellm_plugin.so")
        if not os.path.isfile(plugin):  # cpp/common/trtUtils.h:60-80, then no plugins
            raise RuntimeError(f"Cannot open plugin library: {plugin}: no such file")
        cfg = json.loads((Path(engine_dir) / "config.json").read_text())
        if not (Path(engine_dir) / "llm.engine").is_file():
            raise RuntimeError(f"Failed to initialize base EngineExecutor: {engine_dir}")
        self._dir = str(engine_dir)
        bc = cfg["builder_config"]  # llmEngineConfig.cpp:327-331
        self._max_input, self._kv = bc["max_input_len"], bc["max_kv_cache_capacity"]
        while (Path(engine_dir) / "fake-hold-load").exists():  # a slow engine load
            time.sleep(0.02)

    def capture_decoding_cuda_graph(self):
        return True

    def has_draft_model(self):
        return False

    def handle_request(self, request):  # :127-133: false from the runtime -> RuntimeError
        with _state:
            overlap, _busy[0] = _busy[0], True
        if overlap:
            _log(self._dir, event="overlap")
            raise RuntimeError("fake: handle_request entered while another runs: the real "
                               "runtime would share its KV cache and CUDA stream")
        try:
            _log(self._dir, event="enter")
            return self._handle(request)
        finally:
            _log(self._dir, event="exit")
            with _state:
                _busy[0] = False

    def _fail(self, why):
        _log(self._dir, event="failed", why=why)
        raise RuntimeError("/src/experimental/pybind/edgellm_pybind.cpp:131: "
                           "Failed to handle generation request")

    def _handle(self, request):
        knobs = _knobs(self._dir)
        r = request
        one = r.requests[0]
        _log(self._dir, event="request", streaming=bool(r.stream_channels),
             messages=[[m.role, [[c.type, c.content] for c in m.contents]]
                       for m in one.messages],
             stop_strings=list(one.stop_strings), temperature=r.temperature,
             top_p=r.top_p, top_k=r.top_k, max_generate_length=r.max_generate_length,
             apply_chat_template=r.apply_chat_template,
             add_generation_prompt=r.add_generation_prompt)
        for m in one.messages:
            for c in m.contents:
                if c.type != "text":
                    return self._fail(f"content of type {c.type}: no vision or audio runner")
        if len(r.requests) != 1 or len(r.stream_channels) not in (0, 1):
            return self._fail("batch or channels of the wrong size")
        channel = r.stream_channels[0] if r.stream_channels else None
        if channel is not None and (channel._finished or channel._attached):
            return self._fail("StreamChannel finished or attached")
        if r.apply_chat_template:
            prompt = sum(2 + len((m.role + "\n" + "".join(c.content for c in m.contents))
                                 .encode()) for m in one.messages)
            prompt += 2 if r.add_generation_prompt else 0
        else:
            prompt = sum(len(c.content.encode()) for m in one.messages for c in m.contents)
        if prompt == 0:
            return self._fail("Failed to tokenize input text")
        if prompt > self._max_input or knobs.get("fail"):  # llmInferenceRuntime.cpp:1717
            return self._fail(f"input length {prompt} > {self._max_input}" if prompt >
                              self._max_input else "fake-runtime.json says fail")
        if channel is not None:
            channel._attached = True  # llmInferenceRuntime.cpp:700-710, after prefill setup

        def push(piece_ids, piece, finished=False, why=FinishReason.NOT_FINISHED):
            if channel is not None:
                channel._push(StreamChunk(piece_ids, piece, finished, why))
        greedy = r.top_k == 1 or not (r.top_k > 1 or r.top_p < 1 - 1e-6 or (
            r.temperature > 1e-3 and abs(r.temperature - 1) > 1e-3))  # samplingUtils.cpp:25
        limit = min(r.max_generate_length, self._kv - prompt)
        if limit <= 0:  # llmInferenceRuntime.cpp:713-724
            push([], "", True, FinishReason.ERROR)  # the finalizer, streaming.cpp:428-495
            return self._fail("Insufficient KV cache capacity for generation")
        stops = [s for s in one.stop_strings if s]
        keep = max((len(s.encode()) for s in stops), default=1) - 1
        ids, text, held, reason = [], "", "", FinishReason.END_ID


        for i in range(knobs.get("reply_tokens", 5)):
            if channel is not None and channel._cancelled:
                reason = FinishReason.CANCELLED
                break
            if len(ids) >= limit:
                reason = FinishReason.LENGTH
                break
            if not greedy and r.top_k <= 0 and r.top_p >= 1:
                push([], "", True, FinishReason.ERROR)  # the finalizer, streaming.cpp:428-495
                raise ValueError("Either topK or topP must be set")  # sampler/sampling.h:58-61
            if knobs.get("fail_after") is not None and i >= knobs["fail_after"]:
                push([], "", True, FinishReason.ERROR)
                self._fail("fake-runtime.json says fail_after")
            time.sleep(knobs.get("token_delay", 0))
            ids.append(100 + i)
            piece = f"w{i} "
            text += piece
            held += piece
            hit = [held.find(s) for s in stops if s in held]
            if hit:
                out, text = held[:min(hit)], text[:len(text) - len(held) + min(hit)]
                push([100 + i], out)
                reason = FinishReason.STOP_WORDS
                break
            out = held[:len(held) - keep] if keep else held
            held = held[len(out):]
            push([100 + i], out)
        else:
            if held:
                push([], held)
        push([], "", True, reason)
        _log(self._dir, event="end", reason=reason.name, tokens=len(ids))
        resp = LLMGenerationResponse()
        resp.output_ids, resp.output_texts, resp.finish_reasons = [ids], [text], [reason]
        return resp
'''


class Adapter:
    """The adapter as a process on a free loopback port, over this file's fake binding,
    or over the runtime checkout and engine of tests/fakes/edgellm (`checkout`)."""

    def __init__(self, workdir: Path, *, hold_load: bool = False, plugin: bool = True,
                 max_input: int = MAX_INPUT, kv: int = KV, extra: tuple = (),
                 checkout: Path | None = None, engine: Path | None = None,
                 env: dict | None = None) -> None:
        self.dir = workdir
        self.extra = extra
        self.extra_env = env or {}
        self.local = checkout is None  # this file's fake: its log and knobs
        build = (checkout or workdir) / "build"
        self.engine = engine or workdir / "engine"
        self.binding = build / "pybind"
        self.plugin = build / "libNvInfer_edgellm_plugin.so"
        if self.local:
            self.engine.mkdir(parents=True)
            self.binding.mkdir(parents=True)
            (self.binding / "_edgellm_runtime.py").write_text(FAKE_BINDING)
            (self.engine / "llm.engine").write_bytes(b"fake")
            (self.engine / "config.json").write_text(json.dumps({"builder_config": {
                "max_input_len": max_input, "max_kv_cache_capacity": kv,
                "max_batch_size": 1}}))
            if hold_load:
                (self.engine / "fake-hold-load").touch()
            if plugin:
                self.plugin.write_bytes(b"fake")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = workdir / "adapter.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.max_input, self.kv = max_input, kv

    def argv(self, host: str = "127.0.0.1") -> list[str]:
        # as edge-llm-edgellm serve execs it (builder/device/edgellm.py, serve_argv)
        return [sys.executable, "-I", str(ADAPTER), "--engine-dir", str(self.engine),
                "--runtime-dir", str(self.binding), "--host", host, "--port", str(self.port),
                "--model-id", MODEL_ID, "--max-input-len", str(self.max_input),
                "--max-kv-cache-capacity", str(self.kv), *self.extra]

    def env(self) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "EDGELLM_PLUGIN_PATH": str(self.plugin),
                **self.extra_env}

    def start(self, wait: bool = True) -> Adapter:
        with self.stderr.open("wb") as fh:
            self.proc = subprocess.Popen(self.argv(), env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=fh, stderr=subprocess.STDOUT)
        if wait:
            self.wait_health(200)
        return self

    def wait_health(self, status: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            try:
                got, _, body = self.request("GET", "/health", timeout=2)
                if got == status:
                    return body
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"/health never answered {status}: {self.log_text()}")

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def log_text(self) -> str:
        return self.stderr.read_text(errors="replace")

    # --- the fake runtime's side ------------------------------------------------------

    def knobs(self, **knobs) -> None:
        (self.engine / "fake-runtime.json").write_text(json.dumps(knobs))

    def seen(self, event: str | None = None) -> list[dict]:
        path = self.engine / "fake-runtime.log"
        records = [json.loads(x) for x in path.read_text().splitlines()] \
            if path.exists() else []
        return [r for r in records if event is None or r["event"] == event]

    def wait_seen(self, event: str, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if got := self.seen(event):
                return got
            time.sleep(0.02)
        raise AssertionError(f"the runtime never logged {event}: {self.seen()}")

    def reset(self) -> None:
        if self.local:
            self.knobs()
            (self.engine / "fake-runtime.log").unlink(missing_ok=True)

    # --- HTTP -------------------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | dict | None = None, *,
                headers: dict | None = None, timeout: float = 30
                ) -> tuple[int, dict, dict | bytes]:
        """(status, headers, parsed JSON or raw bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=data, headers={
                "Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw
            return r.status, dict(r.getheaders()), parsed
        finally:
            conn.close()

    def post(self, path: str, body: bytes | dict) -> tuple[int, dict | bytes]:
        status, _, parsed = self.request("POST", path, body)
        return status, parsed

    def events(self, path: str, body: dict) -> tuple[int, dict, list]:
        """(status, headers, the stream's events: parsed objects and "[DONE]")."""
        status, headers, raw = self.request("POST", path, {**body, "stream": True})
        if status != 200:
            return status, headers, [raw]
        assert isinstance(raw, bytes), raw
        out = []
        for line in raw.decode().split("\n"):
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", f"not an SSE data line: {line!r}"
        return status, headers, out


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    a = Adapter(tmp_path_factory.mktemp("edgellm")).start()
    yield a
    a.stop()


@pytest.fixture
def adapter(shared: Adapter) -> Adapter:
    shared.reset()
    return shared


UPSTREAM_INPUT, UPSTREAM_KV = 256, 512  # the engine built with tests/fakes/edgellm


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The adapter as the device runs it over the other stand-ins of Edge-LLM 0.9.1
    (tests/fakes/edgellm): the runtime tarball unpacked as the image does, a tiny Qwen2.5
    checkpoint exported by the stand-in `tensorrt-edgellm-export` and built by the
    stand-in llm_build, the stand-in binding raising on overlapping handle_request calls."""
    from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
    from fakes.edgellm.fake_edgellm_source import make_source_tarball
    from fakes.edgellm.fake_hf_checkpoint import make_checkpoint

    base = tmp_path_factory.mktemp("edgellm-fakes")
    checkout = _unpack(make_runtime_tarball(base / "dist"), base / "opt")
    src = _unpack(make_source_tarball(base / "dist"), base / "src")
    model = make_checkpoint(base / "Qwen2.5-tiny")
    env = {"PATH": os.environ["PATH"], "HOME": str(base), "LANG": "C.UTF-8"}
    for argv, cwd, more in (
            ([sys.executable, "-m", "tensorrt_edgellm.scripts.export", str(model),
              str(base / "onnx")], src.parent, {"PYTHONPATH": str(src)}),
            ([str(checkout / "build/examples/llm/llm_build"), "--onnxDir",
              str(base / "onnx/llm"), "--engineDir", str(base / "engine"), "--maxInputLen",
              str(UPSTREAM_INPUT), "--maxKVCacheCapacity", str(UPSTREAM_KV),
              "--maxBatchSize", "1"], base,
             {"EDGELLM_PLUGIN_PATH": str(checkout / "build/libNvInfer_edgellm_plugin.so")})):
        r = subprocess.run(argv, cwd=cwd, env={**env, **more}, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    a = Adapter(base, checkout=checkout, engine=base / "engine", max_input=UPSTREAM_INPUT,
                kv=UPSTREAM_KV, env={"FAKE_EDGELLM_TOKEN_DELAY": "0.005"}).start()
    yield a
    a.stop()


@pytest.fixture(params=["this-fake", "edgellm-fakes"])
def any_adapter(request: pytest.FixtureRequest) -> Adapter:
    """Each binding stand-in in turn: this file's, whose knobs and log let a test see what
    reached the runtime, and tests/fakes/edgellm's, built and loaded as on the device."""
    a = request.getfixturevalue("shared" if request.param == "this-fake" else "upstream")
    a.reset()
    return a


def _chat(**fields) -> dict:
    return {"model": MODEL_ID, "messages": HI, "max_tokens": 64, **fields}


def _error(body: object, status_kind: str = "invalid_request_error") -> dict:
    """The OpenAI error object of a reply, checked for its shape."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert err["type"] == status_kind and isinstance(err["message"], str)
    return err


# --- loading and health ---------------------------------------------------------------

def test_health_is_503_while_the_engine_loads_then_200(tmp_path: Path) -> None:
    a = Adapter(tmp_path, hold_load=True).start(wait=False)
    try:
        assert a.wait_health(503) == {"status": "loading"}
        status, body = a.post("/v1/chat/completions", _chat())
        assert status == 503 and _error(body, "server_error")["code"] == "engine_loading"
        assert a.seen("request") == []
        (a.engine / "fake-hold-load").unlink()
        assert a.wait_health(200) == {"status": "ok"}
        assert a.post("/v1/chat/completions", _chat())[0] == 200
    finally:
        a.stop()


def test_an_engine_that_cannot_load_is_one_line_and_exit_1(tmp_path: Path) -> None:
    a = Adapter(tmp_path, plugin=False)  # EDGELLM_PLUGIN_PATH names no file
    r = subprocess.run(a.argv(), env=a.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "cannot load the engine" in r.stderr and "Cannot open plugin library" in r.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "localhost",
                                  "example.com"])
def test_it_listens_on_loopback_only(tmp_path: Path, host: str) -> None:
    a = Adapter(tmp_path)
    r = subprocess.run(a.argv(host), env=a.env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "127.0.0.1" in r.stderr
    assert a.seen() == []  # refused before the runtime was loaded


def test_sigterm_cancels_the_running_request_and_exits_0(tmp_path: Path) -> None:
    a = Adapter(tmp_path).start()
    a.knobs(reply_tokens=100000, token_delay=0.01)
    sock = socket.create_connection(("127.0.0.1", a.port))
    try:
        _send_post(sock, "/v1/chat/completions", _chat(max_tokens=100000, stream=True))
        a.wait_seen("request")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=30) == 0, a.log_text()
    finally:
        sock.close()
    assert [r["reason"] for r in a.seen("end")] == ["CANCELLED"]
    assert "Traceback" not in a.log_text()


def test_health_says_stalled_while_a_request_gets_no_token(tmp_path: Path) -> None:
    """A runtime that stops producing tokens keeps the lock: /health must say so (503),
    or the gateway keeps queueing and the watchdog never restarts it."""
    a = Adapter(tmp_path, extra=("--stall-seconds", "0.2")).start()
    try:
        a.knobs(reply_tokens=3, token_delay=1.0)
        sock = socket.create_connection(("127.0.0.1", a.port))
        try:
            _send_post(sock, "/v1/chat/completions", _chat(stream=True))
            assert a.wait_health(503) == {"status": "stalled"}
        finally:
            sock.close()
        a.wait_seen("end")
        assert a.wait_health(200) == {"status": "ok"}
    finally:
        a.stop()


# --- replies --------------------------------------------------------------------------

def test_a_chat_completion_is_an_openai_reply(adapter: Adapter) -> None:
    status, body = adapter.post("/v1/chat/completions", _chat(
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Say "},
                                               {"type": "text", "text": "hi."}]}],
        seed=7, user="u1", frequency_penalty=0.5, metadata={"a": "b"}))
    assert status == 200, body
    assert isinstance(body, dict) and body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    assert isinstance(body["created"], int)
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"completion_tokens": 5}
    [seen] = adapter.seen("request")
    assert seen["messages"] == [["system", [["text", "Be brief."]]],
                                ["user", [["text", "Say "], ["text", "hi."]]]]
    assert seen["apply_chat_template"] and seen["add_generation_prompt"]
    assert seen["max_generate_length"] == 64 and seen["streaming"]


def test_the_agreement_check_asks_for_text_and_reads_it(adapter: Adapter) -> None:
    """verify.min_agreement on an Edge-LLM device: the adapter refuses `logprobs`, so
    the check asks for the answer alone (Engine.logprobs) and compares its text."""
    from builder.engines.tensorrt_edge_llm import TensorRtEdgeLlm
    from builder.verify import agreement

    assert not TensorRtEdgeLlm.logprobs
    body = agreement.request(agreement.PROMPTS[0], 8, False, MODEL_ID)
    status, reply = adapter.post("/v1/chat/completions", body)
    assert status == 200, reply
    assert agreement.text_of(reply, "the device") == REPLY
    status, reply = adapter.post("/v1/chat/completions",
                                 agreement.request(agreement.PROMPTS[0], 8, model=MODEL_ID))
    assert status == 400 and _error(reply)["param"] == "logprobs"


def test_a_streamed_chat_completion_is_complete_openai_chunks(adapter: Adapter) -> None:
    status, headers, events = adapter.events("/v1/chat/completions", _chat(
        stream_options={"include_usage": True}))
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == MODEL_ID
        assert isinstance(c["created"], int)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == REPLY
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"completion_tokens": 5}


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_a_reply_and_its_stream_agree(any_adapter: Adapter, chat: bool) -> None:
    a = any_adapter
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = _chat(temperature=0) if chat else {"prompt": "Once upon a time", "temperature": 0,
                                              "max_tokens": 64}
    status, whole = a.post(path, body)
    assert status == 200 and isinstance(whole, dict), whole
    choice = whole["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    assert text and whole["usage"]["completion_tokens"] >= 1
    status, _, events = a.events(path, {**body, "stream_options": {"include_usage": True}})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = events[:-1]
    obj = "chat.completion.chunk" if chat else "text_completion"
    assert all(c["object"] == obj and c["model"] == MODEL_ID and c["id"] == chunks[0]["id"]
               for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content", "") if chat else c["choices"][0]["text"]
              for c in chunks[:-1]]
    assert "".join(pieces) == text
    assert chunks[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_a_stream_without_include_usage_ends_with_the_finish_chunk(adapter: Adapter) -> None:
    _, _, events = adapter.events("/v1/chat/completions", _chat(max_tokens=2))
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])


def test_without_max_tokens_the_reply_may_fill_the_kv_cache(adapter: Adapter) -> None:
    body = _chat()
    del body["max_tokens"]
    assert adapter.post("/v1/chat/completions", body)[0] == 200
    assert adapter.seen("request")[0]["max_generate_length"] == KV


def test_max_tokens_ends_the_reply_with_length(any_adapter: Adapter) -> None:
    status, body = any_adapter.post("/v1/chat/completions", _chat(max_tokens=2))
    assert status == 200 and isinstance(body, dict)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    if any_adapter.local:
        assert body["choices"][0]["message"]["content"] == "w0 w1 "


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_reach_the_runtime(adapter: Adapter, stream: bool) -> None:
    body = _chat(stop=["w2"])
    if stream:
        _, _, events = adapter.events("/v1/chat/completions", body)
        text = "".join(e["choices"][0]["delta"].get("content", "")
                       for e in events[:-1] if e["choices"])
        finish = events[-2]["choices"][0]["finish_reason"]
    else:
        _, reply = adapter.post("/v1/chat/completions", body)
        assert isinstance(reply, dict)
        text = reply["choices"][0]["message"]["content"]
        finish = reply["choices"][0]["finish_reason"]
    assert (text, finish) == ("w0 w1 ", "stop")
    assert adapter.seen("request")[0]["stop_strings"] == ["w2"]


def test_a_text_completion_is_the_prompt_as_it_is(adapter: Adapter) -> None:
    status, body = adapter.post("/v1/completions", {"model": MODEL_ID, "prompt": "Once upon",
                                                    "max_tokens": 3})
    assert status == 200 and isinstance(body, dict)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [{"index": 0, "text": "w0 w1 w2 ", "logprobs": None,
                                "finish_reason": "length"}]
    [seen] = adapter.seen("request")
    assert seen["messages"] == [["user", [["text", "Once upon"]]]]
    assert not seen["apply_chat_template"] and not seen["add_generation_prompt"]


def test_a_streamed_text_completion(adapter: Adapter) -> None:
    _, _, events = adapter.events("/v1/completions", {"prompt": ["Once"], "max_tokens": 9})
    assert events[-1] == "[DONE]"
    assert all(e["object"] == "text_completion" and e["model"] == MODEL_ID
               for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == REPLY
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


# --- what reaches the runtime ---------------------------------------------------------

@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "file:///etc/shadow"}},
    {"type": "image", "image": "/etc/shadow"},  # engine.py:1120-1134 would open it
    {"type": "audio", "audio": "/etc/shadow"},  # audio_preprocess.py:150-170
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    {"type": "audio_url", "audio_url": {"url": "file:///etc/shadow"}},
    {"type": "file", "file": {"file_id": "f"}},
    {"image": "/etc/shadow"},
], ids=["image_url", "image", "audio", "input_audio", "audio_url", "file", "untyped"])
@pytest.mark.parametrize("stream", [False, True])
def test_non_text_content_never_reaches_the_runtime(any_adapter: Adapter, part: dict,
                                                    stream: bool) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, part]}]
    status, body = any_adapter.post("/v1/chat/completions", _chat(messages=messages,
                                                                   stream=stream))
    assert status == 400
    err = _error(body)
    assert err["param"] == "messages[0].content[1].type"
    assert err["code"] == "unsupported_content"
    if any_adapter.local:
        assert any_adapter.seen() == []


BAD = [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 10**400}, "temperature"),  # no float holds it
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 5000}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "9"}, "max_tokens"),
    ({"max_tokens": 2**31}, "max_tokens"),
    ({"max_completion_tokens": -3}, "max_completion_tokens"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop[0]"),
    ({"stop": ["x" * 1025]}, "stop[0]"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": 1}},
     "stream_options.include_usage"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
     "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"n": 2}, "n"),
]


@pytest.mark.parametrize(("fields", "param"), BAD, ids=[f"{p}-{i}" for i, (_, p)
                                                         in enumerate(BAD)])
def test_a_bad_field_is_a_400_before_the_runtime(adapter: Adapter, fields: dict,
                                                 param: str) -> None:
    status, body = adapter.post("/v1/chat/completions", _chat(**fields))
    assert status == 400, body
    assert _error(body)["param"] == param
    assert adapter.seen() == []


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({}, "prompt"),
])
def test_a_bad_prompt_is_a_400(adapter: Adapter, body: dict, param: str) -> None:
    status, reply = adapter.post("/v1/completions", body)
    assert status == 400 and _error(reply)["param"] == param
    assert adapter.seen() == []


@pytest.mark.parametrize("raw", [b"{", b"[1]", b'{"messages": NaN}', b"\xff\xfe",
                                 b"[" * 100000])
def test_a_body_that_is_not_a_json_object_is_a_400(adapter: Adapter, raw: bytes) -> None:
    status, body = adapter.post("/v1/chat/completions", raw)
    assert status == 400 and _error(body)["code"] in ("invalid_json", "invalid_type")


def test_a_body_over_1_mib_is_a_413_unread(adapter: Adapter) -> None:
    sock = socket.create_connection(("127.0.0.1", adapter.port), timeout=30)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % ((1 << 20) + 1))
        reply = _read_all(sock)
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in head.lower()
    assert _error(json.loads(body))["code"] == "request_too_large"


def test_a_chunked_body_is_refused(adapter: Adapter) -> None:
    status, _, body = adapter.request("POST", "/v1/chat/completions", None,
                                      headers={"Transfer-Encoding": "chunked"})
    assert status == 411 and _error(body)["code"] == "length_required"


@pytest.mark.parametrize(("fields", "want"), [
    ({}, (1.0, 0.99999, 0)),  # OpenAI's default: the whole distribution, sampled
    ({"temperature": 0.7}, (0.7, 0.99999, 0)),  # what most clients send
    ({"temperature": 0}, (0.0, 1.0, 1)),  # greedy
    ({"temperature": 0.8, "top_k": 40, "top_p": 0.95}, (0.8, 0.95, 40)),
    ({"top_p": 0.5}, (1.0, 0.5, 0)),
])
def test_sampling_reaches_the_runtime_as_it_can_run_it(adapter: Adapter, fields: dict,
                                                       want: tuple) -> None:
    """The runtime throws on sampling without a top-k or top-p filter (the fake does, as
    sampler/sampling.h:58-61 does): a plain temperature must not be a 500."""
    status, body = adapter.post("/v1/chat/completions", _chat(**fields))
    assert status == 200, body
    [seen] = adapter.seen("request")
    assert (seen["temperature"], seen["top_p"], seen["top_k"]) == pytest.approx(want)


# --- failures -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_too_long_is_a_400_not_a_500(any_adapter: Adapter, stream: bool) -> None:
    a = any_adapter
    messages = [{"role": "user", "content": "word " * 400}]  # over 400 tokens > 256 or 512
    status, body = a.post("/v1/chat/completions", _chat(messages=messages, stream=stream))
    assert status == 400, body
    err = _error(body)
    assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")
    assert str(a.max_input) in err["message"]
    if a.local:
        assert a.seen("failed")[0]["why"].startswith("input length")
    else:  # the runtime's own words, in the journal
        assert "exceeds the max supported input length" in a.log_text()


def test_a_long_completion_prompt_is_a_400(adapter: Adapter) -> None:
    status, body = adapter.post("/v1/completions", {"prompt": "x" * 600})
    assert status == 400 and _error(body)["code"] == "context_length_exceeded"
    assert _error(body)["param"] == "prompt"


def test_any_other_runtime_failure_is_a_500_that_names_nothing(adapter: Adapter) -> None:
    adapter.knobs(fail=True)
    status, body = adapter.post("/v1/chat/completions", _chat())
    assert status == 500
    err = _error(body, "server_error")
    assert err["code"] == "engine_error"
    assert "edgellm_pybind" not in err["message"] and "/" not in err["message"]
    assert "edgellm_pybind.cpp:131: Failed to handle generation request" in \
        adapter.log_text()  # the journal has it


def test_a_failure_mid_stream_ends_it_with_an_error_event(adapter: Adapter) -> None:
    adapter.knobs(fail_after=2)
    status, _, events = adapter.events("/v1/chat/completions", _chat())
    assert status == 200
    assert "[DONE]" not in events
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "w0 w1 "
    assert _error(events[-1], "server_error")["code"] == "engine_error"


def test_the_runtime_serves_the_next_request_after_a_failure(adapter: Adapter) -> None:
    adapter.knobs(fail_after=1)
    assert adapter.post("/v1/chat/completions", _chat())[0] == 500
    adapter.knobs()
    assert adapter.post("/v1/chat/completions", _chat())[0] == 200


# --- one at a time, and clients that leave --------------------------------------------

def test_concurrent_requests_run_one_at_a_time(any_adapter: Adapter) -> None:
    """Both fakes raise when handle_request is entered while another runs (the real one
    would share its KV cache and CUDA stream): without the lock, one of these fails."""
    adapter = any_adapter
    if adapter.local:
        adapter.knobs(reply_tokens=20, token_delay=0.01)
    results: list[tuple[int, object]] = []

    def one(stream: bool) -> None:
        if stream:
            status, _, events = adapter.events("/v1/chat/completions", _chat())
            results.append((status, events[-1]))
        else:
            results.append(adapter.post("/v1/chat/completions", _chat()))

    threads = [threading.Thread(target=one, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [s for s, _ in results] == [200] * 4, results
    assert "concurrent handle_request" not in adapter.log_text()
    if adapter.local:
        assert adapter.seen("overlap") == []
        order = [r["event"] for r in adapter.seen() if r["event"] in ("enter", "exit")]
        assert order == ["enter", "exit"] * 4


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_cancels_its_generation(adapter: Adapter, stream: bool) -> None:
    adapter.knobs(reply_tokens=100000, token_delay=0.01)
    sock = socket.create_connection(("127.0.0.1", adapter.port), timeout=30)
    try:
        _send_post(sock, "/v1/chat/completions", _chat(max_tokens=100000, stream=stream))
        if stream:
            got = b""
            while b'"content": "w0 "' not in got:
                more = sock.recv(4096)
                assert more, got
                got += more
        else:
            adapter.wait_seen("request")
    finally:
        sock.close()
    [end] = adapter.wait_seen("end")
    assert end["reason"] == "CANCELLED" and end["tokens"] < 100000
    adapter.knobs()
    assert adapter.post("/v1/chat/completions", _chat())[0] == 200  # the lock is free


def test_a_waiting_client_that_leaves_never_runs(adapter: Adapter) -> None:
    adapter.knobs(reply_tokens=100000, token_delay=0.01)
    gave_up = "left while its request waited"
    before = adapter.log_text().count(gave_up)
    first = socket.create_connection(("127.0.0.1", adapter.port), timeout=30)
    second = socket.create_connection(("127.0.0.1", adapter.port), timeout=30)
    try:
        _send_post(first, "/v1/chat/completions", _chat(max_tokens=100000))
        adapter.wait_seen("request")
        _send_post(second, "/v1/chat/completions", _chat(max_tokens=100000))
        second.close()  # gave up while waiting for the first
        deadline = time.monotonic() + 30
        while adapter.log_text().count(gave_up) == before:
            assert time.monotonic() < deadline, adapter.log_text()
            time.sleep(0.02)
    finally:
        first.close()
    adapter.wait_seen("end")
    adapter.knobs()
    assert adapter.post("/v1/chat/completions", _chat())[0] == 200
    assert len(adapter.seen("request")) == 2  # the first and the last: never the second


# --- behind the gateway ---------------------------------------------------------------

def test_through_the_gateway(adapter: Adapter, tmp_path: Path) -> None:
    """The gateway as the device runs it for this engine (probe /health, top_k the
    one extension field): a streamed reply passes through whole, a prompt too long is
    the client's 400, and a failure mid-stream ends the reply with one error."""
    with GatewayProcess(tmp_path / "gw", adapter.url, MODEL_ID, slots=1,
                        engine_probe_path="/health", engine_fields=["top_k"]) as gw:
        deadline = time.monotonic() + 30
        while gw.get("/health", key="")[0] != 200:
            assert time.monotonic() < deadline, gw.log_text()
            time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
        auth = {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"}

        def post(body: dict) -> tuple[int, bytes]:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), auth)
            r = conn.getresponse()
            return r.status, r.read()

        adapter.knobs(token_delay=0.05)  # the reply outlasts the adapter's looks at the
        # gateway's connection: aiohttp must not look like a client that left
        status, raw = post(_chat())
        assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == REPLY
        status, raw = post(_chat(stream=True, top_k=40, stream_options={
            "include_usage": True}))
        assert status == 200, raw
        events = [x[6:] for x in raw.decode().split("\n") if x.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "")
                       for c in chunks if c["choices"]) == REPLY
        assert chunks[-1]["usage"] == {"completion_tokens": 5}
        assert adapter.seen("request")[-1]["top_k"] == 40

        status, raw = post(_chat(messages=[{"role": "user", "content": "word " * 400}]))
        assert status == 400, raw
        err = json.loads(raw)["error"]
        assert "longer than this engine takes" in err["message"]
        assert (err["code"], err["param"]) == ("context_length_exceeded", "messages")

        adapter.knobs(fail_after=2)
        status, raw = post(_chat(stream=True))
        assert status == 200
        errors = [json.loads(x[6:]) for x in raw.decode().split("\n")
                  if x.startswith("data: ") and '"error"' in x]
        assert [e["error"]["code"] for e in errors] == ["engine_error"]
        adapter.knobs()
        assert gw.get("/health", key="")[0] == 200  # the engine is still up
        conn.close()


# --- helpers --------------------------------------------------------------------------

def _unpack(tarball: Path, dest: Path) -> Path:
    """TARBALL unpacked with its top directory stripped (tar --strip-components=1)."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest.parent / (dest.name + ".x"), filter="data")
    (top,) = (dest.parent / (dest.name + ".x")).iterdir()
    top.rename(dest)
    return dest


def _send_post(sock: socket.socket, path: str, body: dict) -> None:
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out
