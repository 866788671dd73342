"""What a chat or text completion request may hold, checked the way the OpenAI API
checks it, before a byte of it reaches the engine (pure functions).

`chat(body, limits)` and `completion(body, limits)` take any parsed JSON value and
return either the request to send to the engine (a new dict: nulls dropped, the default
`max_tokens` filled in, a one-element prompt list unwrapped) or an `Invalid` naming the
field, as a 4xx. They never raise. The rules:

- every OpenAI field has its type and range (temperature 0..2, top_p 0..1, penalties
  -2..2, stop: a string or up to 4, ...); `n` must be 1, and a completion's `prompt`
  must be one prompt: each extra choice or prompt would be another generation in the
  request's one engine slot;
- message roles are system, developer, user, assistant and tool; content is a string or
  a list of text parts (the appliance's models read text only); a tool message needs
  `tool_call_id`; an assistant message may carry `tool_calls` and null content;
- unknown fields are refused (as OpenAI does), except the sampling fields in
  EXTENSION_FIELDS that the engine takes (gateway.json's engine_fields), which clients
  of llama-server legitimately send; fields an engine sets for itself (chat_format,
  grammar_triggers, ...) are unknown here on purpose;
- anything the engine would fail on with a 500 rather than a 400 (a string where it
  expects a number, both `grammar` and `json_schema`, `echo`, `best_of`, `suffix`,
  integers beyond 64 bits, unpaired UTF-16 surrogates) is refused here instead;
- what the engine parses as a grammar is kept within what it survives and converts
  quickly: a grammar's length and group nesting, a JSON schema's properties per object
  and in all (json_schema, response_format's schemas, tools' parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

INT32 = 2**31 - 1
INT64 = 2**63 - 1
UINT64 = 2**64 - 1
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for tool and schema names


@dataclass(frozen=True)
class Limits:
    max_tokens: int  # per request, and the default when a request names none
    model_id: str = ""  # the served model; "" accepts any name
    slots: int = 1  # engine slots (bounds llama.cpp's id_slot)
    engine_fields: frozenset[str] | None = None  # of EXTENSION_FIELDS, those the engine takes


@dataclass(frozen=True)
class Invalid:
    """A request the appliance refuses: an OpenAI error's fields and its status."""

    message: str
    param: str | None = None
    code: str = "invalid_value"
    status: int = 400


class _Reject(Exception):
    def __init__(self, invalid: Invalid) -> None:
        self.invalid = invalid


def _fail(param: str | None, message: str, code: str = "invalid_value",
          status: int = 400) -> _Reject:
    return _Reject(Invalid(message, param, code, status))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _type_error(param: str, want: str, v: Any) -> _Reject:
    return _fail(param, f"Invalid type for '{param}': expected {want}, but got {_kind(v)} "
                 "instead.", "invalid_type")


# --- scalar checks: each returns the normalized value or raises _Reject -------------------

