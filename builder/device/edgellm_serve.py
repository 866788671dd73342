"""The engine unit's server for TensorRT Edge-LLM: an OpenAI-compatible adapter over
Edge-LLM's runtime binding, on loopback behind the gateway, one request at a time.

    python3 -I edgellm_serve.py --engine-dir ENGINE --runtime-dir DIR --host 127.0.0.1
        --port N --model-id ID --max-input-len N --max-kv-cache-capacity N
        [--stall-seconds S]

(edge-llm-edgellm serve execs it so; `python3 -m edge_llm_device.edgellm_serve` is the same.)

It imports `_edgellm_runtime` (the binding built with BUILD_PYTHON_BINDINGS=ON) from
--runtime-dir, loads the engine with LLMRuntime(ENGINE, "", {}), captures the decoding
CUDA graphs and answers GET /health, POST /v1/chat/completions and POST /v1/completions
(whole or streamed). EDGELLM_PLUGIN_PATH comes from the unit's environment.

Why not Edge-LLM's own server (experimental/server; TensorRT-Edge-LLM 0.9.1 (7f061f2)):
- it listens on 0.0.0.0 by default (api_server.py:580, engine.py:1019) with no
  authentication at all (api_server.py:82-102);
- it has no lock: its handler is a sync def run in a thread pool (api_server.py:102-103)
  and the binding releases the GIL in handle_request (edgellm_pybind.cpp:487-488), so
  concurrent requests share one runtime, one CUDA stream and one KV cache (engine.py's
  only thread is a stream's worker, :988);
- message content of type image with a path, or audio with a path or file:// URL, makes
  it read local files (engine.py:1120-1134; audio_preprocess.py:60-77, 150-170), whatever
  the model;
- its errors are {"error": "..."} (api_server.py:106-107), and a prompt longer than the
  engine takes (the runtime returns false, llmInferenceRuntime.cpp:1717-1723, and the
  binding throws, edgellm_pybind.cpp:131) is a 500 like any exception (:223-225);
- `--model` downloads, exports and builds the engine at startup (engine.py:151-162,
  524-568; api_server.py:621-630): it has no option to serve a prebuilt engine;
- it needs FastAPI 0.136.1 and uvicorn 0.47.0 (requirements-server.txt:1-3) and their
  pydantic: a pip-installed web stack, not Ubuntu's archive at the versions it pins.

What this adapter does instead:
- it listens on a loopback address only; the gateway in front has the keys, admission,
  validation and TLS;
- one request at a time runs on the runtime (a lock); another waits for it (the
  gateway's admission bounds how many) and stops waiting when its client leaves;
- a request is parsed into typed values before any of it reaches the runtime: messages
  of role system, user or assistant whose content is text (a string, or parts of type
  "text"); any other part (image_url, image, audio, input_audio, file, ...) is a 400,
  so nothing in a request names a file for the runtime to open; sampling fields typed
  and ranged; what the runtime cannot do (tools, logprobs, logit_bias, a
  response_format other than text, n > 1, token-id prompts) is a 400; other fields are
  ignored and never passed on; a body over 1 MiB is a 413;
- errors are OpenAI error objects: a prompt longer than the engine takes is a 400
  context_length_exceeded (`Generation.could_exceed` says how that is told without a
  tokenizer), any other runtime failure a 500 with a generic message (the detail goes
  to the journal); after a stream's first chunk, a failure ends it with an error event
  and no [DONE], which the gateway passes on as the end of the reply;
- each request runs with a StreamChannel: a streamed reply is written as the runtime
  produces it, and a client that leaves (its connection closed) cancels the channel,
  so the runtime stops at its next step; the lock is released only once
  handle_request has returned;
- GET /health is 503 while the engine loads, then 200 {"status":"ok"}; 503 "stalled"
  while a request has held the runtime for --stall-seconds without a token, so the
  gateway reports the engine down and the watchdog restarts a runtime that hangs (the
  binding holds the GIL while it loads, edgellm_pybind.cpp:476-481, so /health may not
  answer at all then: the gateway and edge-llm-wait-ready take that as not ready).
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # bytes of a request body (the gateway's max_request_bytes default)
INT32 = 2**31 - 1  # the runtime's max_generate_length and top_k are C++ integers
ROLES = ("system", "user", "assistant")  # the roles Edge-LLM's chat templates take
MAX_STOPS, MAX_STOP_CHARS = 4, 1024  # OpenAI's count; the runtime matches bytewise per token
# The top-k kernel takes 8 bytes of shared memory per k (sampler/sampling.cu:894) and the
# sampling workspace is sized for top-p (llmInferenceRuntime.cpp:273-275): a k of
# thousands fails inside the runtime, not here.
MAX_TOP_K = 1024
# The runtime samples only through a top-k or top-p filter (sampler/sampling.h:58-61
# throws otherwise) and takes an unfiltered temperature of 1 as greedy
# (sampler/samplingUtils.cpp:25-33): sampling from the whole distribution, OpenAI's
# default, is asked of it as top_p just under 1.
UNFILTERED_TOP_P = 0.99999
# What a chat template may add to a prompt, in tokens: a default system prompt and the
# header, and each message's role markers (see Generation.could_exceed).
TEMPLATE_TOKENS, MESSAGE_TOKENS = 256, 16
POLL = 0.1  # seconds between looks at a waiting or running request's client
SOCKET_TIMEOUT = 60  # a request head or body that stalls, an idle keep-alive connection


def log(msg: str) -> None:
    print(f"edgellm-serve: {msg}", file=sys.stderr, flush=True)


class Refused(Exception):
    """A request answered with an OpenAI error object."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = "invalid_value", kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = \
            status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def _server_error(message: str, code: str) -> Refused:
    return Refused(500, message, None, code, "server_error")


