# Test fake of TensorRT Edge-LLM 0.9.1's pybind module _edgellm_runtime (built with
# -DBUILD_PYTHON_BINDINGS=ON into build/pybind/, experimental/pybind/CMakeLists.txt:119-140),
# shipped as build/pybind/_edgellm_runtime.py in the fake runtime tarball: pure Python,
# stdlib only, importable with build/pybind on sys.path (or by file location, as
# experimental/server/engine.py:244-275 loads the real .so). Source: TensorRT-Edge-LLM
# 0.9.1 (7f061f2); lines of experimental/pybind/edgellm_pybind.cpp (pybind.cpp),
# cpp/runtime/llmInferenceRuntime.cpp (runtime.cpp), cpp/runtime/streaming.h/.cpp,
# cpp/runtime/llmRuntimeUtils.h/.cpp, cpp/runtime/config/llmEngineConfig.cpp (config.cpp),
# cpp/tokenizer/tokenizer.cpp, cpp/sampler/samplingUtils.cpp:
#   import       a build for another CUDA/TensorRT major than the device's: ImportError
#                "libcudart.so.13: cannot open shared object file: ..." (the loader's)
#   names        the classes, methods and attributes of pybind.cpp:272-580 (table in
#                tests/test_fakes_edgellm.py); NOT provided: image/audio loaders
#                (load_image_*, load_video_*, load_audio_buffer_from_bytes,
#                extract_mel_to_numpy) and the builders (LLMBuilder*, VisualBuilder*)
#   pybind       typed attributes: a wrong type raises TypeError "incompatible function
#                arguments"; a list or dict attribute is converted on every read and
#                write (stl.h), so `request.requests.append(r)` changes nothing and
#                assigning copies the elements; def_readonly attributes refuse writes;
#                FinishReason compares equal only to FinishReason (py::enum_, not
#                arithmetic); LLMGenerationRequest() is value-initialized: temperature,
#                top_p 0.0, top_k, max_generate_length 0 (llmRuntimeUtils.h:94-163)
#   LLMRuntime   (engine_dir, multimodal_engine_dir="", lora_weights_map={}) and the
#                drafting overload (pybind.cpp:476-486; it loads base_config.json,
#                draft_config.json and spec_base.engine, then decodes like the vanilla one:
#                no draft model runs here). In the order of pybind.cpp:105-125
#                and runtime.cpp:146-481: the CUDA stream (no GPU: "CUDA runtime error in
#                cudaStreamCreateWithFlags(...): no CUDA-capable device is detected"), the
#                plugin (trtUtils.h:60-92, only logged), embedding.safetensors
#                (llmRuntimeUtils.cpp:490-520), config.json / base_config.json
#                (config.cpp:460-560, 318-347: the required fields, max_input_len <=
#                max_kv_cache_capacity), llm.engine (engineExecutor.cpp:74-100,
#                trtUtils.cpp:155-183, 461-472: missing, empty, not a plan, built by
#                another TensorRT or for another GPU, its plugin not loaded), external
#                weight files (externalWeightManager.cpp:70-130: engine_dir / entry["file"],
#                no check), the tokenizer (tokenizer.cpp:60-137, 950-1026: tokenizer.json,
#                processed_chat_template.json with "roles"); a multimodal dir: no runner
#                here, so "No valid multimodal engine found in DIR" (runtime.cpp:414)
#   handle_request  runtime.cpp:525-1119 and pybind.cpp:127-133: a failure is logged and
#                raises RuntimeError("<src>/experimental/pybind/edgellm_pybind.cpp:131:
#                Failed to handle generation request"): empty batch, batch > engine max,
#                empty messages, logit_bias (1024 entries, ids in [0, vocab), |bias| <= 100,
#                inputLimits.h:47-49), images/audio without a runner, a finished or already
#                attached channel, a prompt longer than max_input_len (runtime.cpp:1717-1723),
#                no KV room left (713-724). max_generate_length is clamped to the KV room
#                with a warning. Chat template: Tokenizer::applyChatTemplate
#                (tokenizer.cpp:1029-1200) over processed_chat_template.json; the formatted
#                prompts are written back to request.formatted_requests
#   generation   per step, as runtime.cpp:922-975: cancellation at the top, one token per
#                active slot, decode + stop-string match (streaming.cpp:217-355), EOS /
#                length / stop override (843-920), chunks (streaming.cpp:357-416), a
#                channel attached but never finished on a later failure gets an ERROR
#                chunk (StreamChannelFinalizer, streaming.cpp:428-497). Reproduced quirks:
#                bytes held back for stop matching and tokens held by stream_interval are
#                not in the final chunk when the slot ends by EOS or length in that step;
#                the cancelled step still samples one token (vanillaDecoder.cpp:165-169)
#   sampling     greedy unless shouldUseNonGreedySampling (samplingUtils.cpp:25-33): top_k
#                1 is greedy; so are top_k <= 0, top_p >= 1 and temperature 0 or 1
# What the fake makes up (not NVIDIA's):
#   text         words drawn from a hash of the formatted prompt (greedy) or of the prompt,
#                the sampling parameters and a per-runtime request counter (sampled), 12 to
#                32 words then the tokenizer's EOS token; one token per word (see
#                fake_edgellm_common.Tokens for how prompts are counted)
#   timing       FAKE_EDGELLM_TOKEN_DELAY seconds per decode step (default 0), slept with
#                the GIL released, as the real handle_request releases it (pybind.cpp:488)
#   threads      the real runtime has no lock: two handle_request calls on one LLMRuntime
#                share its CUDA stream and KV cache. The fake detects the overlap and raises
#                RuntimeError("fake: concurrent handle_request on one LLMRuntime: ...")
#   logprobs     LogprobEntry values are invented (descending, the sampled token first)
"""TensorRT Edge LLM Python Bindings (test fake of the _edgellm_runtime pybind module)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import ClassVar


def _load_common():
    """fake_edgellm_common.py beside this file (works without sys.path, as engine.py
    loads the real module by file location)."""
    path = Path(__file__).resolve().parent / "fake_edgellm_common.py"
    name = f"_fake_edgellm_common_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_c = _load_common()
_missing_library = _c.missing_shared_library()
if _missing_library:
    raise ImportError(f"{_missing_library}: cannot open shared object file: No such file or "
                      "directory")

__doc__ = "TensorRT Edge LLM Python Bindings"  # pybind.cpp:274
_M = "_edgellm_runtime"
CONCURRENT = ("fake: concurrent handle_request on one LLMRuntime: the real runtime shares one "
              "CUDA stream and KV cache")
MAX_LOGPROBS = 50  # sampling.h:94
MAX_LOGIT_BIAS_TOKENS, MIN_LOGIT_BIAS, MAX_LOGIT_BIAS = 1024, -100.0, 100.0  # inputLimits.h
WORDS = ("the", "edge", "runs", "a", "small", "model", "on", "one", "chip", "and", "it", "says",
         "what", "you", "ask", "for", "with", "care", "each", "word", "is", "made", "here",
         "by", "rote", "not", "real", "text", "but", "kept", "to", "form", "so", "test", "can",
         "read", "its", "own", "lines", "then", "stop", "at", "end", "when", "told", "well",
         "fast", "slow", "now", "more", "less", "all", "some", "any", "this", "that", "from",
         "deep", "net", "bit", "byte", "load", "save", "give")


class _NoMatch(Exception):
    pass


def _incompatible(func: str, signature: str, args: tuple) -> TypeError:
    invoked = ", ".join(repr(a) for a in args)
    return TypeError(f"{func}(): incompatible function arguments. The following argument types "
                     f"are supported:\n    1. {signature}\n\nInvoked with: {invoked}")


# ------------------------------------------------------------------ pybind conversions

def _str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    raise _NoMatch


def _float(v):
    if isinstance(v, (int, float)):
        return float(v)
    raise _NoMatch


def _int(bits: int):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def conv(v):
        if isinstance(v, float) or not isinstance(v, int) or not lo <= v <= hi:
            raise _NoMatch
        return int(v)
    return conv


def _bool(v):
    if v is None:
        return False
    if isinstance(v, (bool, int, float)):
        return bool(v)
    raise _NoMatch


def _list(conv):
    def convert(v):
        if isinstance(v, (str, bytes, dict)) or not isinstance(v, (list, tuple)):
            raise _NoMatch
        return [conv(x) for x in v]
    return convert


def _dict(kconv, vconv):
    def convert(v):
        if not isinstance(v, dict):
            raise _NoMatch
        return {kconv(k): vconv(x) for k, x in v.items()}
    return convert


def _value_of(cls_name: str, nullable: bool = False, copy: bool = True):
    def convert(v):
        cls = globals()[cls_name]
        if v is None and nullable:
            return None
        if not isinstance(v, cls):
            raise _NoMatch
        return v._clone() if copy else v
    return convert


def _copy(v):
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, dict):
        return dict(v)
    if isinstance(v, _Value):
        return v._clone()
    return v


class _Field:
    """A def_readwrite / def_readonly attribute with pybind's type conversion."""

    def __init__(self, conv, type_name: str, default, readonly: bool = False) -> None:
        self.conv, self.type_name, self.default, self.readonly = conv, type_name, default, readonly

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        v = obj._values[self.name]
        return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v

    def __set__(self, obj, value) -> None:
        if self.readonly:
            raise AttributeError(f"property '{self.name}' of '{type(obj).__name__}' object has "
                                 "no setter")
        try:
            obj._values[self.name] = self.conv(value)
        except _NoMatch:
            raise _incompatible("", f"(self: {_M}.{type(obj).__name__}, arg0: {self.type_name}) "
                                "-> None", (obj, value)) from None