def _int(v: Any, p: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _type_error(p, "an integer", v)
    if not lo <= v <= hi:
        raise _fail(p, f"Invalid value for '{p}': {v} is outside {lo}..{hi}.")
    return v


def _num(v: Any, p: str, lo: float = -float("inf"), hi: float = float("inf")) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _type_error(p, "a number", v)
    if abs(v) > 1e300 or not lo <= v <= hi:  # big ints would not fit a C float either
        raise _fail(p, f"Invalid value for '{p}': {v} is outside {lo:g}..{hi:g}.")
    return v


def _bool(v: Any, p: str) -> bool:
    if not isinstance(v, bool):
        raise _type_error(p, "a boolean", v)
    return v


def _str(v: Any, p: str, choices: tuple[str, ...] = ()) -> str:
    if not isinstance(v, str):
        raise _type_error(p, "a string", v)
    if choices and v not in choices:
        raise _fail(p, f"Invalid value for '{p}': '{v[:40]}'; supported values are "
                    + ", ".join(f"'{c}'" for c in choices) + ".")
    return v


def _obj(v: Any, p: str) -> dict:
    if not isinstance(v, dict):
        raise _type_error(p, "an object", v)
    return v


def _list(v: Any, p: str, lo: int = 0, hi: int | None = None) -> list:
    if not isinstance(v, list):
        raise _type_error(p, "an array", v)
    if len(v) < lo:
        raise _fail(p, f"Invalid '{p}': expected at least {lo} item(s), got {len(v)}.")
    if hi is not None and len(v) > hi:
        raise _fail(p, f"Invalid '{p}': expected at most {hi} items, got {len(v)}.")
    return v


def _keys(v: dict, p: str, allowed: set[str]) -> None:
    for key in v:
        if key not in allowed:
            raise _fail(f"{p}.{key}", f"Unrecognized field '{p}.{key}'.", "unknown_parameter")


def _unsupported(p: str, why: str) -> _Reject:
    return _fail(p, f"'{p}' is not supported on this appliance: {why}.",
                 "unsupported_parameter")


# --- field checkers: (value, param, limits) -> normalized value ----------------------------

Check = Callable[[Any, str, Limits], Any]


def _r_int(lo: int, hi: int) -> Check:
    return lambda v, p, _: _int(v, p, lo, hi)


def _r_num(lo: float = -float("inf"), hi: float = float("inf")) -> Check:
    return lambda v, p, _: _num(v, p, lo, hi)


def _r_bool(v: Any, p: str, _: Limits) -> bool:
    return _bool(v, p)


def _r_str(v: Any, p: str, _: Limits) -> str:
    return _str(v, p)


def _r_enum(*choices: str) -> Check:
    return lambda v, p, _: _str(v, p, choices)


def _r_obj(v: Any, p: str, _: Limits) -> dict:
    return _obj(v, p)


def _r_strings(v: Any, p: str, _: Limits) -> list:
    for i, s in enumerate(_list(v, p)):
        _str(s, f"{p}[{i}]")
    return v


def _max_tokens(v: Any, p: str, lim: Limits) -> int:
    n = _int(v, p, -(2**63), INT64)
    if n < 1:
        raise _fail(p, f"Invalid value for '{p}': {n}; it must be at least 1.")
    if n > lim.max_tokens:
        raise _fail(p, f"'{p}' is {n}; this appliance allows at most {lim.max_tokens} "
                    "tokens per request.")
    return n


def _only_one(v: Any, p: str, _: Limits) -> int:
    if _int(v, p, -INT64, INT64) != 1:
        raise _fail(p, f"'{p}' must be 1 on this appliance: each extra choice would be "
                    "another generation in the request's one engine slot.")
    return 1


def _stop(v: Any, p: str, _: Limits) -> str | list:
    if isinstance(v, str):
        return v
    if not isinstance(v, list):
        raise _type_error(p, "a string or an array of strings", v)
    _list(v, p, 0, 4)
    for i, s in enumerate(v):
        _str(s, f"{p}[{i}]")
    return v


def _logit_bias(v: Any, p: str, _: Limits) -> Any:
    """OpenAI: {"token id": bias}; llama.cpp also takes token text as the key, [[token,
    bias], ...] pairs and false (ban) as the bias."""
    def bias(b: Any, bp: str) -> None:
        if b is not False:
            _num(b, bp, -100, 100)

    if isinstance(v, dict):
        for k, b in v.items():
            bias(b, f"{p}.{k}")
    elif isinstance(v, list):
        for i, pair in enumerate(v):
            _list(pair, f"{p}[{i}]", 2, 2)
            if not isinstance(pair[0], str):
                _int(pair[0], f"{p}[{i}][0]", 0, INT32)
            bias(pair[1], f"{p}[{i}][1]")
    else:
        raise _type_error(p, "an object", v)
    return v


def _seed(v: Any, p: str, _: Limits) -> int:
    return _int(v, p, -(2**63), INT64)


# What llama-server turns into a grammar is parsed by recursive descent and converted in
# time that grows faster than its size (the pinned llama.cpp, measured on x86 with
# SmolLM2): caps well inside what it survives, far above what a real grammar or schema
# needs (the grammars llama.cpp ships are at most 1.4 KB, nested 4 deep).
# - A GBNF grammar's parser (src/llama-grammar.cpp, parse_sequence -> parse_alternates)
#   recurses once per nested group, ~420 bytes of stack each: 20,000 nested groups (40
#   KB) overflowed an 8 MiB stack and killed llama-server with SIGSEGV (5,000 at 2 MiB).
# - Its size is what the sampler walks for every token: 10,000 alternatives (80 KB) took
#   0.4 s a token.
# - A JSON schema's object builds the rules for its optional properties in time cubic in
#   their count (common/json-schema-to-grammar.cpp, _build_object_rule): 1,000 took
#   3.5 s, 2,000 17 s; 256 take 0.3 s, eight objects of 256 1.4 s. Patterns are capped
#   by llama.cpp itself (MAX_PATTERN_DEPTH), and the body's nesting by max_json_depth.
MAX_GRAMMAR_CHARS = 32 * 1024
MAX_GRAMMAR_NESTING = 64
MAX_SCHEMA_PROPERTIES = 256  # in one object
MAX_SCHEMA_PROPERTIES_TOTAL = 2048  # in all of a request's schemas
# a GBNF literal, character class or comment: parentheses there are not groups
_GBNF_TEXT = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|#[^\r\n]*', re.S)


def _grammar(v: Any, p: str, _: Limits) -> str:
    if len(_str(v, p)) > MAX_GRAMMAR_CHARS:
        raise _fail(p, f"Invalid '{p}': {len(v)} characters; this appliance accepts grammars "
                    f"of at most {MAX_GRAMMAR_CHARS}.")
    depth = deepest = 0
    for c in _GBNF_TEXT.sub("", v):
        if c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
    if deepest > MAX_GRAMMAR_NESTING:
        raise _fail(p, f"Invalid '{p}': groups nested {deepest} deep; this appliance accepts "
                    f"at most {MAX_GRAMMAR_NESTING}.")
    return v


def _schema_properties(v: Any, p: str) -> int:
    """How many properties the objects of a JSON schema declare, each within
    MAX_SCHEMA_PROPERTIES (a dict named "properties" anywhere counts: conservative)."""
    total, stack = 0, [(v, p)]
    while stack:
        node, np = stack.pop()
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                if len(props) > MAX_SCHEMA_PROPERTIES:
                    raise _fail(f"{np}.properties", f"Invalid '{np}.properties': "
                                f"{len(props)} properties; this appliance accepts at most "
                                f"{MAX_SCHEMA_PROPERTIES} in one object.")
                total += len(props)
            stack.extend((x, f"{np}.{k}") for k, x in node.items())
        elif isinstance(node, list):
            stack.extend((x, f"{np}[{i}]") for i, x in enumerate(node))
    return total


def _json_schema(v: Any, p: str, _: Limits) -> Any:
    if not isinstance(v, (dict, bool)):
        raise _type_error(p, "an object (a JSON schema)", v)
    _schema_properties(v, p)
    return v


def _id_slot(v: Any, p: str, lim: Limits) -> int:
    return _int(v, p, -1, lim.slots - 1)


def _samplers(v: Any, p: str, lim: Limits) -> Any:
    return v if isinstance(v, str) else _r_strings(v, p, lim)


def _nonempty_strings(v: Any, p: str, lim: Limits) -> list:
    _list(v, p, 1)
    return _r_strings(v, p, lim)


def _stream_options(v: Any, p: str, _: Limits) -> dict:
    _keys(_obj(v, p), p, {"include_usage", "include_obfuscation"})
    for k, x in v.items():
        _bool(x, f"{p}.{k}")
    return v


def _metadata(v: Any, p: str, _: Limits) -> dict:
    _obj(v, p)
    if len(v) > 16:
        raise _fail(p, f"Invalid '{p}': at most 16 pairs, got {len(v)}.")
    for k, x in v.items():
        if len(k) > 64:
            raise _fail(f"{p}.{k[:64]}", f"Invalid '{p}': keys are at most 64 characters.")
        if len(_str(x, f"{p}.{k}")) > 512:
            raise _fail(f"{p}.{k}", f"Invalid '{p}.{k}': values are at most 512 characters.")
    return v


def _modalities(v: Any, p: str, _: Limits) -> list:
    for i, m in enumerate(_list(v, p)):
        if _str(m, f"{p}[{i}]") != "text":
            raise _unsupported(f"{p}[{i}]", "the model writes text only")
    return v


def _refuse(why: str) -> Check:
    def check(v: Any, p: str, _: Limits) -> Any:
        raise _unsupported(p, why)
    return check


def _response_format(v: Any, p: str, _: Limits) -> dict:
    kind = _str(_obj(v, p).get("type"), f"{p}.type", ("text", "json_object", "json_schema"))
    if kind == "text":
        _keys(v, p, {"type"})
    elif kind == "json_object":
        _keys(v, p, {"type", "schema"})  # schema: llama.cpp's extension
        if "schema" in v:
            _json_schema(v["schema"], f"{p}.schema", _)
    else:
        _keys(v, p, {"type", "json_schema"})
        js = _obj(v.get("json_schema"), f"{p}.json_schema")
        _keys(js, f"{p}.json_schema", {"name", "description", "schema", "strict"})
        if not NAME.fullmatch(_str(js.get("name"), f"{p}.json_schema.name")):
            raise _fail(f"{p}.json_schema.name", "Invalid 'response_format.json_schema.name'"
                        ": use a-z, A-Z, 0-9, _ and -, at most 64 characters.")
        if "description" in js:
            _str(js["description"], f"{p}.json_schema.description")
        if "schema" in js:
            _json_schema(js["schema"], f"{p}.json_schema.schema", _)
        if js.get("strict") is not None:
            _bool(js["strict"], f"{p}.json_schema.strict")
    return v


def _tools(v: Any, p: str, _: Limits) -> list:
    for i, tool in enumerate(_list(v, p, 1, 128)):
        tp = f"{p}[{i}]"
        _keys(_obj(tool, tp), tp, {"type", "function"})
        _str(tool.get("type"), f"{tp}.type", ("function",))
        fn = _obj(tool.get("function"), f"{tp}.function")
        fp = f"{tp}.function"
        _keys(fn, fp, {"name", "description", "parameters", "strict"})
        if not NAME.fullmatch(_str(fn.get("name"), f"{fp}.name")):
            raise _fail(f"{fp}.name", f"Invalid '{fp}.name': use a-z, A-Z, 0-9, _ and -, at "
                        "most 64 characters.")
        if "description" in fn:
            _str(fn["description"], f"{fp}.description")
        if "parameters" in fn:
            _schema_properties(_obj(fn["parameters"], f"{fp}.parameters"), f"{fp}.parameters")
        if fn.get("strict") is not None:
            _bool(fn["strict"], f"{fp}.strict")
    return v


def _tool_choice(v: Any, p: str, _: Limits) -> Any:
    if isinstance(v, str):
        return _str(v, p, ("none", "auto", "required"))
    _keys(_obj(v, p), p, {"type", "function"})
    _str(v.get("type"), f"{p}.type", ("function",))
    fn = _obj(v.get("function"), f"{p}.function")
    _keys(fn, f"{p}.function", {"name"})
    _str(fn.get("name"), f"{p}.function.name")
    return v


# --- messages --------------------------------------------------------------------------

_MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "refusal", "tool_calls", "reasoning_content",
                  "audio", "function_call"},
    "tool": {"role", "content", "tool_call_id"},
}


