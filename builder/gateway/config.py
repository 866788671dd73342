"""The gateway's settings: one JSON file per release (gateway.json), written by the
`gateway` role from the profile, plus the API keys file (one key per line)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import api_keys
from .validate import EXTENSION_FIELDS


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the file and the field."""


@dataclass(frozen=True)
class Config:
    model_id: str  # the one model this appliance serves (/v1/models)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    engine_url: str = "http://127.0.0.1:8081"
    slots: int = 1  # requests the engine runs at once (llama-server --parallel)
    max_queue: int = 16  # requests that may wait for a slot; one more gets 429
    max_request_bytes: int = 1 << 20
    max_tokens: int = 1024  # per request; also the default when a request names none
    request_timeout: float = 600.0  # seconds without a byte from the engine
    # the public port's deadlines and caps (docs/gateway.md, "Limits and errors")
    header_timeout: float = 10.0  # to send a complete request head (and a TLS handshake)
    keepalive_timeout: float = 15.0  # an idle keep-alive connection is closed after this
    body_timeout: float = 30.0  # to send the whole request body
    write_timeout: float = 30.0  # a write to a client that stalls this long drops it
    max_connections: int = 1024  # open client connections; the oldest idle one gives way
    max_json_depth: int = 64  # nesting of a request body
    max_json_values: int = 100_000  # values in a request body (bounds its parsed size)
    engine_probe_interval: float = 2.0  # seconds between probes of the engine
    engine_probe_timeout: float = 5.0  # a probe unanswered this long is a miss
    engine_hung_after: int = 2  # misses in a row: the engine is hung, /v1 gets 503
    metrics_auth: bool = True  # /metrics needs the API key too
    # what the release's engine is (builder/engines: Engine.gateway_settings)
    engine_probe_path: str = "/metrics"  # answered only while the engine's loop turns
    engine_fields: list = field(default_factory=lambda: sorted(EXTENSION_FIELDS))  # its own
    engine_status_file: str = ""  # where an engine built on the device says how it goes
    # each conversation back to the engine slot holding its prefix (affinity.py); only
    # for an engine that takes llama.cpp's id_slot (in engine_fields)
    slot_affinity: bool = True
    api_auth: bool = True
    keys_file: str = "/etc/edge-llm/api-keys"
    tls_cert: str = ""
    tls_key: str = ""
    appliance: dict = field(default_factory=dict)  # GET /v1/appliance

    @classmethod
    def load(cls, path: Path, **overrides) -> Config:
        try:
            raw = json.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        known = {f.name: f for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"{path}: {key}: unknown setting (known: "
                                  f"{', '.join(sorted(known))})")
        if "model_id" not in raw:
            raise ConfigError(f"{path}: model_id: missing")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        for key, value in raw.items():
            want = known[key].type
            ok = {"str": isinstance(value, str),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "float": isinstance(value, (int, float)) and not isinstance(value, bool),
                  "bool": isinstance(value, bool),
                  "dict": isinstance(value, dict),
                  "list": isinstance(value, list)}[want]
            if not ok:
                raise ConfigError(f"{path}: {key}: expected {want}, got {value!r}")
        cfg = cls(**raw)
        unknown = [f for f in cfg.engine_fields if f not in EXTENSION_FIELDS]
        if unknown:
            raise ConfigError(f"{path}: engine_fields: {unknown[0]!r} is not a request field "
                              f"the gateway checks (known: {', '.join(sorted(EXTENSION_FIELDS))})")
        if not cfg.engine_probe_path.startswith("/"):
            raise ConfigError(f"{path}: engine_probe_path: a path, starting with /")
        for key in ("slots", "max_request_bytes", "max_tokens", "listen_port",
                    "max_connections", "max_json_depth", "max_json_values",
                    "engine_hung_after"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"{path}: {key}: must be at least 1")
        for key in ("request_timeout", "header_timeout", "keepalive_timeout", "body_timeout",
                    "write_timeout", "engine_probe_interval", "engine_probe_timeout"):
            if not getattr(cfg, key) > 0:
                raise ConfigError(f"{path}: {key}: must be more than 0 seconds")
        if cfg.max_queue < 0:
            raise ConfigError(f"{path}: max_queue: must be 0 or more")
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ConfigError(f"{path}: tls_cert and tls_key: give both or neither")
        return cfg


def load_keys(path: str) -> list[str]:
    """The API keys (api_keys.py: the one reader of that file, shared with the device
    tools that test a release with a key)."""
    try:
        return api_keys.read(path)
    except api_keys.KeysError as e:
        raise ConfigError(str(e)) from None