class _Value:
    """A C++ value type: copied when stored into another object."""

    def __init__(self) -> None:
        self._values = {name: _copy(f.default) for name, f in self._fields().items()}

    @classmethod
    def _fields(cls) -> dict[str, _Field]:
        out = {}
        for klass in reversed(cls.__mro__):
            out.update({k: v for k, v in vars(klass).items() if isinstance(v, _Field)})
        return out

    def _clone(self):
        new = object.__new__(type(self))
        new._values = {k: _copy(v) for k, v in self._values.items()}
        return new

    def __repr__(self) -> str:
        return f"<{_M}.{type(self).__name__} object at {hex(id(self))}>"


def _init_args(cls, names: list[str], convs: list, args: tuple, kwargs: dict) -> list | None:
    """Bind ARGS/KWARGS to NAMES through CONVS; None when they do not fit."""
    if len(args) > len(names):
        return None
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names or k in bound:
            return None
        bound[k] = v
    if set(bound) != set(names):
        return None
    try:
        return [conv(bound[n]) for n, conv in zip(names, convs, strict=True)]
    except _NoMatch:
        return None


def _no_ctor_match(cls_name: str, signatures: list[str], args: tuple, kwargs: dict) -> TypeError:
    listed = "\n".join(f"    {i}. {_M}.{cls_name}({s})" for i, s in enumerate(signatures, 1))
    invoked = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    return TypeError(f"__init__(): incompatible constructor arguments. The following argument "
                     f"types are supported:\n{listed}\n\nInvoked with: {invoked}")


# ------------------------------------------------------------------ messages, requests

class MessageContent(_Value):
    """Message::MessageContent (llmRuntimeUtils.h:46-52; pybind.cpp:344-354)."""
    type = _Field(_str, "str", "")
    content = _Field(_str, "str", "")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if not args and not kwargs:
            return
        bound = _init_args(self, ["type", "content"], [_str, _str], args, kwargs)
        if bound is None:
            raise _no_ctor_match("MessageContent", ["", "type: str, content: str"], args, kwargs)
        self._values["type"], self._values["content"] = bound


class Message(_Value):
    """Message (llmRuntimeUtils.h:44-54; pybind.cpp:356-366)."""
    role = _Field(_str, "str", "")
    contents = _Field(_list(_value_of("MessageContent")), f"List[{_M}.MessageContent]", [])

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if not args and not kwargs:
            return
        bound = _init_args(self, ["role", "contents"],
                           [_str, _list(_value_of("MessageContent"))], args, kwargs)
        if bound is None:
            raise _no_ctor_match("Message", ["", f"role: str, contents: List[{_M}.MessageContent]"],
                                 args, kwargs)
        self._values["role"], self._values["contents"] = bound


def create_text_message(role, text) -> Message:
    """pybind.cpp:368-379."""
    try:
        role, text = _str(role), _str(text)
    except _NoMatch:
        raise _incompatible("create_text_message", "(role: str, text: str) -> "
                            f"{_M}.Message", (role, text)) from None
    return Message(role, [MessageContent("text", text)])


class ImageData(_Value):
    """imageUtils::ImageData as bound (pybind.cpp:308-314); the fake has no image loader."""
    width = _Field(_int(64), "int", 0, readonly=True)
    height = _Field(_int(64), "int", 0, readonly=True)
    channels = _Field(_int(64), "int", 0, readonly=True)
    frames = _Field(_int(64), "int", 0, readonly=True)
    fps = _Field(_float, "float", 0.0)


class AudioData(_Value):
    """audioUtils::AudioData as bound (pybind.cpp:326-328)."""
    sample_rate = _Field(_int(32), "int", 0)


class LogprobEntry(_Value):
    """pybind.cpp:387-390 (piece as bytes)."""
    token_id = _Field(_int(32), "int", 0, readonly=True)
    logprob = _Field(_float, "float", 0.0, readonly=True)
    piece = _Field(lambda v: v, "bytes", b"", readonly=True)

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(f"{_M}.LogprobEntry: No constructor defined!")


def _logprob_entry(token_id: int, logprob: float, piece: bytes) -> LogprobEntry:
    e = object.__new__(LogprobEntry)
    e._values = {"token_id": token_id, "logprob": logprob, "piece": piece}
    return e


