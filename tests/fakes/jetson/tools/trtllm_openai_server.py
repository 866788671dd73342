#!/usr/bin/env python3
# Test fake of TensorRT-LLM's examples/apps/openai_server.py, shipped under that name in
# the stand-in v0.12.0-jetson checkout (tests/fakes/jetson/fake_trtllm_wheel.py
# make_examples) and in install_fake_trtllm's direct install.
# Source caveat: v0.12.0 does not have this file. At be9cd719 (0.12.0.dev2024080600, the
# last 0.12 snapshot of main; mirror laipaang/TensorRT-LLM) examples/apps holds chat.py
# and fastapi_server.py (the same click command line, but routes /stats, /health and
# /generate, not OpenAI's); openai_server.py arrived on main on 2024-09-10 (31ac30e9,
# 0.14.0.dev2024091000). The v0.12.0-jetson branch is not in the stored copies, so
# whether it carries this file is not verified. This fake mirrors openai_server.py at
# 31ac30e9, lines of that file:
#   imports      tensorrt_llm.hlapi (18-28): without the wheel it fails there; the import
#                prints the version banner
#   command line click (430-437): MODEL_DIR, --tokenizer, --host, --port, --max_beam_width,
#                --tp_size, --pp_size; click's usage errors, exit 2
#   startup      LLM(model_dir, ...) (451): an engine directory needs config.json and
#                rank0.engine, and a tokenizer (--tokenizer, or tokenizer files in
#                MODEL_DIR; transformers' errors, not read); the port opens after loading
#                (FAKE_TRTLLM_LOAD_SECONDS, default 0)
#   routes       /health, /version, /v1/models, /v1/completions, /v1/chat/completions
#                (94-104) with the protocol's validation (hlapi/openai_protocol.py:
#                extra fields rejected, ...) and its response and SSE chunk shapes.
# The model answers with canned tokens ("Paris", " is", " the", " capital", " of",
# " France", "."), FAKE_TRTLLM_TOKEN_DELAY seconds apart (default 0).
"""openai_server.py: an OpenAI-compatible server for a TensorRT-LLM model (test fake)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tensorrt_llm.version import __version__ as VERSION

PROG = "openai_server.py"
TOKENS = ["Paris", " is", " the", " capital", " of", " France", "."]
OPTIONS = {"--tokenizer": str, "--host": str, "--port": int, "--max_beam_width": int,
           "--tp_size": int, "--pp_size": int}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
NO_TEMPLATE = ("Cannot use chat template functions because tokenizer.chat_template is not "
               "set and no template argument was passed! For information about writing "
               "templates and setting the tokenizer.chat_template variable, see "
               "https://huggingface.co/docs/transformers/main/en/chat_templating")
COMMON_FIELDS = {"model", "frequency_penalty", "logit_bias", "max_tokens", "n",
                 "presence_penalty", "seed", "stop", "stream", "stream_options",
                 "temperature", "top_p", "user", "best_of", "use_beam_search", "top_k",
                 "min_p", "repetition_penalty", "length_penalty", "early_stopping",
                 "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
                 "skip_special_tokens", "spaces_between_special_tokens",
                 "truncate_prompt_tokens", "add_special_tokens", "response_format", "logprobs",
                 "echo"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "suffix"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "top_logprobs", "tools", "tool_choice",
                               "add_generation_prompt", "documents", "chat_template",
                               "chat_template_kwargs"}
TYPES = {"max_tokens": (int, type(None)), "n": (int, type(None)), "seed": (int, type(None)),
         "stream": (bool, type(None)), "temperature": (int, float, type(None)),
         "top_p": (int, float, type(None)), "top_k": (int,), "ignore_eos": (bool,),
         "echo": (bool, type(None)), "model": (str,), "best_of": (int, type(None)),
         "use_beam_search": (bool,), "stop": (str, list, type(None))}


def click_fail(msg: str) -> None:
    print(f"Usage: {PROG} [OPTIONS] MODEL_DIR\nTry '{PROG} --help' for help.\n\n"
          f"Error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse(argv: list[str]) -> dict[str, object]:
    opts: dict[str, object] = {"tokenizer": None, "host": None, "port": 8000,
                               "max_beam_width": 1, "tp_size": 1, "pp_size": 1}
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--help":
            print(f"Usage: {PROG} [OPTIONS] MODEL_DIR\n\nOptions:\n"
                  "  --tokenizer TEXT\n  --host TEXT\n  --port INTEGER\n"
                  "  --max_beam_width INTEGER\n  --tp_size INTEGER\n  --pp_size INTEGER\n"
                  "  --help                  Show this message and exit.")
            sys.exit(0)
        if a == "--":
            args += argv[i:]
            break
        if a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name not in OPTIONS:
                click_fail(f"No such option: {name}")
            if not eq:
                if i >= len(argv):
                    click_fail(f"Option '{name}' requires an argument.")
                value = argv[i]
                i += 1
            if OPTIONS[name] is int:
                try:
                    opts[name[2:]] = int(value)
                except ValueError:
                    click_fail(f"Invalid value for '{name}': '{value}' is not a valid integer.")
            else:
                opts[name[2:]] = value
        else:
            args.append(a)
    if not args:
        click_fail("Missing argument 'MODEL_DIR'.")
    if len(args) > 1:
        click_fail(f"Got unexpected extra argument ({args[1]})")
    opts["model_dir"] = args[0]
    return opts


def die(exc: str, msg: str) -> None:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f'  File "{__file__}", line 1, in <module>', file=sys.stderr)
    print(f"{exc}: {msg}", file=sys.stderr)
    sys.exit(1)


def check_model(model_dir: str) -> str:
    """The model format the LLM API infers, or exit the way it fails."""
    d = Path(model_dir)
    if not d.is_dir():
        die("OSError", "We couldn't connect to 'https://huggingface.co' to load this file, "
            "couldn't find it in the cached files and it looks like "
            f"{model_dir} is not the path to a directory containing a file named config.json.")
    has_config = (d / "config.json").is_file()
    if has_config and any(d.glob("rank*.safetensors")):
        return "TLLM_CKPT"
    if has_config and (any(d.glob("*.bin")) or any(d.glob("*.safetensors"))):
        return "HF"
    if has_config and any(d.glob("*.engine")):
        config = json.loads((d / "config.json").read_text())
        if "pretrained_config" not in config or "build_config" not in config:
            die("KeyError", "'pretrained_config'")
        if not (d / "rank0.engine").is_file():
            die("RuntimeError", f"[TensorRT-LLM][ERROR] Failed to open engine file "
                f"{d / 'rank0.engine'}")
        return "TLLM_ENGINE"
    die("ValueError", f"Unknown model format for {model_dir}")
    return ""


def check_tokenizer(path: str) -> dict:
    """AutoTokenizer.from_pretrained(path): the tokenizer_config it reads."""
    d = Path(path)
    if not d.is_dir():
        die("OSError", f"Can't load tokenizer for '{path}'. If you were trying to load it from "
            "'https://huggingface.co/models', make sure you don't have a local directory with "
            "the same name.")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        config = d / "config.json"
        if config.is_file() and "model_type" not in json.loads(config.read_text()):
            die("ValueError", f"Unrecognized model in {path}. Should have a `model_type` key "
                "in its config.json, or contain one of the following strings in its name: "
                "albert, bart, bert, gemma, gpt2, llama, mistral, phi, qwen2, t5, ...")
        die("OSError", f"Can't load tokenizer for '{path}'. Make sure that '{path}' is the "
            "correct path to a directory containing all relevant files for a "
            "Qwen2TokenizerFast tokenizer.")
    tc = d / "tokenizer_config.json"
    return json.loads(tc.read_text()) if tc.is_file() else {}


def count_tokens(text: str) -> int:
    return max(1, len(re.findall(r"<\|[^|]+\|>|\w+|[^\w\s]", text)))


class Rejected(Exception):
    def __init__(self, errors: list[dict]) -> None:
        super().__init__(repr(errors))


def validate(body: object, fields: set[str], required: tuple[str, ...],
             before: list[tuple[bool, str]]) -> dict:
    """pydantic (extra="forbid") with the protocol's validators, as FastAPI reports it."""
    if not isinstance(body, dict):
        raise Rejected([{"type": "model_attributes_type", "loc": ("body",),
                         "msg": "Input should be a valid dictionary or object to extract "
                                "fields from", "input": body}])
    for bad, msg in before:
        if bad:
            raise Rejected([{"type": "value_error", "loc": ("body",),
                             "msg": f"Value error, {msg}", "input": body,
                             "ctx": {"error": f"ValueError('{msg}')"}}])
    errors = [{"type": "missing", "loc": ("body", f), "msg": "Field required", "input": body}
              for f in required if f not in body]
    errors += [{"type": "extra_forbidden", "loc": ("body", k),
                "msg": "Extra inputs are not permitted", "input": v}
               for k, v in body.items() if k not in fields]
    for k, types in TYPES.items():
        if k in body and (not isinstance(body[k], types) or (
                bool not in types and isinstance(body[k], bool))):
            errors.append({"type": "type_error", "loc": ("body", k),
                           "msg": f"Input should be a valid {types[0].__name__}",
                           "input": body[k]})
    if errors:
        raise Rejected(errors)
    return body