class ClientGone(Exception):
    """The client closed its connection."""


# --- the request, typed --------------------------------------------------------------

@dataclass(frozen=True)
class Generation:
    """What a request asks of the runtime, every field checked."""

    chat: bool  # chat template applied (chat), or the prompt as it is (completions)
    messages: tuple[tuple[str, tuple[str, ...]], ...]  # (role, its text parts)
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool

    def sampling(self) -> tuple[float, float, int]:
        """(temperature, top_p, top_k) as the runtime takes them: temperature 0, top_k 1
        or top_p 0 is greedy; no filter at all is the whole distribution."""
        if self.temperature == 0 or self.top_k == 1 or self.top_p == 0:
            return 0.0, 1.0, 1
        top_p = self.top_p
        if self.top_k == 0 and top_p >= 1:
            top_p = UNFILTERED_TOP_P
        return self.temperature, top_p, self.top_k

    def could_exceed(self, max_input_len: int) -> bool:
        """Whether the prompt may be longer than the engine's max input length. The
        runtime does not say why it failed (edgellm_pybind.cpp:131: one message for
        every failure) and the adapter has no tokenizer; but a byte-level BPE or
        byte-fallback token covers at least one byte, so a prompt is at most its UTF-8
        bytes plus what the chat template adds. A request that failed before its first
        token with a prompt that may be too long is the client's; one whose prompt
        cannot be too long failed in the runtime."""
        text = sum(len(t.encode()) for _, parts in self.messages for t in parts)
        bound = text + TEMPLATE_TOKENS + MESSAGE_TOKENS * len(self.messages)
        return bound > max_input_len


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"


def _type(param: str, want: str, v: object) -> Refused:
    return Refused(400, f"'{param}' must be {want}, not {_kind(v)}.", param, "invalid_type")


def _text(v: object, param: str) -> str:
    if not isinstance(v, str):
        raise _type(param, "a string", v)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(400, f"'{param}' holds an unpaired UTF-16 surrogate.", param) from None
    return v


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type(key, "a number", v)
    if not lo <= v <= hi:  # NaN and infinities are not JSON (parse() refuses them)
        raise Refused(400, f"'{key}' must be between {lo:g} and {hi:g}; got {v}.", key)
    return float(v)