class FormattedRequest(_Value):
    """LLMGenerationRequest::FormattedRequest (pybind.cpp:392-395)."""
    formatted_system_prompt = _Field(_str, "str", "")
    formatted_complete_request = _Field(_str, "str", "")


class Request(_Value):
    """LLMGenerationRequest::Request (llmRuntimeUtils.h:106-125; pybind.cpp:397-409)."""
    messages = _Field(_list(_value_of("Message")), f"List[{_M}.Message]", [])
    image_buffers = _Field(_list(_value_of("ImageData")), f"List[{_M}.ImageData]", [])
    audio_buffers = _Field(_list(_value_of("AudioData")), f"List[{_M}.AudioData]", [])
    stop_strings = _Field(_list(_str), "List[str]", [])
    logit_bias = _Field(_dict(_int(32), _float), "Dict[int, float]", {})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        if not args and not kwargs:
            return
        bound = _init_args(self, ["messages"], [_list(_value_of("Message"))], args, kwargs)
        if bound is None:
            raise _no_ctor_match("Request", ["", f"messages: List[{_M}.Message]"], args, kwargs)
        self._values["messages"] = bound[0]


# ------------------------------------------------------------------ streaming

class FinishReason:
    """py::enum_<FinishReason> (streaming.h:52-68; pybind.cpp:414-420): not arithmetic, so a
    member equals only a FinishReason of the same value."""
    __slots__ = ("_value",)
    _NAMES: ClassVar[dict[int, str]] = {0: "NOT_FINISHED", 1: "END_ID", 2: "LENGTH",
                                        3: "CANCELLED", 4: "ERROR", 5: "STOP_WORDS"}

    def __init__(self, value) -> None:
        if isinstance(value, float) or not isinstance(value, int):
            raise _incompatible("__init__", f"(self: {_M}.FinishReason, value: int) -> None",
                                (value,))
        self._value = int(value)

    @property
    def name(self) -> str:
        return self._NAMES.get(self._value, "???")

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other) -> bool:
        return type(other) is FinishReason and other._value == self._value

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<FinishReason.{self.name}: {self._value}>"

    def __str__(self) -> str:
        return f"FinishReason.{self.name}"


FinishReason.__members__ = {n: FinishReason(v) for v, n in FinishReason._NAMES.items()}
for _name, _member in FinishReason.__members__.items():
    setattr(FinishReason, _name, _member)
_NOT_FINISHED, _END_ID, _LENGTH, _CANCELLED, _ERROR, _STOP_WORDS = (
    FinishReason(v) for v in range(6))


class StreamChunk(_Value):
    """streaming.h:83-92; pybind.cpp:422-428 (all read-only)."""
    token_ids = _Field(_list(_int(32)), "List[int]", [], readonly=True)
    text = _Field(_str, "str", "", readonly=True)
    finished = _Field(_bool, "bool", False, readonly=True)
    reason = _Field(lambda v: v, f"{_M}.FinishReason", _NOT_FINISHED, readonly=True)
    logprobs = _Field(lambda v: v, f"List[List[{_M}.LogprobEntry]]", [], readonly=True)


class StreamChannel:
    """streaming.h:151-235, streaming.cpp:38-154; pybind.cpp:430-444. Thread-safe."""

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(f"{_M}.StreamChannel: No constructor defined!")

    @staticmethod
    def create() -> StreamChannel:
        ch = object.__new__(StreamChannel)
        ch._cv = threading.Condition()
        ch._pending: deque[StreamChunk] = deque()
        ch._finished = ch._cancelled = ch._attached = False
        ch._reason = _NOT_FINISHED
        ch._original_idx = -1
        ch._interval = 1
        ch._skip_special = True
        return ch

    def try_pop(self) -> StreamChunk | None:
        with self._cv:
            return self._pending.popleft() if self._pending else None

    def wait_pop(self, timeout_ms) -> StreamChunk | None:
        if isinstance(timeout_ms, float) or not isinstance(timeout_ms, int):
            raise _incompatible("wait_pop", f"(self: {_M}.StreamChannel, timeout_ms: int) -> "
                                f"Optional[{_M}.StreamChunk]", (self, timeout_ms))
        with self._cv:
            ready = self._cv.wait_for(
                lambda: self._pending or self._finished or self._cancelled,
                max(timeout_ms, 0) / 1000)
            if not ready or not self._pending:
                return None
            return self._pending.popleft()

    def is_finished(self) -> bool:
        return self._finished

    def get_reason(self) -> FinishReason:
        return self._reason if self._finished else _NOT_FINISHED

    def is_cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._cv:
            self._cancelled = True
            self._cv.notify_all()

    def set_stream_interval(self, n) -> None:
        self._interval = max(1, _check(n, _int(32), "set_stream_interval", "n: int", self))

    def get_stream_interval(self) -> int:
        return self._interval

    def set_skip_special_tokens(self, skip) -> None:
        self._skip_special = _check(skip, _bool, "set_skip_special_tokens", "skip: bool", self)

    def get_skip_special_tokens(self) -> bool:
        return self._skip_special

    # producer side (friends of StreamChannel in C++)
    def _push(self, chunk: StreamChunk) -> None:
        with self._cv:
            self._pending.append(chunk)
            self._cv.notify()

    def _finish(self, reason: FinishReason) -> None:
        with self._cv:
            if self._finished:
                return
            self._reason, self._finished = reason, True
            self._cv.notify_all()


def _check(value, conv, func: str, params: str, obj):
    try:
        return conv(value)
    except _NoMatch:
        raise _incompatible(func, f"(self: {_M}.{type(obj).__name__}, {params}) -> None",
                            (obj, value)) from None


class LLMGenerationRequest(_Value):
    """llmRuntimeUtils.h:94-163; pybind.cpp:449-464. Default-constructed by py::init<>():
    the sampling fields read 0."""
    requests = _Field(_list(_value_of("Request")), f"List[{_M}.Request]", [])
    formatted_requests = _Field(_list(_value_of("FormattedRequest")),
                                f"List[{_M}.FormattedRequest]", [])
    temperature = _Field(_float, "float", 0.0)
    top_p = _Field(_float, "float", 0.0)
    top_k = _Field(_int(64), "int", 0)
    max_generate_length = _Field(_int(64), "int", 0)
    lora_weights_name = _Field(_str, "str", "")
    save_system_prompt_kv_cache = _Field(_bool, "bool", False)
    apply_chat_template = _Field(_bool, "bool", True)
    add_generation_prompt = _Field(_bool, "bool", True)
    enable_thinking = _Field(_bool, "bool", False)
    disable_spec_decode = _Field(_bool, "bool", False)
    stream_channels = _Field(_list(_value_of("StreamChannel", nullable=True, copy=False)),
                             f"List[{_M}.StreamChannel]", [])
    num_logprobs = _Field(_int(32), "int", 0)


