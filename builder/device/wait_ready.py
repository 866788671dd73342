"""edge-llm-wait-ready URL [TIMEOUT]: wait until an engine on loopback can serve.

Run as ExecStartPost= of edge-llm-engine.service (the release's drop-in names the
engine's readiness URL), so the unit only becomes active, and `systemctl start` or
`restart` only return, once the model is loaded: llama-server and TensorRT-LLM's
OpenAI server both answer their health URL with 503 (or nothing) while loading and
200 once ready. Exits 1 when TIMEOUT (seconds, default 600) passes first, or as soon
as the server process is gone: systemd passes its PID as $MAINPID and would otherwise
wait for this check even after the server died.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

USAGE = "usage: edge-llm-wait-ready URL [TIMEOUT_SECONDS]"


def _alive(pid: int) -> bool:
    """Whether pid still exists. kill(pid, 0), not /proc: with ProtectProc=invisible and
    PrivateUsers=yes the server (in its own user namespace) is hidden from /proc here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print(USAGE, file=sys.stderr)
        return 2
    url = args[0]
    host = urllib.parse.urlparse(url).hostname
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"wait-ready: {url}: only a loopback URL is probed", file=sys.stderr)
        return 2
    timeout = float(args[1]) if len(args) == 2 else 600.0
    # never through a proxy from the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    main_pid = os.environ.get("MAINPID", "")
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        if main_pid and not _alive(int(main_pid)):
            print(f"wait-ready: the server (pid {main_pid}) exited while loading "
                  f"(last: {last})", file=sys.stderr)
            return 1
        try:
            with opener.open(url, timeout=5) as response:
                if response.status == 200:
                    print(f"wait-ready: {url} ready after {time.monotonic() - start:.1f}s")
                    return 0
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            last = str(getattr(error, "reason", error))
        time.sleep(0.5)
    print(f"wait-ready: {url} not ready after {timeout:.0f}s (last: {last})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
