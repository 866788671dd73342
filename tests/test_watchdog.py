"""The engine watchdog (builder/device/watchdog.py) against engines on loopback: one
that answers, one that accepts connections and never answers (alive but hung), and
one that is still loading. The engine unit is a fake systemctl that records calls and
says what state the unit is in."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from device_tree import Device
from harness.llama_server import free_port


def _watch(device: Device, unit_state: str, seconds: float) -> str:
    """Run the watchdog for `seconds` with short intervals; the systemctl calls it made."""
    fake = device.root / "fake-systemctl"
    fake.write_text("#!/bin/sh\n"
                    f"echo \"$@\" >> {device.calls}\n"
                    f"[ \"$1\" = is-active ] && echo {unit_state}\n"
                    "exit 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "builder.device.watchdog", "--interval",
                             "0.2", "--timeout", "0.5", "--grace", "1.5"],
                            env={**os.environ, "EDGE_LLM_ROOT": str(device.root),
                                 "EDGE_LLM_SYSTEMCTL": str(fake)},
                            stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    proc.terminate()
    proc.wait(timeout=10)
    return device.calls.read_text() if device.calls.exists() else ""


@pytest.fixture
def hung_engine():
    """Accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    stop.set()
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def answering_engine():
    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    server.shutdown()


def _serve(device: Device, engine_port: int) -> None:
    rid = device.make("r1", engine_port=engine_port)
    assert device.run("install", rid).returncode == 0
    device.calls.unlink(missing_ok=True)


def test_an_engine_alive_but_hung_is_restarted(device: Device, hung_engine: int) -> None:
    _serve(device, hung_engine)
    calls = _watch(device, "active", 4)
    assert "restart --no-block edge-llm-engine.service" in calls


def test_an_engine_that_answers_is_left_alone(device: Device, answering_engine: int) -> None:
    _serve(device, answering_engine)
    assert "restart" not in _watch(device, "active", 3)


def test_an_engine_still_loading_is_left_alone(device: Device, hung_engine: int) -> None:
    _serve(device, hung_engine)
    assert "restart" not in _watch(device, "activating", 3)