class LLMGenerationResponse(_Value):
    """llmRuntimeUtils.h:167-181; pybind.cpp:466-471."""
    output_ids = _Field(_list(_list(_int(32))), "List[List[int]]", [])
    output_texts = _Field(_list(_str), "List[str]", [])
    logprobs = _Field(_list(_list(_list(_value_of("LogprobEntry")))),
                      f"List[List[List[{_M}.LogprobEntry]]]", [])
    finish_reasons = _Field(lambda v: v, f"List[{_M}.FinishReason]", [], readonly=True)


def create_generation_request(batch_messages, temperature=1.0, top_p=0.8, top_k=50,
                              max_generate_length=256, apply_chat_template=True,
                              add_generation_prompt=True, enable_thinking=False,
                              lora_weights_name="", save_system_prompt_kv_cache=False,
                              disable_spec_decode=False, logit_bias=None, num_logprobs=0):
    """pybind.cpp:546-579 (defaults as declared there)."""
    request = LLMGenerationRequest()
    request.temperature, request.top_p, request.top_k = temperature, top_p, top_k
    request.max_generate_length = max_generate_length
    request.apply_chat_template = apply_chat_template
    request.add_generation_prompt = add_generation_prompt
    request.enable_thinking = enable_thinking
    request.lora_weights_name = lora_weights_name
    request.save_system_prompt_kv_cache = save_system_prompt_kv_cache
    request.disable_spec_decode = disable_spec_decode
    request.num_logprobs = num_logprobs
    batch = _list(_list(_value_of("Message")))(batch_messages)
    reqs = []
    for messages in batch:
        req = Request(messages)
        req.logit_bias = logit_bias or {}
        reqs.append(req)
    request.requests = reqs
    return request


# ------------------------------------------------------------------ metrics, profiling

_profiling = {"enabled": False}


def set_profiling_enabled(enabled) -> None:
    _profiling["enabled"] = _bool(enabled)


def get_profiling_enabled() -> bool:
    return _profiling["enabled"]


class _Metrics(_Value):
    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(f"{_M}.{type(self).__name__}: No constructor defined!")

    def get_total_runs(self) -> int:
        return self._values["_runs"]


def _metrics(cls):
    m = object.__new__(cls)
    m._values = {name: 0 for name in cls._fields()} | {"_runs": 0}
    return m


class LLMPrefillMetrics(_Metrics):
    reused_tokens = _Field(_int(64), "int", 0, readonly=True)
    computed_tokens = _Field(_int(64), "int", 0, readonly=True)


class LLMGenerationMetrics(_Metrics):
    generated_tokens = _Field(_int(64), "int", 0, readonly=True)


class SpecDecodeGenerationMetrics(_Metrics):
    total_iterations = _Field(_int(64), "int", 0, readonly=True)
    total_generated_tokens = _Field(_int(64), "int", 0, readonly=True)


class MultimodalMetrics(_Metrics):
    total_images = _Field(_int(64), "int", 0, readonly=True)
    total_image_tokens = _Field(_int(64), "int", 0, readonly=True)


# ------------------------------------------------------------------ runtime

def _where(rel: str, line: int, func: str) -> str:
    return f"{Path(rel).name}:{line}:{func}"


def _fail(rel: str, line: int, msg: str) -> RuntimeError:
    return RuntimeError(_c.ellm_check_message(rel, line, msg))


def _greedy(temperature: float, top_k: int, top_p: float) -> bool:
    """not shouldUseNonGreedySampling (samplingUtils.cpp:25-33)."""
    if top_k == 1:
        return True
    return not ((top_k > 1) or (top_p < 1.0 - 1e-6) or
                (temperature > 1e-3 and abs(temperature - 1.0) > 1e-3))


def _stop_match(buffer: str, stops: list[str], max_len: int, final: bool) -> tuple[str, str, bool]:
    """applyStopStringMatch (streaming.cpp:217-274): (emitted, kept buffer, matched)."""
    if max_len == 0:
        return buffer, "", False
    hits = [buffer.find(s) for s in stops if s and buffer.find(s) >= 0]
    if hits:
        return buffer[:min(hits)], "", True
    if final:
        return buffer, "", False
    hold = max_len - 1
    if len(buffer) <= hold:
        return "", buffer, False
    return buffer[:len(buffer) - hold], buffer[len(buffer) - hold:], False


class _Slot:
    def __init__(self, index: int, prompt: list[int], stops: list[str], channel) -> None:
        self.index, self.tokens, self.prompt_len = index, list(prompt), len(prompt)
        self.stops = stops
        self.max_stop = max((len(s) for s in stops), default=0)
        self.channel = channel
        self.sent = self.last_emitted = len(prompt)
        self.stop_buffer = self.pending = ""
        self.stop_matched = False
        self.finished = False
        self.reason = _NOT_FINISHED
        self.logprobs: list[list[LogprobEntry]] = []
        self.logprobs_emitted = 0

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_len