def _integer(body: dict, key: str, lo: int, hi: int, default: int) -> int:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type(key, "an integer", v)
    if not lo <= v <= hi:
        raise Refused(400, f"'{key}' must be between {lo} and {hi}; got {v}.", key)
    return v


def _flag(body: dict, key: str) -> bool:
    v = body.get(key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _type(key, "a boolean", v)
    return v


def _unsupported(param: str, why: str) -> Refused:
    return Refused(400, f"'{param}' is not supported by this engine: {why}.", param,
                   "unsupported_parameter")


def _content(v: object, param: str) -> tuple[str, ...]:
    """A message's text: a string, or a non-empty list of text parts. Nothing else: a
    part naming an image, audio or a file is refused, never looked at further."""
    if isinstance(v, str):
        return (_text(v, param),)
    if not isinstance(v, list) or not v:
        raise _type(param, "a string or a non-empty array of text parts", v)
    parts = []
    for i, part in enumerate(v):
        pp = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _type(pp, "an object", part)
        kind = part.get("type")
        if kind != "text":
            raise Refused(400, f"'{pp}.type' is {json.dumps(kind)[:40]}: this engine reads "
                          "text parts only.", f"{pp}.type", "unsupported_content")
        parts.append(_text(part.get("text"), f"{pp}.text"))
    return tuple(parts)


def _messages(v: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(v, list) or not v:
        raise _type("messages", "a non-empty array", v)
    out = []
    for i, m in enumerate(v):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _type(p, "an object", m)
        role = m.get("role")
        if role not in ROLES:
            raise Refused(400, f"'{p}.role' must be one of {', '.join(ROLES)}; got "
                          f"{json.dumps(role)[:40]}.", f"{p}.role")
        out.append((role, _content(m.get("content"), f"{p}.content")))
    return tuple(out)


def _prompt(v: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """A completion's prompt as one user message (the gateway unwraps a one-element
    list; token ids need the tokenizer, which is the runtime's)."""
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], str):
        v = v[0]
    if isinstance(v, list):
        raise _unsupported("prompt", "it takes one prompt as a string, not token ids "
                           "or several prompts")
    if not _text(v, "prompt"):
        raise Refused(400, "'prompt' is empty.", "prompt")
    return (("user", (v,)),)


def _stop(v: object) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list):
        raise _type("stop", "a string or an array of strings", v)
    if len(stops) > MAX_STOPS:
        raise Refused(400, f"'stop' holds {len(stops)} strings; at most {MAX_STOPS}.", "stop")
    for i, s in enumerate(stops):
        if not _text(s, f"stop[{i}]") or len(s) > MAX_STOP_CHARS:
            raise Refused(400, f"'stop[{i}]' must be 1 to {MAX_STOP_CHARS} characters.",
                          f"stop[{i}]")
    return tuple(stops)


