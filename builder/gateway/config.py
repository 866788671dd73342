"""The gateway's settings: one JSON file per release (gateway.json), written by the
`gateway` role from the profile, plus the API keys file (one key per line)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path


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
                  "dict": isinstance(value, dict)}[want]
            if not ok:
                raise ConfigError(f"{path}: {key}: expected {want}, got {value!r}")
        cfg = cls(**raw)
        for key in ("slots", "max_request_bytes", "max_tokens", "listen_port"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"{path}: {key}: must be at least 1")
        if cfg.max_queue < 0:
            raise ConfigError(f"{path}: max_queue: must be 0 or more")
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ConfigError(f"{path}: tls_cert and tls_key: give both or neither")
        return cfg


def load_keys(path: str) -> list[str]:
    """API keys, one per line; blank lines and #comments are ignored."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the API keys: {e.strerror}") from None
    keys = [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"{path}: no API key in the file (one per line)")
    return keys