def generate(prompt: str, req: dict) -> list[str]:
    max_tokens = req.get("max_tokens", 16)
    max_tokens = 16 if max_tokens is None else max_tokens
    n = max_tokens if req.get("ignore_eos") else min(max_tokens, len(TOKENS))
    out = [TOKENS[i % len(TOKENS)] for i in range(n)]
    stops = req.get("stop") or []
    stops = [stops] if isinstance(stops, str) else stops
    text = ""
    for i, tok in enumerate(out):
        text += tok
        for s in stops:
            if s and s in text:
                return out[:i]
    return out


class Server:
    def __init__(self, opts: dict[str, object], tok_config: dict) -> None:
        self.opts = opts
        self.tok_config = tok_config
        self.name = Path(str(opts["model_dir"])).name
        self.delay = float(os.environ.get("FAKE_TRTLLM_TOKEN_DELAY", "0"))


def make_handler(srv: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "uvicorn"
        sys_version = ""

        def log_message(self, format: str, *args: object) -> None:
            pass

        def access(self, code: int, phrase: str) -> None:
            host, port = self.client_address[:2]
            print(f'INFO:     {host}:{port} - "{self.command} {self.path} HTTP/1.1" {code} '
                  f"{phrase}", file=sys.stderr, flush=True)

        def head(self, code: int, ctype: str, length: int | None) -> None:
            self.send_response_only(code)
            self.send_header("date", formatdate(usegmt=True))
            self.send_header("server", "uvicorn")
            if length is None:
                self.send_header("content-type", ctype)
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(length))
                if ctype:
                    self.send_header("content-type", ctype)
            self.end_headers()

        def send_json(self, code: int, obj: object) -> None:
            data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
            self.head(code, "application/json", len(data))
            self.wfile.write(data)
            self.access(code, {200: "OK", 400: "Bad Request", 404: "Not Found",
                               405: "Method Not Allowed"}.get(code, ""))

        def error(self, message: str) -> None:
            self.send_json(400, {"object": "error", "message": message,
                                 "type": "BadRequestError", "param": None, "code": 400})

        def chunk(self, data: str) -> None:
            raw = data.encode()
            self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
            self.wfile.flush()

        def stream(self, events: list[str] | object) -> None:
            self.head(200, "text/event-stream; charset=utf-8", None)
            self.access(200, "OK")
            for e in events:  # type: ignore[attr-defined]
                self.chunk(e)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def route_exists(self) -> bool:
            return self.path.split("?")[0] in ("/health", "/version", "/v1/models",
                                               "/v1/completions", "/v1/chat/completions")

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/health":
                self.head(200, "", 0)
                self.access(200, "OK")
            elif path == "/version":
                self.send_json(200, {"version": VERSION})
            elif path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [
                    {"id": srv.name, "object": "model", "created": int(time.time()),
                     "owned_by": "tensorrt_llm"}]})
            elif self.route_exists():
                self.send_json(405, {"detail": "Method Not Allowed"})
            else:
                self.send_json(404, {"detail": "Not Found"})

        def body(self) -> object:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw)
            except ValueError as e:
                raise Rejected([{"type": "json_invalid", "loc": ("body", 0),
                                 "msg": "JSON decode error", "input": {},
                                 "ctx": {"error": str(e).split(":")[0]}}]) from e

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            if path not in ("/v1/completions", "/v1/chat/completions"):
                if self.route_exists():
                    self.send_json(405, {"detail": "Method Not Allowed"})
                else:
                    self.send_json(404, {"detail": "Not Found"})
                return
            try:
                body = self.body()
                if path == "/v1/completions":
                    self.completions(body)
                else:
                    self.chat(body)
            except Rejected as e:
                self.error(str(e))

        def completions(self, body: object) -> None:
            b = body if isinstance(body, dict) else {}
            req = validate(body, COMPLETION_FIELDS, ("model", "prompt"), [
                ("top_logprobs" in b or "logprobs" in b, "returning log probs is not supported"),
                (bool(b.get("stream_options")) and not b.get("stream"),
                 "Stream options can only be defined when stream is true."),
                (bool(b.get("best_of")) and b.get("best_of", 0) < b.get("n", 1),
                 "best_of should not be smaller than n"),
                (bool(b.get("response_format")), "response_format is not supported"),
                (bool(b.get("suffix")), "suffix is not supported"),
                (bool(b.get("skip_special_tokens") or b.get("add_special_tokens")
                      or b.get("spaces_between_special_tokens")),
                 "special_tokens related settings are not supported"),
                (bool(b.get("stream_options")), "stream_options is not supported")])
            n, best_of = req.get("n") or 1, req.get("best_of") or req.get("n") or 1
            if (n > 1 or best_of > 1) and not req.get("use_beam_search"):
                raise Rejected([{"type": "value_error", "loc": ("body",), "msg": "Value error, "
                                 "Only support one response per prompt without beam search",
                                 "input": req}])
            prompt = req["prompt"]
            if isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                           and isinstance(prompt[0], int)):
                prompts = [prompt]
            else:
                prompts = list(prompt)
            texts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
            outs = [generate(t, req) for t in texts]
            model = req["model"]
            if req.get("stream"):
                def events():
                    for idx, (t, toks) in enumerate(zip(texts, outs, strict=True)):
                        for k, tok in enumerate(toks):
                            time.sleep(srv.delay)
                            text = (t + tok) if (req.get("echo") and k == 0) else tok
                            yield "data: " + json.dumps({
                                "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                                "created": int(time.time()), "model": model,
                                "choices": [{"index": idx, "text": text, "logprobs": None,
                                             "finish_reason": None, "stop_reason": None}],
                                "usage": None}, ensure_ascii=False,
                                separators=(",", ":")) + "\n\n"
                    yield "data: [DONE]\n\n"
                self.stream(events())
                return
            for toks in outs:
                time.sleep(srv.delay * len(toks))
            ptoks = sum(len(p) if isinstance(p, list) else count_tokens(p) for p in prompts)
            gtoks = sum(len(o) for o in outs)
            self.send_json(200, {
                "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": i, "text": (t if req.get("echo") else "") + "".join(o),
                             "logprobs": None, "finish_reason": None, "stop_reason": None}
                            for i, (t, o) in enumerate(zip(texts, outs, strict=True))],
                "usage": {"prompt_tokens": ptoks, "total_tokens": ptoks + gtoks,
                          "completion_tokens": gtoks}})

        def chat(self, body: object) -> None:
            b = body if isinstance(body, dict) else {}
            tool_choice = b.get("tool_choice", "none")
            req = validate(body, CHAT_FIELDS, ("messages", "model"), [
                (b.get("stream_options") is not None and not b.get("stream"),
                 "stream_options can only be set if stream is true"),
                ("tool_choice" in b and tool_choice != "none" and not isinstance(
                    tool_choice, dict), "Currently only named tools are supported."),
                ("tool_choice" in b and tool_choice != "none" and not b.get("tools"),
                 "When using `tool_choice`, `tools` must be set."),
                ("top_logprobs" in b or "logprobs" in b, "returning log probs is not supported"),
                (bool(b.get("best_of")) and b.get("best_of", 0) < b.get("n", 1),
                 "best_of should not be smaller than n"),
                (bool(b.get("logit_bias")), "logit bias is not supported"),
                (bool(b.get("response_format")), "response_format is not supported"),
                (bool(b.get("suffix")), "suffix is not supported"),
                (bool(b.get("skip_special_tokens") or b.get("add_special_tokens")
                      or b.get("spaces_between_special_tokens")),
                 "special_tokens related settings are not supported")])
            messages = req["messages"]
            if not isinstance(messages, list) or not all(
                    isinstance(m, dict) and "role" in m for m in messages):
                raise Rejected([{"type": "list_type", "loc": ("body", "messages"),
                                 "msg": "Input should be a valid list", "input": messages}])
            conversation = []
            for m in messages:
                content = m.get("content")
                if content is None:
                    continue
                if isinstance(content, list):
                    texts = []
                    for part in content:
                        if part.get("type") != "text":
                            self.error(f"{part.get('type')} is not supported")
                            return
                        texts.append(part.get("text", ""))
                    content = "\n".join(texts)
                conversation.append((m["role"], content))
            if not (srv.tok_config.get("chat_template") or req.get("chat_template")):
                self.error(NO_TEMPLATE)
                return
            add_gen = req.get("add_generation_prompt", True)
            role = "assistant" if add_gen else messages[-1]["role"]
            prompt = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in conversation) + (
                "<|im_start|>assistant\n" if add_gen else "")
            ptoks = count_tokens(prompt)
            toks = generate(prompt, req)
            model = req["model"]
            so = req.get("stream_options") or None
            include = bool(so) and so.get("include_usage", True) is not False
            continuous = include and so.get("continuous_usage_stats", True) is not False

            def usage(done: int) -> dict | None:
                return {"prompt_tokens": ptoks, "total_tokens": ptoks + done,
                        "completion_tokens": done} if continuous else None

            def chunk(delta: dict, done: int) -> str:
                return "data: " + json.dumps({
                    "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": {"role": None, "content": None,
                                                       "tool_calls": [], **delta},
                                 "logprobs": None, "finish_reason": None,
                                 "stop_reason": None}],
                    "usage": usage(done)}, ensure_ascii=False, separators=(",", ":")) + "\n\n"

            if req.get("stream"):
                def events():
                    yield chunk({"role": role}, 0)
                    for k, tok in enumerate(toks):
                        time.sleep(srv.delay)
                        yield chunk({"content": tok}, k + 1)
                    if include:
                        yield "data: " + json.dumps({
                            "id": f"chatcmpl-{uuid.uuid4().hex}",
                            "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model, "choices": [],
                            "usage": {"prompt_tokens": ptoks,
                                      "total_tokens": ptoks + len(toks),
                                      "completion_tokens": len(toks)}},
                            separators=(",", ":")) + "\n\n"
                self.stream(events())
                return
            time.sleep(srv.delay * len(toks))
            self.send_json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": role, "content": "".join(toks),
                                                     "tool_calls": []},
                             "logprobs": None, "finish_reason": None, "stop_reason": None}],
                "usage": {"prompt_tokens": ptoks, "total_tokens": ptoks + len(toks),
                          "completion_tokens": len(toks)}})

    return Handler