def _content(v: Any, p: str) -> None:
    if isinstance(v, str):
        return
    if not isinstance(v, list):
        raise _type_error(p, "a string or an array of content parts", v)
    _list(v, p, 1)
    for i, part in enumerate(v):
        pp = f"{p}[{i}]"
        kind = _obj(part, pp).get("type")
        if kind in ("image_url", "input_audio", "file", "refusal"):
            raise _unsupported(f"{pp}.type", "the model reads and writes text parts only")
        _str(kind, f"{pp}.type", ("text",))
        _keys(part, pp, {"type", "text"})
        _str(part.get("text"), f"{pp}.text")


def _tool_calls(v: Any, p: str) -> None:
    for i, call in enumerate(_list(v, p, 1)):
        cp = f"{p}[{i}]"
        _keys(_obj(call, cp), cp, {"id", "type", "function"})
        _str(call.get("id"), f"{cp}.id")
        _str(call.get("type"), f"{cp}.type", ("function",))
        fn = _obj(call.get("function"), f"{cp}.function")
        _keys(fn, f"{cp}.function", {"name", "arguments"})
        _str(fn.get("name"), f"{cp}.function.name")
        _str(fn.get("arguments"), f"{cp}.function.arguments")


def _message(m: Any, p: str) -> dict:
    _obj(m, p)
    if "role" not in m:
        raise _fail(f"{p}.role", f"Missing required parameter: '{p}.role'.",
                    "missing_required_parameter")
    role = m["role"]
    if role == "function":
        raise _unsupported(f"{p}.role", "'function' messages are deprecated; use 'tool'")
    role = _str(role, f"{p}.role", tuple(_MESSAGE_KEYS))
    _keys(m, p, _MESSAGE_KEYS[role])
    if m.get("name") is not None:
        _str(m["name"], f"{p}.name")
    out = {k: v for k, v in m.items() if v is not None or k == "content"}
    if role == "assistant":
        if m.get("tool_calls") is not None:
            _tool_calls(m["tool_calls"], f"{p}.tool_calls")
        if m.get("audio") is not None:
            raise _unsupported(f"{p}.audio", "the model writes text only")
        if m.get("function_call") is not None:
            raise _unsupported(f"{p}.function_call", "it is deprecated; use 'tool_calls'")
        for k in ("refusal", "reasoning_content"):
            if m.get(k) is not None:
                _str(m[k], f"{p}.{k}")
        if m.get("content") is not None:
            _content(m["content"], f"{p}.content")
        elif not m.get("tool_calls") and m.get("refusal") is None:
            raise _fail(f"{p}.content", f"Missing required parameter: '{p}.content' (an "
                        "assistant message without tool_calls needs content).",
                        "missing_required_parameter")
        if "content" not in out:
            out["content"] = None
        return out
    if "content" not in m:
        raise _fail(f"{p}.content", f"Missing required parameter: '{p}.content'.",
                    "missing_required_parameter")
    _content(m["content"], f"{p}.content")
    if role == "tool":
        if "tool_call_id" not in m:
            raise _fail(f"{p}.tool_call_id", f"Missing required parameter: "
                        f"'{p}.tool_call_id'.", "missing_required_parameter")
        _str(m["tool_call_id"], f"{p}.tool_call_id")
    return out