def _refuse_unsupported(body: dict, chat: bool) -> None:
    """What a client asks for that the runtime would silently not do."""
    if body.get("tools"):
        raise _unsupported("tools", "the adapter does not parse tool calls")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise _unsupported("response_format", "the runtime has no constrained decoding")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _unsupported("logprobs", "the adapter does not return log probabilities")
    if body.get("logit_bias"):
        raise _unsupported("logit_bias", "the adapter does not pass token biases on")
    if body.get("n") not in (None, 1):
        raise _unsupported("n", "one choice per request")
    if not chat and (body.get("echo") or body.get("suffix")):
        raise _unsupported("echo" if body.get("echo") else "suffix", "text is only appended")


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def parse(raw: bytes, chat: bool, default_max_tokens: int) -> Generation:
    """The request body, typed, or Refused (400)."""
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError) as e:
        raise Refused(400, f"The body is not valid JSON: {str(e)[:200]}", None,
                      "invalid_json") from None
    if not isinstance(body, dict):
        raise Refused(400, "The body must be a JSON object.", None, "invalid_type")
    what = "messages" if chat else "prompt"
    if what not in body:
        raise Refused(400, f"Missing required parameter: '{what}'.", what,
                      "missing_required_parameter")
    _refuse_unsupported(body, chat)
    max_tokens = _integer(body, "max_completion_tokens", 1, INT32, 0) if chat else 0
    max_tokens = max_tokens or _integer(body, "max_tokens", 1, INT32, default_max_tokens)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _type("stream_options", "an object", options)
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _type("stream_options.include_usage", "a boolean", include_usage)
    return Generation(
        chat=chat,
        messages=_messages(body.get("messages")) if chat else _prompt(body.get("prompt")),
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2, 1.0),
        top_p=_number(body, "top_p", 0, 1, 1.0),
        top_k=_integer(body, "top_k", 0, MAX_TOP_K, 0),
        stop=_stop(body.get("stop")),
        stream=stream,
        include_usage=stream and bool(include_usage))


# --- the runtime ---------------------------------------------------------------------

def runtime_request(rt, g: Generation, channel):
    """The binding's LLMGenerationRequest for `g` (edgellm_pybind.cpp:344-464). Every
    field is set: the struct has no defaults for the sampling fields and
    max_generate_length (cpp/runtime/llmRuntimeUtils.h:128-131), so the binding's
    LLMGenerationRequest() holds zeros, and a max_generate_length of 0 fails the request
    (llmInferenceRuntime.cpp:720-723)."""
    messages = [rt.Message(role, [rt.MessageContent("text", t) for t in parts])
                for role, parts in g.messages]
    one = rt.Request(messages)
    one.stop_strings = list(g.stop)
    req = rt.LLMGenerationRequest()
    req.requests = [one]
    req.stream_channels = [channel]
    req.temperature, req.top_p, req.top_k = g.sampling()
    req.max_generate_length = g.max_tokens
    req.apply_chat_template = g.chat
    req.add_generation_prompt = g.chat
    req.enable_thinking = False
    req.save_system_prompt_kv_cache = False
    req.num_logprobs = 0
    return req