def main(argv: list[str]) -> int:
    opts = parse(argv)
    model_dir = str(opts["model_dir"])
    fmt = check_model(model_dir)
    if fmt == "TLLM_ENGINE":
        size = (Path(model_dir) / "rank0.engine").stat().st_size
        print(f"[TensorRT-LLM][INFO] Engine version {VERSION} found in the config file, "
              "assuming engine(s) built by new builder API.", flush=True)
        print(f"[TensorRT-LLM][INFO] Loaded engine size: {size >> 20} MiB", flush=True)
    tok_config = check_tokenizer(str(opts["tokenizer"] or model_dir))
    time.sleep(float(os.environ.get("FAKE_TRTLLM_LOAD_SECONDS", "0")))
    host, port = str(opts["host"] or "0.0.0.0"), int(opts["port"] or 8000)  # type: ignore[arg-type]
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        httpd = ThreadingHTTPServer((host, port), make_handler(Server(opts, tok_config)))
    except OSError as e:
        print(f"ERROR:    [Errno {e.errno}] error while attempting to bind on address "
              f"('{host}', {port}): {e.strerror.lower()}", file=sys.stderr, flush=True)
        return 1
    pid = os.getpid()
    for line in (f"INFO:     Started server process [{pid}]",
                 "INFO:     Waiting for application startup.",
                 "INFO:     Application startup complete.",
                 f"INFO:     Uvicorn running on http://{host}:{port} (Press CTRL+C to quit)"):
        print(line, file=sys.stderr, flush=True)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    httpd.serve_forever(poll_interval=0.1)
    httpd.server_close()
    for line in ("INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
                 "INFO:     Application shutdown complete.",
                 f"INFO:     Finished server process [{pid}]"):
        print(line, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