def _messages(v: Any, p: str, _: Limits) -> list:
    return [_message(m, f"{p}[{i}]") for i, m in enumerate(_list(v, p, 1))]


# --- completions' prompt ---------------------------------------------------------------

def _tokens(v: list, p: str) -> list:
    for i, t in enumerate(v):
        _int(t, f"{p}[{i}]", 0, INT32)
    return v


def _prompt(v: Any, p: str, _: Limits) -> Any:
    """One prompt: a string or a list of token ids, or a list holding exactly one of
    those (unwrapped). More would be one generation per element in one engine slot."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list):
        raise _type_error(p, "a string or an array of token ids", v)
    if v and all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        return _tokens(v, p)
    if len(v) != 1:
        raise _fail(p, f"'{p}' holds {len(v)} prompts; this appliance takes one prompt per "
                    "request (a string, or a list of token ids).")
    one = v[0]
    if isinstance(one, str):
        return one
    if isinstance(one, list) and one:
        return _tokens(one, f"{p}[0]")
    raise _type_error(f"{p}[0]", "a string or a non-empty array of token ids", one)


# --- the field tables ------------------------------------------------------------------

_COMMON: dict[str, Check] = {
    "model": _r_str,
    "frequency_penalty": _r_num(-2, 2),
    "presence_penalty": _r_num(-2, 2),
    "logit_bias": _logit_bias,
    "max_tokens": _max_tokens,
    "n": _only_one,
    "seed": _seed,
    "stop": _stop,
    "stream": _r_bool,
    "stream_options": _stream_options,
    "temperature": _r_num(0, 2),
    "top_p": _r_num(0, 1),
    "user": _r_str,
}

_CHAT: dict[str, Check] = {
    **_COMMON,
    "messages": _messages,
    "max_completion_tokens": _max_tokens,
    "logprobs": _r_bool,
    "top_logprobs": _r_int(0, 20),
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _r_bool,
    "metadata": _metadata,
    "store": _r_bool,
    "service_tier": _r_enum("auto", "default", "flex", "scale", "priority"),
    "reasoning_effort": _r_enum("none", "minimal", "low", "medium", "high"),
    "verbosity": _r_enum("low", "medium", "high"),
    "modalities": _modalities,
    "prompt_cache_key": _r_str,
    "safety_identifier": _r_str,
    "audio": _refuse("the model writes text only"),
    "prediction": _refuse("predicted outputs are not implemented by the engine"),
    "web_search_options": _refuse("the appliance has no web search"),
    "functions": _refuse("it is deprecated; use 'tools'"),
    "function_call": _refuse("it is deprecated; use 'tool_choice'"),
    # llama.cpp's chat-only fields
    "chat_template_kwargs": _r_obj,
    "add_generation_prompt": _r_bool,
    "continue_final_message": _r_bool,
    "reasoning_format": _r_enum("none", "auto", "deepseek", "deepseek-legacy"),
    "reasoning_budget_tokens": _r_int(-1, INT32),
    "thinking_budget_tokens": _r_int(-1, INT32),
}

_COMPLETION: dict[str, Check] = {
    **_COMMON,
    "prompt": _prompt,
    "logprobs": _r_int(0, 5),
    "best_of": _only_one,
    "echo": _r_bool,
    "suffix": _r_str,
}

# Request fields beyond OpenAI's that the gateway knows how to check: the sampling and
# caching fields clients of llama-server send (tools/server/server-schema.cpp in the
# pinned llama.cpp, and id_slot in server-context.cpp), with the ranges llama-server
# enforces; max_tokens' alias n_predict gets the same limit. Each engine says which of
# them it takes (gateway.json's engine_fields).
EXTENSION_FIELDS: dict[str, Check] = {
    "n_predict": _max_tokens,
    "top_k": _r_int(0, INT32),
    "min_p": _r_num(0, 1),
    "typical_p": _r_num(0),
    "top_n_sigma": _r_num(),
    "xtc_probability": _r_num(0, 1),
    "xtc_threshold": _r_num(0, 1),
    "dynatemp_range": _r_num(0),
    "dynatemp_exponent": _r_num(),
    "repeat_penalty": _r_num(0),
    "repeat_last_n": _r_int(0, INT32),
    "dry_multiplier": _r_num(0),
    "dry_base": _r_num(),
    "dry_allowed_length": _r_int(0, INT32),
    "dry_penalty_last_n": _r_int(0, INT32),
    "dry_sequence_breakers": _nonempty_strings,
    "mirostat": _r_int(0, 2),
    "mirostat_tau": _r_num(),
    "mirostat_eta": _r_num(),
    "ignore_eos": _r_bool,
    "cache_prompt": _r_bool,
    "n_probs": _r_int(0, 20),
    "min_keep": _r_int(0, INT32),
    "n_keep": _r_int(-1, INT32),
    "n_indent": _r_int(0, INT32),
    "n_cache_reuse": _r_int(0, INT32),
    "t_max_predict_ms": _r_int(-1, INT64),
    "grammar": _grammar,
    "json_schema": _json_schema,
    "samplers": _samplers,
    "id_slot": _id_slot,
    "return_tokens": _r_bool,
    "return_progress": _r_bool,
    "timings_per_token": _r_bool,
    "post_sampling_probs": _r_bool,
}


def _walk(value: Any) -> None:
    """Everywhere in the body: no integer beyond 64 bits and no unpaired surrogate.
    llama-server's JSON parser fails on either with a 500."""
    stack = [(value, "")]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            _text(v, p)
        elif isinstance(v, bool) or v is None or isinstance(v, float):
            continue
        elif isinstance(v, int):
            if not -(2**63) <= v <= UINT64:
                raise _fail(p or None, f"Invalid value for '{p}': the integer does not fit "
                            "64 bits.")
        elif isinstance(v, list):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
        else:
            for k, x in v.items():
                _text(k, p)
                stack.append((x, f"{p}.{k}" if p else k))