class Engine:
    """The runtime, loaded once, and the lock that lets one request at a time use it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rt = None  # the _edgellm_runtime module
        self.runtime = None
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.job: Job | None = None  # the request holding the lock
        self.finish: dict = {}

    def load(self) -> None:
        sys.path.insert(0, self.args.runtime_dir)
        self.rt = rt = importlib.import_module("_edgellm_runtime")
        f = rt.FinishReason
        self.finish = {f.END_ID: "stop", f.STOP_WORDS: "stop", f.LENGTH: "length"}
        started = time.monotonic()
        self.runtime = rt.LLMRuntime(self.args.engine_dir, "", {})
        if not self.runtime.capture_decoding_cuda_graph():
            log("capturing the decoding CUDA graphs failed: decoding runs without them")
        log(f"engine {self.args.engine_dir} loaded in {time.monotonic() - started:.1f}s")
        self.ready.set()

    def health(self) -> tuple[int, dict]:
        if not self.ready.is_set():
            return 503, {"status": "loading"}
        job = self.job
        if job is not None and job.stalled(self.args.stall_seconds):
            return 503, {"status": "stalled"}
        return 200, {"status": "ok"}

    def reason(self, r) -> str | None:
        """The OpenAI finish_reason of a runtime FinishReason; None for cancelled and
        error, which are failures."""
        return self.finish.get(r)


class Job:
    """One request on the runtime: handle_request in a thread of its own (the binding
    releases the GIL there), its tokens read from the request's StreamChannel."""

    def __init__(self, engine: Engine, g: Generation) -> None:
        self.engine = engine
        self.channel = engine.rt.StreamChannel.create()
        self.channel.set_skip_special_tokens(True)
        self.request = runtime_request(engine.rt, g, self.channel)
        self.response = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.tokens = 0  # generated so far
        self.alive_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="handle_request", daemon=True)

    def _run(self) -> None:
        try:
            self.response = self.engine.runtime.handle_request(self.request)
        except Exception as e:  # the binding's RuntimeError, or anything it raises
            self.error = e
        finally:
            self.done.set()

    def start(self) -> None:
        self.thread.start()

    def stalled(self, seconds: float) -> bool:
        return not self.done.is_set() and time.monotonic() - self.alive_at > seconds

    def chunks(self, client_left):
        """The runtime's chunks as they come, up to the last one (finished), or until
        handle_request returned without one (it failed before the channel was
        attached: a prompt too long, say). ClientGone if the client leaves first."""
        ch, looked = self.channel, time.monotonic()
        while True:
            if time.monotonic() - looked >= POLL:  # also while tokens keep coming
                looked = time.monotonic()
                if client_left():
                    raise ClientGone
            chunk = ch.wait_pop(int(POLL * 1000))
            if chunk is None and ch.is_finished():
                self.done.wait()  # finished without a last chunk: nothing more comes
            if chunk is None and self.done.is_set():
                chunk = ch.try_pop()
                if chunk is None:
                    return
            if chunk is not None:
                self.alive_at = time.monotonic()
                self.tokens += len(chunk.token_ids)
                yield chunk
                if chunk.finished:
                    return

    def wait(self) -> None:
        """Until handle_request has returned (after the last chunk, it assembles the
        response; after a failure, it raises)."""
        self.thread.join()

    def stop(self) -> None:
        """Cancel the generation if it still runs (the runtime notices at its next
        step) and wait until handle_request has returned."""
        if not self.done.is_set() and not self.channel.is_finished():
            self.channel.cancel()
        self.thread.join()

    def failure(self, g: Generation) -> Refused:
        """Why a request failed, for its client; the runtime's words for the journal."""
        err = self.error or "it ended without a reply"
        log(f"the runtime failed a request after {self.tokens} tokens: {err}")
        if self.tokens == 0 and g.could_exceed(self.engine.args.max_input_len):
            n = self.engine.args.max_input_len
            return Refused(400, f"The prompt is longer than this engine takes: at most {n} "
                           "tokens of input (the chat template's included). Shorten the "
                           "prompt or the conversation.",
                           "messages" if g.chat else "prompt", "context_length_exceeded")
        return _server_error("The engine failed to generate a reply; the device's journal "
                             "has the reason.", "engine_error")


# --- HTTP ----------------------------------------------------------------------------

class Reply:
    """The OpenAI objects of one request's reply."""

    def __init__(self, g: Generation, model: str) -> None:
        self.chat, self.model = g.chat, model
        self.id = ("chatcmpl-" if g.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else \
                ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, tokens: int) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(tokens)}

    def whole(self, text: str, finish: str, tokens: int) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion"), "choices": [choice],
                    "usage": usage(tokens)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(tokens)}


def usage(tokens: int) -> dict:
    # the runtime does not return the prompt's token count (its prefill metrics count
    # only with profiling on, which keeps every timing: profiling/metrics.h:102-112,
    # timer.cpp:189); so there is no prompt_tokens rather than a made-up 0
    return {"completion_tokens": tokens}


