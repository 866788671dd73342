"""OpenAI-style error objects, and what an engine's refusal becomes for the client."""

from __future__ import annotations

import json

from aiohttp import web

# llama-server's error types (format_error_response) -> OpenAI's codes where they differ
_ENGINE_CODES = {"exceed_context_size_error": "context_length_exceeded",
                 "not_supported_error": "unsupported_value"}


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None, param: str | None = None,
          headers: dict | None = None) -> web.Response:
    """An OpenAI-style error object."""
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status=status, headers=headers)


def unavailable(why: str, retry_after: int = 2) -> web.Response:
    return error(503, f"the engine is not available ({why}); it restarts by itself, "
                 "retry shortly", kind="server_error", code="engine_unavailable",
                 headers={"Retry-After": str(retry_after)})


def engine_message(data: bytes) -> tuple[str, str | None]:
    """(message, what kind of refusal) from an engine's error reply: llama-server's error
    type, or an OpenAI code the gateway passes on (the Edge-LLM adapter's)."""
    try:
        err = json.loads(data)["error"]
        code = err.get("code")
        kind = code if code in _ENGINE_CODES.values() else err.get("type")
        return str(err.get("message") or "no message")[:1000], kind
    except (ValueError, TypeError, KeyError, AttributeError):
        return data.decode("utf-8", "replace").strip()[:300] or "no message", None


def engine_refused(status: int, data: bytes, param: str) -> web.Response:
    """The engine refused a request the gateway let through: a 4xx for the client, with
    the engine's reason. Only called when the engine is known to be serving, so an
    engine 5xx here is about this request (say, a JSON schema its grammar converter
    cannot handle), not an outage."""
    message, kind = engine_message(data)
    code = kind if kind in _ENGINE_CODES.values() else \
        _ENGINE_CODES.get(kind or "", "rejected_by_engine")
    return error(status if 400 <= status < 500 else 400,
                 f"the engine refused this request: {message}", code=code,
                 param=param if code == "context_length_exceeded" else None)