def _text(s: str, p: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(p or None, f"Invalid value for '{p}': the string holds an unpaired "
                    "UTF-16 surrogate.") from None


def _check(body: Any, lim: Limits, fields: dict[str, Check], required: str) -> dict:
    if not isinstance(body, dict):
        raise _fail(None, "The request body must be a JSON object.", "invalid_type")
    _walk(body)
    if required not in body:
        raise _fail(required, f"Missing required parameter: '{required}'.",
                    "missing_required_parameter")
    extra = EXTENSION_FIELDS if lim.engine_fields is None else lim.engine_fields
    for key in body:
        if key not in fields and key not in extra:
            raise _fail(key, f"Unrecognized request argument supplied: {key}",
                        "unknown_parameter")
    out: dict[str, Any] = {}
    for key, value in body.items():
        if value is None:
            continue  # null means "the default", as in OpenAI's API
        out[key] = fields.get(key, EXTENSION_FIELDS.get(key))(value, key, lim)
    model = out.get("model")
    if lim.model_id and model is not None and model != lim.model_id:
        raise _fail("model", f"The model '{model[:100]}' does not exist on this appliance; "
                    f"it serves '{lim.model_id}' (GET /v1/models).", "model_not_found", 404)
    if "stream_options" in out and not out.get("stream"):
        raise _fail("stream_options", "The 'stream_options' parameter is only allowed when "
                    "'stream' is enabled.")
    if not any(k in out for k in ("max_tokens", "max_completion_tokens", "n_predict")):
        out["max_tokens"] = lim.max_tokens  # never an unbounded generation
    if "grammar" in out and "json_schema" in out:
        raise _fail("grammar", "Use either 'grammar' or 'json_schema', not both.")
    schemas = [(k, out[k]) for k in ("json_schema", "tools", "response_format") if k in out]
    total = sum(_schema_properties(v, k) for k, v in schemas)
    if total > MAX_SCHEMA_PROPERTIES_TOTAL:
        raise _fail(schemas[-1][0], f"The request's JSON schemas declare {total} properties; "
                    f"this appliance accepts at most {MAX_SCHEMA_PROPERTIES_TOTAL} in all.")
    return out


def chat(body: Any, lim: Limits) -> dict | Invalid:
    """A /v1/chat/completions request, normalized, or why it is refused."""
    try:
        out = _check(body, lim, _CHAT, "messages")
        if "top_logprobs" in out and not out.get("logprobs"):
            raise _fail("top_logprobs", "'top_logprobs' requires 'logprobs' to be true.")
        if "tool_choice" in out and "tools" not in out:
            raise _fail("tool_choice", "'tool_choice' is only allowed when 'tools' are "
                        "specified.")
        if "tools" in out and "grammar" in out:
            raise _fail("grammar", "Use either 'tools' or 'grammar', not both.")
        return out
    except _Reject as e:
        return e.invalid


def completion(body: Any, lim: Limits) -> dict | Invalid:
    """A /v1/completions request, normalized, or why it is refused."""
    try:
        out = _check(body, lim, _COMPLETION, "prompt")
        if out.pop("echo", False):
            raise _unsupported("echo", "the engine does not echo the prompt")
        out.pop("best_of", None)  # 1, checked above; llama-server refuses the field itself
        if out.pop("suffix", ""):
            raise _unsupported("suffix", "the engine does not insert text")
        return out
    except _Reject as e:
        return e.invalid