def event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgellm-serve"
    sys_version = ""
    timeout = SOCKET_TIMEOUT
    engine: Engine  # set on the subclass serve() makes
    replied = False  # whether this request's status line went out

    def log_message(self, format: str, *args) -> None:
        pass  # failures are logged where they happen; the gateway logs every request

    # --- plumbing -------------------------------------------------------------------

    def _send(self, status: int, obj: dict, close: bool = False,
              headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.replied = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, r: Refused, close: bool = False) -> None:
        self._send(r.status, r.body(), close=close)

    def _client_left(self) -> bool:
        """True once the client has closed its connection (it sends nothing more after
        its request, so a readable socket with nothing to read is the end)."""
        try:
            poller = select.poll()  # not select(): no limit on the descriptor's number
            poller.register(self.connection, select.POLLIN)
            if not poller.poll(0):
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _body(self) -> bytes | None:
        """The request body, or None once refused (the connection then closes: what
        was not read of the body would be taken for the next request)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(Refused(411, "Send the body with a Content-Length.", None,
                                 "length_required"), close=True)
            return None
        try:
            n = int(self.headers.get("Content-Length", ""))
            if n < 0:
                raise ValueError
        except ValueError:
            self._refuse(Refused(411, "Send the body with a Content-Length.", None,
                                 "length_required"), close=True)
            return None
        if n > MAX_BODY:
            self._refuse(Refused(413, f"The body is larger than {MAX_BODY} bytes.", None,
                                 "request_too_large"), close=True)
            return None
        data = self.rfile.read(n)
        if len(data) < n:
            self.close_connection = True
            return None
        return data

    # --- routes ---------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.split("?")[0] == "/health":
            status, body = self.engine.health()
            return self._send(status, body, headers={"Retry-After": "2"}
                              if status == 503 else None)
        self._refuse(Refused(404, f"No route GET {self.path[:100]}.", None, "not_found"))

    def do_POST(self) -> None:
        chat = {"/v1/chat/completions": True, "/v1/completions": False}.get(
            self.path.split("?")[0])
        if chat is None:
            return self._refuse(Refused(404, f"No route POST {self.path[:100]}.", None,
                                        "not_found"), close=True)
        raw = self._body()
        if raw is None:
            return None
        engine = self.engine
        try:
            if not engine.ready.is_set():
                raise Refused(503, "The engine is loading; retry shortly.", None,
                              "engine_loading", "server_error")
            g = parse(raw, chat, engine.args.max_kv_cache_capacity)
        except Refused as r:
            return self._refuse(r)
        del raw
        self.replied = False
        try:
            self._generate(g)
        except (ClientGone, OSError):  # OSError: a write to a client that has gone
            self.close_connection = True
        except Exception:  # a bug here, or the binding refusing what it was given
            log(f"internal error:\n{traceback.format_exc()}")
            self.close_connection = True
            if not self.replied:
                self._refuse(_server_error("Internal error in the engine's adapter; the "
                                           "device's journal has the reason.",
                                           "internal_error"), close=True)

    def _generate(self, g: Generation) -> None:
        engine = self.engine
        while not engine.lock.acquire(timeout=POLL):  # another request runs
            if self._client_left():
                log("a client left while its request waited for the engine: not run")
                raise ClientGone
        try:
            job = engine.job = Job(engine, g)
            job.start()
            try:
                if g.stream:
                    self._stream(job, g)
                else:
                    self._whole(job, g)
            finally:
                job.stop()  # the lock goes only once handle_request has returned
        finally:
            engine.job = None
            engine.lock.release()

    def _whole(self, job: Job, g: Generation) -> None:
        for _ in job.chunks(self._client_left):
            pass  # the text comes whole in the response; the chunks say it is alive
        job.wait()
        resp = job.response
        reason = self.engine.reason(resp.finish_reasons[0]) if resp is not None and \
            resp.finish_reasons else None
        if job.error is not None or reason is None:
            return self._refuse(job.failure(g))
        text = resp.output_texts[0] if resp.output_texts else ""
        tokens = len(resp.output_ids[0]) if resp.output_ids else job.tokens
        self._send(200, Reply(g, self.engine.args.model_id).whole(text, reason, tokens))

    def _stream(self, job: Job, g: Generation) -> None:
        """Server-sent events as the runtime produces them. The status line waits for
        the first token, so a request the runtime refuses (a prompt too long) is still
        answered with a status the gateway can pass on."""
        reply = Reply(g, self.engine.args.model_id)
        started, held, finish = False, [], None
        try:
            for chunk in job.chunks(self._client_left):
                if chunk.finished:
                    finish = self.engine.reason(chunk.reason)
                    if finish is None:
                        break  # cancelled or failed: what it holds is not the reply
                if not started and not chunk.finished:
                    self._start_stream(reply)
                    started = True
                if chunk.text:
                    held.append(chunk.text)
                if started and held:
                    for text in held:
                        self._write(event(reply.chunk(text)))
                    held = []
            if finish is None:
                job.wait()
                failure = job.failure(g)
                if not started:
                    return self._refuse(failure, close=True)
                return self._write(event(failure.body()))  # ends it: no [DONE]
            if not started:
                self._start_stream(reply)
            for text in held:
                self._write(event(reply.chunk(text)))
            self._write(event(reply.chunk(None, finish)))
            if g.include_usage:
                self._write(event(reply.usage_chunk(job.tokens)))
            self._write(b"data: [DONE]\n\n")
        except OSError as e:  # a write to a client that has gone
            raise ClientGone from e

    def _start_stream(self, reply: Reply) -> None:
        """The status line and, for a chat, the assistant's role (as OpenAI opens)."""
        self.replied = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the reply ends where the stream does
        self.close_connection = True
        self.end_headers()
        if reply.chat:
            self._write(event(reply.chunk(None, first=True)))

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


