"""edge-llm-engine-watchdog: restart an engine that is alive but no longer works.

systemd restarts the engine when it exits; a hung engine does not exit. Every
INTERVAL seconds this asks the engine of the current release its liveness path on
loopback (release.json: engine.port, engine.probe.alive - for llama-server /metrics,
which its task loop answers, not only its HTTP thread). When it has not answered for
--grace seconds while the unit is active, the engine unit is restarted (and logged).
While the unit starts (loading a model can take minutes) nothing is counted, and a
release activation in progress (it holds the release lock) is left alone.

    edge-llm-engine-watchdog [--interval 20] [--timeout 15] [--grace 300]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .layout import RELEASE_MANIFEST, Layout


def log(msg: str) -> None:
    print(f"edge-llm-engine-watchdog: {msg}", file=sys.stderr, flush=True)


class Watchdog:
    def __init__(self, layout: Layout, systemctl: str = "systemctl") -> None:
        self.layout = layout
        self.systemctl_cmd = systemctl
        self.lock = Path(layout.state_dir) / ".release.lock"
        # never through a proxy from the environment
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.silent_since: float | None = None

    def unit_state(self) -> str:
        r = subprocess.run([self.systemctl_cmd, "is-active", self.layout.engine_unit],
                           capture_output=True, text=True)
        return r.stdout.strip() or "unknown"

    def activation_running(self) -> bool:
        try:
            with open(self.lock, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def probe_url(self) -> str | None:
        try:
            m = json.loads((Path(self.layout.current) / RELEASE_MANIFEST).read_text())
            engine = m["engine"]
            return f"http://127.0.0.1:{int(engine['port'])}{engine['probe']['alive']}"
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no release, or one from before probes were recorded

    def answers(self, url: str, timeout: float) -> bool:
        try:
            with self.opener.open(url, timeout=timeout) as r:
                r.read(1 << 16)
                return r.status < 500
        except urllib.error.HTTPError as e:
            return e.code < 500
        except OSError:
            return False

    def step(self, timeout: float, grace: float, now: float) -> str:
        """One look; returns what it saw: ok, starting, busy, silent, restarted, ..."""
        url = self.probe_url()
        if url is None:
            self.silent_since = None
            return "no-release"
        if self.activation_running():
            self.silent_since = None
            return "activation"
        state = self.unit_state()
        if state != "active":  # activating (loading), failed, inactive: systemd's business
            self.silent_since = None
            return state
        if self.answers(url, timeout):
            self.silent_since = None
            return "ok"
        self.silent_since = self.silent_since or now
        if now - self.silent_since < grace:
            return "silent"
        log(f"{self.layout.engine_unit}: {url} has not answered for "
            f"{now - self.silent_since:.0f}s while active: restarting it")
        subprocess.run([self.systemctl_cmd, "restart", "--no-block", self.layout.engine_unit],
                       capture_output=True)
        self.silent_since = None
        return "restarted"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-llm-engine-watchdog", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=20, help="seconds between looks")
    ap.add_argument("--timeout", type=float, default=15, help="seconds one answer may take")
    ap.add_argument("--grace", type=float, default=300,
                    help="seconds without an answer before a restart")
    ap.add_argument("--once", action="store_true", help="look once and exit")
    a = ap.parse_args(argv)
    dog = Watchdog(Layout.load(os.environ.get("EDGE_LLM_ROOT", "/")),
                   os.environ.get("EDGE_LLM_SYSTEMCTL", "systemctl"))
    while True:
        seen = dog.step(a.timeout, a.grace, time.monotonic())
        if a.once:
            print(seen)
            return 0
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