class LLMRuntime:
    """PyLLMRuntime (pybind.cpp:105-174, 476-500) over LLMInferenceRuntime."""

    def __init__(self, *args, **kwargs) -> None:
        vanilla = self._with_defaults(args, kwargs)
        drafting = None
        if vanilla is None:
            bound = _init_args(self, ["engine_dir", "multimodal_engine_dir", "lora_weights_map",
                                      "draft_top_k", "draft_step", "verify_tree_size"],
                               [_str, _str, _dict(_str, _str), _int(32), _int(32), _int(32)],
                               args, kwargs)
            if bound is None:
                raise _no_ctor_match("LLMRuntime", [
                    "engine_dir: str, multimodal_engine_dir: str = '', lora_weights_map: "
                    "Dict[str, str] = {}",
                    "engine_dir: str, multimodal_engine_dir: str, lora_weights_map: Dict[str, "
                    "str], draft_top_k: int, draft_step: int, verify_tree_size: int"],
                    args, kwargs)
            vanilla, drafting = bound[:3], bound[3:]
        self._busy = threading.Lock()
        self._counter = 0
        self._prefill = _metrics(LLMPrefillMetrics)
        self._generation = _metrics(LLMGenerationMetrics)
        self._spec = _metrics(SpecDecodeGenerationMetrics)
        self._multimodal = _metrics(MultimodalMetrics)
        self._load(*vanilla, drafting)

    def _with_defaults(self, args: tuple, kwargs: dict) -> list | None:
        names = ["engine_dir", "multimodal_engine_dir", "lora_weights_map"]
        if len(args) > len(names):
            return None
        bound = dict(zip(names, args, strict=False))
        if any(k not in names or k in bound for k in kwargs):
            return None
        bound.update(kwargs)
        bound.setdefault("multimodal_engine_dir", "")
        bound.setdefault("lora_weights_map", {})
        if "engine_dir" not in bound:
            return None
        try:
            return [_str(bound["engine_dir"]), _str(bound["multimodal_engine_dir"]),
                    _dict(_str, _str)(bound["lora_weights_map"])]
        except _NoMatch:
            return None

    # -------------------------------------------------------------- loading

    def _load(self, engine_dir: str, multimodal_dir: str, lora: dict, drafting) -> None:
        dev = _c.device()
        if int(dev["gpus"]) < 1:  # CudaStreamWrapper, pybind.cpp:57-60
            raise RuntimeError("CUDA runtime error in cudaStreamCreateWithFlags(&mStream, "
                               "cudaStreamNonBlocking): no CUDA-capable device is detected")
        plugin_loaded = _c.load_plugin()
        root = Path(engine_dir)
        self._embedding_check(root / "embedding.safetensors")
        base_config = root / ("base_config.json" if drafting else "config.json")
        if drafting:
            for name, value in zip(("draftingTopK", "draftingStep", "verifySize"), drafting,
                                   strict=True):
                if value <= 0:
                    raise _fail("cpp/runtime/config/deploymentConfig.cpp", 258,
                                f"drafting.{name}={value} must be positive (>= 1).")
        self._config = self._parse_config(base_config)
        if drafting:
            self._parse_config(root / "draft_config.json")
        if self._config.get("num_deepstack_features", 0) > 0 and not multimodal_dir:
            raise _fail("cpp/runtime/llmInferenceRuntime.cpp", 171,
                        "--multimodalEngineDir is required for VLM engine.")
        engine = root / ("spec_base.engine" if drafting else "llm.engine")
        self._engine = self._deserialize(engine, plugin_loaded, dev)
        bc = self._config["builder_config"]
        self.max_batch, self.max_input = bc["max_batch_size"], bc["max_input_len"]
        self.kv_capacity = bc["max_kv_cache_capacity"]
        self.vocab_size = self._config["vocab_size"]
        _c.log("INFO", f"Runtime batch size set to: {self.max_batch} (from engine bundle)",
               _where("llmInferenceRuntime.cpp", 201, "initializeCommon"))
        self._external_weights(root, base_config)
        self._load_tokenizer(root, engine_dir)
        if multimodal_dir:
            raise _fail("cpp/runtime/llmInferenceRuntime.cpp", 414,
                        f"No valid multimodal engine found in {multimodal_dir}")
        self._has_draft = bool(drafting)

    def _embedding_check(self, path: Path) -> None:
        rel = "cpp/runtime/llmRuntimeUtils.cpp"
        if not path.exists():
            raise _fail(rel, 492, f"Embedding file not found: {path}")
        try:
            header = _c.safetensors_header(path)
        except (OSError, ValueError):
            raise _fail(rel, 496, f"Failed to load embedding file: {path}") from None
        tensor = header.get("embedding")
        if not isinstance(tensor, dict):
            raise _fail(rel, 515, f"Embedding file missing 'embedding' tensor: {path}")
        if len(tensor.get("shape", [])) != 2:
            raise _fail(rel, 518, f"Embedding tensor must be 2D, got {len(tensor.get('shape', []))}"
                        " dimensions")

    def _parse_config(self, path: Path) -> dict:
        """parseEngineConfig (config.cpp:460-560) and parseCoreFields (318-347)."""
        rel = "cpp/runtime/config/llmEngineConfig.cpp"
        _c.log("INFO", f"reading {path}", _where(rel, 462, "parseEngineConfig"))
        try:
            text = path.read_text()
        except OSError:
            raise _fail(rel, 465, f"parseEngineConfig: failed to open {path}") from None
        try:
            config = json.loads(text)
        except ValueError as e:
            raise RuntimeError(f"parseEngineConfig: JSON parse error in {path}: "
                               f"[json.exception.parse_error.101] parse error at line {e.lineno}, "
                               f"column {e.colno}: syntax error while parsing value") from None
        version = config.get("edgellm_version", "")
        if not version:
            _c.log("WARNING", f"Model does not have edgellm_version. Current runtime version: "
                   f"{_c.runtime_version()}", _where("version.cpp", 79, "checkVersion"))
        elif version != _c.runtime_version():
            _c.log("WARNING", f"Model version {version} does not match runtime version "
                   f"{_c.runtime_version()}. Consider re-exporting or re-building.",
                   _where("version.cpp", 103, "checkVersion"))
        spec = config.get("spec_decode_type", "none")
        if spec not in ("none", "mtp", "eagle3", "dflash", "gemma4_mtp"):
            raise RuntimeError(f"parseEngineConfig: invalid spec_decode_type '{spec}'. Allowed "
                               "values: none, mtp, eagle3, dflash, gemma4_mtp.")
        role = config.get("engine_role", "llm")
        if role not in ("llm", "base", "draft"):
            raise RuntimeError(f"parseEngineConfig: invalid engine_role '{role}'. Allowed values: "
                               "llm, base, draft.")
        if role == "llm" and spec != "none":
            raise _fail(rel, 489, "parseEngineConfig: engine_role=llm requires "
                        "spec_decode_type=none.")

        def required(obj: dict, key: str) -> int:
            if key not in obj:
                raise _fail(rel, 51, f"parseEngineConfig: missing required field '{key}'")
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RuntimeError("[json.exception.type_error.302] type must be number, but is "
                                   f"{type(value).__name__}")
            return int(value)
        for key in ("num_hidden_layers", "num_key_value_heads", "head_dim", "hidden_size"):
            required(config, key)
        if "kv_cache_dtype" not in config:
            raise _fail(rel, 102, "parseEngineConfig: config.json missing required field "
                        "'kv_cache_dtype'. Re-export the model with the latest llm_export.py to "
                        "record it.")
        if config["kv_cache_dtype"] not in ("fp16", "fp8", "int8", "bf16", "fp32"):
            raise RuntimeError(f"parseEngineConfig: invalid kv_cache_dtype "
                               f"'{config['kv_cache_dtype']}'. Allowed values: fp16, fp8, int8, "
                               "bf16, fp32. Re-export the engine with a supported value.")
        if "builder_config" not in config:
            raise _fail(rel, 327, "parseEngineConfig: missing required 'builder_config' section")
        bc = config["builder_config"]
        limits = {k: required(bc, k) for k in ("max_batch_size", "max_input_len",
                                                "max_kv_cache_capacity")}
        for key in ("num_hidden_layers", "num_key_value_heads", "head_dim", "hidden_size"):
            if required(config, key) <= 0:
                raise _fail(rel, 58, f"parseEngineConfig: invalid {key}: {config[key]} (must be "
                            "positive)")
        for key, value in limits.items():
            if value <= 0:
                raise _fail(rel, 58, f"parseEngineConfig: invalid {key}: {value} (must be "
                            "positive)")
        if limits["max_input_len"] > limits["max_kv_cache_capacity"]:
            raise _fail(rel, 344, f"parseEngineConfig: max_input_len ({limits['max_input_len']}) "
                        "cannot be greater than max_kv_cache_capacity "
                        f"({limits['max_kv_cache_capacity']})")
        required(config, "vocab_size")
        return config

    def _deserialize(self, path: Path, plugin_loaded: bool, dev: dict) -> dict:
        """EngineExecutor (engineExecutor.cpp:74-100), FileStreamReaderV2 and
        deserializeCudaEngineFromFile (trtUtils.cpp:155-183, 461-472)."""
        _c.log("INFO", f"loading engine file: {path}", _where("engineExecutor.cpp", 76,
                                                             "EngineExecutor"))

        def fail(msg: str) -> RuntimeError:
            _c.log("ERROR", f"Failed to initialize base EngineExecutor: {msg}",
                   _where("llmInferenceRuntime.cpp", 186, "initializeCommon"))
            return RuntimeError(f"Failed to initialize base EngineExecutor: {msg}")
        try:
            size = path.stat().st_size
            with open(path, "rb"):
                pass
        except OSError as e:
            raise fail(f"Failed to open engine file: {path}: {os.strerror(e.errno)}") from None
        if size <= 0:
            raise fail(f"Engine file is empty: {path}")
        header = _c.read_tagged(path, _c.ENGINE_MAGIC) if path.is_file() else None
        problems = []
        if header is None:
            problems = ["IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                        "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag "
                        "does not match)"]
        elif header["tensorrt_version"] != dev["tensorrt"]:
            problems = ["IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The "
                        "engine plan file is not compatible with this version of TensorRT, "
                        f"expecting library version {dev['tensorrt']} got "
                        f"{header['tensorrt_version']}, please rebuild.)"]
        elif header["compute_capability"] != dev["sm"]:
            problems = ["IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The "
                        "engine plan file is generated on an incompatible device, expecting "
                        f"compute {dev['sm']} got compute {header['compute_capability']}, please "
                        "rebuild.)"]
        elif not plugin_loaded:
            problems = [*_c.missing_plugin_messages(),
                        "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                        "(Serialization assertion creator failed.Cannot deserialize plugin since "
                        "corresponding IPluginCreator not found in Plugin Registry)"]
        if problems:
            for msg in problems:
                _c.log("ERROR", msg, "TensorRT")
            _c.log("ERROR", f"Failed to deserialize TensorRT engine from file: {path}",
                   _where("trtUtils.cpp", 468, "deserializeCudaEngineFromFile"))
            raise fail(f"Failed to deserialize TensorRT engine from file: {path}")
        _c.log("INFO", f"Base EngineExecutor successfully loaded from {path}.",
               _where("llmInferenceRuntime.cpp", 189, "initializeCommon"))
        return header

    def _external_weights(self, root: Path, config_path: Path) -> None:
        """ExternalWeightManager::load (externalWeightManager.cpp:70-130): no path check."""
        rel = "cpp/runtime/state/externalWeightManager.cpp"
        files = self._config.get("external_weight_files", [])
        if not isinstance(files, list):
            raise _fail(rel, 87, f"external_weight_files must be an array when present in "
                        f"{config_path}")
        for entry in files:
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)):
                raise RuntimeError(f"Malformed external weight file entry in {config_path}: "
                                   f"{json.dumps(entry)}")
            path = root / entry["file"]
            try:
                header = _c.safetensors_header(path)
            except (OSError, ValueError):
                raise _fail(rel, 106, f"Failed to load external weight file: {path}") from None
            for name in entry.get("tensors", []):
                if name not in header:
                    raise _fail(rel, 121, f"Expected external weight tensor {name} not found in "
                                f"{path}")

    def _load_tokenizer(self, root: Path, engine_dir: str) -> None:
        """Tokenizer::loadFromHF (tokenizer.cpp:60-137) and loadChatTemplate (950-1026)."""
        where = _where("tokenizer.cpp", 85, "loadFromHF")
        _c.log("INFO", f"Start loading tokenizer from model directory: {engine_dir}",
               _where("llmInferenceRuntime.cpp", 365, "initializeCommon"))
        fail = _fail("cpp/runtime/llmInferenceRuntime.cpp", 366,
                     f"Failed to load tokenizer from model directory: {engine_dir}")
        try:
            tokenizer = json.loads((root / "tokenizer.json").read_text())
        except FileNotFoundError:
            _c.log("ERROR", f"tokenizer.json not found in {engine_dir}", where)
            raise fail from None
        except (OSError, ValueError):
            _c.log("ERROR", "Failed to parse tokenizer configuration", where)
            raise fail from None
        try:
            tok_config = json.loads((root / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            _c.log("WARNING", "tokenizer_config.json not found, using default special token "
                   "configuration", where)
            tok_config = {}
        template_path = root / "processed_chat_template.json"
        try:
            template = json.loads(template_path.read_text())
            if not isinstance(template.get("roles"), dict):
                raise KeyError
        except (OSError, ValueError, KeyError, AttributeError):
            _c.log("ERROR", "Please ensure processed_chat_template.json exists in the "
                   "model/engine directory, and it follows the format specified in the "
                   "documentation.", where)
            raise fail from None
        self._tokens = _c.Tokens(tokenizer, tok_config, self.vocab_size)
        self._template = template
        # the generated vocabulary: a fixed id per word piece, so text is the same in any run
        pieces = sorted({p for w in WORDS for p in (w.capitalize(), " " + w,
                                                    w.capitalize() + ".", " " + w + ".")})
        self._id_of = {p: i % max(self._tokens.base, 1) for i, p in enumerate(pieces)}
        self._piece_of = {i: p for p, i in self._id_of.items()}
        self._piece_of.update({i: t for t, i in self._tokens.special.items()})
        _c.log("INFO", f"Tokenizer successfully loaded from model directory: {engine_dir}",
               _where("llmInferenceRuntime.cpp", 367, "initializeCommon"))

    # -------------------------------------------------------------- API

    def capture_decoding_cuda_graph(self) -> bool:
        return True

    def save_system_prompt_kv_cache(self, prompt, lora_weights_name="") -> bool:
        _str(prompt)
        return True

    def has_draft_model(self) -> bool:
        return self._has_draft

    def get_prefill_metrics(self) -> LLMPrefillMetrics:
        return self._prefill

    def get_generation_metrics(self) -> LLMGenerationMetrics:
        return self._generation

    def get_spec_decode_generation_metrics(self) -> SpecDecodeGenerationMetrics:
        return self._spec

    get_eagle_generation_metrics = get_spec_decode_generation_metrics  # pybind.cpp:498

    def get_multimodal_metrics(self) -> MultimodalMetrics:
        return self._multimodal._clone()

    def handle_request(self, request) -> LLMGenerationResponse:
        """PyLLMRuntime::handleRequest (pybind.cpp:127-133)."""
        if not isinstance(request, LLMGenerationRequest):
            raise _incompatible("handle_request", f"(self: {_M}.LLMRuntime, request: "
                                f"{_M}.LLMGenerationRequest) -> {_M}.LLMGenerationResponse",
                                (self, request))
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(CONCURRENT)
        try:
            response = LLMGenerationResponse()
            if not self._handle(request, response):
                raise _fail("experimental/pybind/edgellm_pybind.cpp", 131,
                            "Failed to handle generation request")
            return response
        finally:
            self._busy.release()

    # -------------------------------------------------------------- generation

    def _error(self, msg: str, line: int, func: str = "handleRequest") -> bool:
        _c.log("ERROR", msg, _where("llmInferenceRuntime.cpp", line, func))
        return False

    def _validate(self, request: LLMGenerationRequest) -> bool:
        """validateRequestConfig (runtime.cpp:1121-1204) and validateStreamingSubmission
        (streaming.cpp:171-201)."""
        reqs = request._values["requests"]
        if not reqs:
            return self._error("Empty request with no requests", 1133, "validateRequestConfig")
        if len(reqs) > self.max_batch:
            return self._error(f"Requested batch size {len(reqs)} exceeds maximum supported "
                               f"batch size {self.max_batch}", 1139, "validateRequestConfig")
        for i, req in enumerate(reqs):
            if not req._values["messages"]:
                return self._error(f"Request {i} in batch is empty: no messages provided", 1147,
                                   "validateRequestConfig")
            bias = req._values["logit_bias"]
            if len(bias) > MAX_LOGIT_BIAS_TOKENS:
                return self._error(f"Request {i} has too many logit_bias entries: {len(bias)} "
                                   f"(max: {MAX_LOGIT_BIAS_TOKENS})", 1153, "validateRequestConfig")
            for token, value in bias.items():
                if not 0 <= token < self.vocab_size:
                    return self._error(f"Request {i} logit_bias token ID {token} is outside the "
                                       f"full vocabulary range [0, {self.vocab_size})", 1161,
                                       "validateRequestConfig")
                if not math.isfinite(value) or not MIN_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
                    return self._error(f"Request {i} logit_bias for token ID {token} must be "
                                       f"finite and in [-100.0, 100.0], got {value:.6f}", 1168,
                                       "validateRequestConfig")
        if any(r._values["audio_buffers"] for r in reqs):
            return self._error("Request contains audio input, but this runtime does not have an "
                               "audio runner.", 1184, "validateRequestConfig")
        if any(r._values["image_buffers"] for r in reqs):
            return self._error("Request contains vision input, but this runtime does not have a "
                               "vision runner.", 1189, "validateRequestConfig")
        channels = request._values["stream_channels"]
        if channels:
            where = _where("streaming.cpp", 179, "validateStreamingSubmission")
            if len(channels) != len(reqs):
                return self._error_at(f"streamChannels size ({len(channels)}) must equal "
                                      f"requests size ({len(reqs)})", where)
            for ch in channels:
                if ch is None:
                    continue
                if ch._finished:
                    return self._error_at("StreamChannel already finished — create a new "
                                          "channel per request", where)
                if ch._attached:
                    return self._error_at("StreamChannel already attached to a live request — "
                                          "concurrent reuse forbidden", where)
        return True

    def _error_at(self, msg: str, where: str) -> bool:
        _c.log("ERROR", msg, where)
        return False

    def _format(self, req: Request, apply: bool, add_prompt: bool,
                thinking: bool) -> tuple[str, str]:
        """Tokenizer::applyChatTemplate (tokenizer.cpp:1029-1200)."""
        t = self._template
        roles = {k: (v or {}) for k, v in t["roles"].items()}
        contents = t.get("content_types") or {}
        messages = req._values["messages"]
        lead = messages[0]
        system, explicit = "", False
        if lead._values["role"] == "system":
            explicit = True
            system = "".join(c._values["content"] for c in lead._values["contents"]
                             if c._values["type"] == "text")
        elif apply and t.get("default_system_prompt"):
            explicit, system = True, t["default_system_prompt"]
        prefix = t.get("prompt_prefix", "")
        sys_prompt = complete = ""
        if system or (explicit and apply):
            if apply:
                role = roles.get("system")
                sys_prompt = prefix + (role.get("prefix", "") + system + role.get("suffix", "")
                                       if role is not None else system)
            else:
                sys_prompt = system
            complete = sys_prompt
        elif apply and prefix:
            complete = prefix
        for i, msg in enumerate(messages):
            role_name = msg._values["role"]
            if role_name == "system" and i == 0:
                continue
            role = roles.get(role_name)
            if role is None:
                _c.log("WARNING", f"Unknown role: {role_name}",
                       _where("tokenizer.cpp", 1105, "applyChatTemplate"))
                continue
            text = role.get("prefix", "") if apply else ""
            for item in msg._values["contents"]:
                kind, content = item._values["type"], item._values["content"]
                if kind == "text":
                    text += content.strip(" \t\n\r") if t.get("trim_content") else content
                elif kind in contents and (contents[kind] or {}).get("format"):
                    text += contents[kind]["format"]
                else:
                    _c.log("WARNING", f"Unknown content type: {kind}",
                           _where("tokenizer.cpp", 1167, "applyChatTemplate"))
            if apply:
                text += role.get("suffix", "")
            complete += text
        if apply and add_prompt:
            if thinking and t.get("generation_prompt_thinking"):
                complete += t["generation_prompt_thinking"]
            elif t.get("generation_prompt"):
                complete += t["generation_prompt"]
        return sys_prompt, complete

    def _next_token(self, slot: _Slot, seed: str) -> int:
        n = slot.generated
        h = hashlib.sha256(seed.encode()).digest()
        natural = 12 + h[0] % 21
        if n >= natural:
            return self._tokens.eos_id
        word = WORDS[hashlib.sha256(f"{seed}/{n}".encode()).digest()[0] % len(WORDS)]
        piece = word.capitalize() if n == 0 else " " + word
        if n % 7 == 6:
            piece += "."
        return self._id_of[piece]

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        special = set(self._tokens.special.values())
        return "".join(self._piece_of.get(i, "") for i in ids
                       if not (skip_special and i in special))

    def _handle(self, request: LLMGenerationRequest, response: LLMGenerationResponse) -> bool:
        """LLMInferenceRuntime::handleRequest (runtime.cpp:525-1119), vanilla decoding."""
        if not self._validate(request):
            return False
        v = request._values
        reqs, channels = v["requests"], v["stream_channels"]
        formatted = []
        for req in reqs:
            sys_prompt, complete = self._format(req, v["apply_chat_template"],
                                                v["add_generation_prompt"], v["enable_thinking"])
            fr = FormattedRequest()
            fr._values.update(formatted_system_prompt=sys_prompt,
                              formatted_complete_request=complete)
            formatted.append(fr)
        v["formatted_requests"] = formatted  # mutable, written back (runtime.cpp:568-574)
        prompts = []
        for i, fr in enumerate(formatted):
            ids = self._tokens.encode(fr._values["formatted_complete_request"])
            if not ids:
                return self._error(f"Failed to tokenize input text for request {i} in batch", 604)
            prompts.append(ids)
        greedy = _greedy(v["temperature"], v["top_k"], v["top_p"])
        num_logprobs = v["num_logprobs"]
        if num_logprobs > MAX_LOGPROBS:
            _c.log("WARNING", f"numLogprobs {num_logprobs} exceeds maximum {MAX_LOGPROBS}; "
                   "clamping.", _where("llmInferenceRuntime.cpp", 621, "handleRequest"))
        num_logprobs = min(num_logprobs, MAX_LOGPROBS)
        longest = max(len(p) for p in prompts)
        if longest > self.max_input:  # setUpForPrefillExecution, runtime.cpp:1717-1723
            self._error(f"The max input length ({longest}) exceeds the max supported input length "
                        f"({self.max_input}) of the LLM Engine.", 1721, "setUpForPrefillExecution")
            return self._error("Prefill execution setup failed. This request cannot be handled.",
                               691)
        slots = []
        for i, (req, ids) in enumerate(zip(reqs, prompts, strict=True)):
            ch = channels[i] if channels else None
            if ch is not None:  # attachStreamChannel, streaming.cpp:160-169
                if ch._attached:
                    raise RuntimeError("StreamChannel already attached to a live request")
                ch._attached, ch._original_idx = True, i
            slots.append(_Slot(i, ids, req._values["stop_strings"], ch))
        try:
            return self._generate(v, slots, greedy, num_logprobs, response, formatted)
        finally:  # StreamChannelFinalizer (streaming.cpp:428-497)
            for s in slots:
                if s.channel is not None and not s.channel._finished:
                    chunk = StreamChunk()
                    rest = s.tokens[s.last_emitted:]
                    chunk._values.update(token_ids=rest, finished=True, reason=_ERROR,
                                         text=self._decode(
                                             s.tokens[s.sent:], s.channel._skip_special))
                    s.channel._push(chunk)
                    s.channel._finish(_ERROR)

    def _generate(self, v: dict, slots: list[_Slot], greedy: bool, num_logprobs: int,
                  response: LLMGenerationResponse, formatted: list) -> bool:
        max_gen = v["max_generate_length"]
        clamped = min([max_gen, *(max(0, self.kv_capacity - len(s.tokens)) for s in slots)])
        if clamped != max_gen:
            _c.log("WARNING", f"Reduce max generation length to {clamped}",
                   _where("llmInferenceRuntime.cpp", 718, "handleRequest"))
        if clamped <= 0:
            return self._error("Insufficient KV cache capacity for generation for this request.",
                               722)
        self._counter += 1
        seeds = []
        for fr in formatted:
            prompt = fr._values["formatted_complete_request"]
            seeds.append(prompt if greedy else
                         f"{prompt}|{v['temperature']}|{v['top_p']}|{v['top_k']}|{self._counter}")
        delay = float(os.environ.get("FAKE_EDGELLM_TOKEN_DELAY", "0") or 0)
        active = list(slots)

        def step(first: bool) -> None:
            if not first:
                self._cancel(active)
            for s in active:  # one token per active slot (vanillaDecoder.cpp:165-169)
                tid = self._next_token(s, seeds[s.index])
                s.tokens.append(tid)
                if num_logprobs > 0 and not s.finished:  # decoderUtils.cpp:116-131
                    s.logprobs.append([_logprob_entry(
                        tid if k == 0 else (tid + 7919 * k) % self.vocab_size, -0.05 - 1.5 * k,
                        self._piece_of.get(tid if k == 0 else -1, "").encode())
                        for k in range(num_logprobs)])
            if first:
                self._cancel(active)
            for s in active:
                self._decode_slot(s)
            for s in active:
                self._update_finish(s, clamped)
            for s in active:
                self._emit(s)

        step(first=True)
        while True:
            active = [s for s in active if not s.finished]  # performBatchEvict
            if not active:
                break
            if delay:
                time.sleep(delay)
            step(first=False)
        self._prefill._values["computed_tokens"] += sum(s.prompt_len for s in slots)
        self._prefill._values["_runs"] += 1
        self._generation._values["generated_tokens"] += sum(s.generated for s in slots)
        self._generation._values["_runs"] += 1
        out_ids, texts, reasons, logprobs = [], [], [], []
        for s in slots:  # runtime.cpp:1017-1077
            generated = s.tokens[s.prompt_len:]
            text = self._decode(generated, True)
            reason = s.reason
            if s.stops:
                text, _, matched = _stop_match(text, s.stops, s.max_stop, True)
                if matched:
                    reason = _STOP_WORDS
            out_ids.append(generated)
            texts.append(text)
            reasons.append(reason)
            logprobs.append(s.logprobs if num_logprobs > 0 else [])
        response._values.update(output_ids=out_ids, output_texts=texts, finish_reasons=reasons,
                                logprobs=logprobs)
        return True

    def _cancel(self, active: list[_Slot]) -> None:
        """applyCancellationToFinishStates (streaming.cpp:276-296)."""
        for s in active:
            if s.channel is not None and not s.finished and s.channel._cancelled:
                s.finished, s.reason = True, _CANCELLED

    def _decode_slot(self, s: _Slot) -> None:
        """decodePerSlot (streaming.cpp:298-355)."""
        s.stop_matched, s.pending = False, ""
        if s.channel is None and not s.stops:
            return
        final = s.finished
        if s.channel is not None:
            newly = len(s.tokens) - s.sent
            if not final and newly < s.channel._interval:
                return
        skip = s.channel._skip_special if s.channel is not None else True
        delta = self._decode(s.tokens[s.sent:], skip)
        s.sent = len(s.tokens)
        if s.stops and s.reason not in (_CANCELLED, _ERROR):
            s.stop_buffer += delta
            s.pending, s.stop_buffer, s.stop_matched = _stop_match(s.stop_buffer, s.stops,
                                                                   s.max_stop, final)
        else:
            s.pending = delta

    def _update_finish(self, s: _Slot, max_gen: int) -> None:
        """updateFinishStates (runtime.cpp:850-920)."""
        if not s.finished:
            if s.tokens[-1] == self._tokens.eos_id:
                s.finished, s.reason = True, _END_ID
            elif s.generated >= max_gen:
                s.finished, s.reason = True, _LENGTH
        if s.stop_matched and s.reason not in (_CANCELLED, _ERROR):
            s.finished, s.reason = True, _STOP_WORDS

    def _emit(self, s: _Slot) -> None:
        """emitChunks (streaming.cpp:357-416)."""
        if s.channel is None or (not s.pending and not s.finished):
            return
        chunk = StreamChunk()
        values = {"token_ids": s.tokens[s.last_emitted:s.sent], "text": s.pending,
                  "finished": s.finished, "reason": s.reason if s.finished else _NOT_FINISHED,
                  "logprobs": []}
        if s.logprobs:
            new = s.sent - s.last_emitted
            values["logprobs"] = s.logprobs[s.logprobs_emitted:s.logprobs_emitted + new]
            s.logprobs_emitted += len(values["logprobs"])
        chunk._values.update(values)
        s.pending = ""
        s.channel._push(chunk)
        s.last_emitted = s.sent
        if s.finished:
            s.channel._finish(s.reason)