# --- the process ---------------------------------------------------------------------

def loopback(host: str) -> str | None:
    """Why `host` may not be listened on, or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"--host {host!r} is not an IP address; use 127.0.0.1"
    if not ip.is_loopback:
        return (f"--host {host} is not a loopback address: the engine has no keys of its "
                "own and listens behind the gateway only; use 127.0.0.1")
    return None


def arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="edgellm_serve", description=__doc__.split("\n")[0])

    def positive(s: str) -> int:
        n = int(s)
        if n < 1:
            raise ValueError(s)
        return n

    positive.__name__ = "positive integer"
    ap.add_argument("--engine-dir", required=True, help="the engine llm_build made")
    ap.add_argument("--runtime-dir", required=True,
                    help="the directory holding _edgellm_runtime (build/pybind)")
    ap.add_argument("--host", default="127.0.0.1", help="a loopback address")
    ap.add_argument("--port", type=positive, required=True)
    ap.add_argument("--model-id", required=True, help="the model name replies carry")
    ap.add_argument("--max-input-len", type=positive, required=True,
                    help="the engine's max input tokens (llm_build --maxInputLen)")
    ap.add_argument("--max-kv-cache-capacity", type=positive, required=True,
                    help="its KV cache tokens (--maxKVCacheCapacity): the default max_tokens")
    ap.add_argument("--stall-seconds", type=float, default=120.0,
                    help="a request without a token this long makes /health 503")
    return ap.parse_args(argv)


def serve(engine: Engine, host: str, port: int) -> ThreadingHTTPServer:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    handler = type("EngineHandler", (Handler,), {"engine": engine})
    server_cls = type("Server", (ThreadingHTTPServer,),
                      {"address_family": family, "daemon_threads": True})
    return server_cls((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    why = loopback(args.host)
    if why:
        print(f"edgellm-serve: {why}", file=sys.stderr)
        return 2
    if args.port > 65535:
        print(f"edgellm-serve: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    engine = Engine(args)
    try:
        server = serve(engine, args.host, args.port)
    except OSError as e:
        log(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
        return 1
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log(f"listening on {args.host}:{args.port}; loading {args.engine_dir}")
    try:
        engine.load()  # SIGTERM meanwhile: the default, the process ends at once
    except Exception as e:
        log(f"cannot load the engine {args.engine_dir} with _edgellm_runtime from "
            f"{args.runtime_dir}: {type(e).__name__}: {e}")
        server.shutdown()
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    log("stopping")
    server.shutdown()  # no new requests
    job = engine.job
    if job is not None:  # the one running: cancelled, and its runtime call let end
        job.channel.cancel()
        job.thread.join(timeout=10)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
