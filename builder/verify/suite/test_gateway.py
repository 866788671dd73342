"""The public port as a client sees it: reached from this machine, not from the device."""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request

import pytest

# a device's certificate is its own (often self-signed): this checks the service, not trust
_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


def _request(url: str, body: dict | None = None, key: str | None = None,
             timeout: float = 600):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=timeout, context=_TLS)
    except urllib.error.HTTPError as e:
        return e
    except urllib.error.URLError as e:
        pytest.fail(f"{url}: the public port does not answer ({e.reason}); if this machine "
                    "reaches it elsewhere, pass `builder verify --api-url`")


def test_gateway_units_are_enabled_and_active(host, layout) -> None:
    gw = host.service(layout["gateway_unit"])
    assert gw.is_enabled and gw.is_running
    assert host.service(layout["api_key_unit"]).is_enabled


def test_api_key_is_made_on_the_device_and_only_root_reads_it(host, layout,
                                                              api_key: str) -> None:
    f = host.file(layout["api_keys"])
    assert f.exists and f.user == "root" and f.mode == 0o600
    assert re.fullmatch(r"sk-edge-[A-Za-z0-9_-]{40,}", api_key)


def test_public_port_answers_health_without_a_key(api_url: str) -> None:
    with _request(api_url + "/health", timeout=30) as r:
        assert r.status == 200 and json.load(r) == {"status": "ok"}


def test_v1_refuses_a_missing_or_wrong_key(api_url: str, api_auth: bool) -> None:
    """As the profile says: with service.api_auth, only with the key; without, open."""
    for key in (None, "sk-edge-not-this-one"):
        r = _request(api_url + "/v1/models", key=key, timeout=30)
        if not api_auth:
            assert r.status == 200
            continue
        assert r.status == 401
        assert json.load(r)["error"]["code"] == "invalid_api_key"


def test_v1_reports_the_appliance_with_the_key(api_url: str, api_key: str,
                                               manifest) -> None:
    with _request(api_url + "/v1/models", key=api_key, timeout=30) as r:
        models = [m["id"] for m in json.load(r)["data"]]
    assert models == [manifest["release"]["model_id"]]
    with _request(api_url + "/v1/appliance", key=api_key, timeout=30) as r:
        info = json.load(r)
    assert info["release_id"] == manifest["release_id"]
    assert info["model_sha256"] == manifest["model"]["sha256"]


def test_chat_streams_through_the_public_port(api_url: str, api_key: str) -> None:
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
            "temperature": 0, "stream": True}
    with _request(api_url + "/v1/chat/completions", body, key=api_key) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [ln[5:].strip() for ln in r.read().decode().splitlines()
                  if ln.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c]
    assert any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])


def test_chat_page_loads_with_its_assets(api_url: str) -> None:
    with _request(api_url + "/", timeout=30) as r:
        page = r.read().decode()
        csp = r.headers["Content-Security-Policy"]
    assert "<title>edge-llm chat</title>" in page and "default-src 'self'" in csp
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
        with _request(api_url + asset, timeout=30) as r:
            assert r.status == 200, asset


def test_metrics_are_exposed_with_the_key_only(api_url: str, api_key: str,
                                               api_auth: bool) -> None:
    assert _request(api_url + "/metrics", timeout=30).status == (401 if api_auth else 200)
    with _request(api_url + "/metrics", key=api_key, timeout=30) as r:
        text = r.read().decode()
    assert "edge_llm_gateway_requests_total" in text
    assert re.search(r"^edge_llm_gateway_engine_up 1\.0$", text, re.M)


def test_gateway_memory_is_within_the_plan(host, manifest, layout) -> None:
    pid = host.check_output(f"systemctl show -p MainPID --value {layout['gateway_unit']}")
    rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB",
                            host.check_output(f"cat /proc/{pid}/status")).group(1))
    assert rss_kib * 1024 <= manifest["plan"]["gateway_overhead"], f"{rss_kib} KiB"
