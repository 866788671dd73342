"""python3 -m edge_llm_gateway --config gateway.json [--keys-file F] [--port N]"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path

from aiohttp import web

from . import logs
from .app import Gateway
from .config import Config, ConfigError, load_keys
from .connections import ConnectionPool, fd_budget

log = logging.getLogger("edge_llm_gateway")


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) we are listening. The protocol is one datagram;
    python3-systemd would add a C extension to the image for these four lines."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())


async def serve(cfg: Config, keys: list[str], access_log: bool) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(logs.loop_exception)
    gw = Gateway(cfg, keys)
    # aiohttp's server log goes through the throttle as one line per kind (aiohttp 3.8
    # logs a traceback for every malformed request otherwise). Request bodies are never
    # decompressed: aiohttp 3.8 inflates each chunk whole, and a 1 MB gzip body of zeros
    # took the gateway to 290 MB; a compressed body gets a 415 instead.
    runner = web.AppRunner(gw.app(), access_log=log if access_log else None,
                           keepalive_timeout=cfg.keepalive_timeout, logger=logs.HTTP_LOG,
                           auto_decompress=False)
    await runner.setup()
    tls = None
    if cfg.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    # Our own listening socket rather than web.TCPSite: connections go through the guard
    # (connections.py), which caps them and enforces the header and idle deadlines, and
    # which cancels a handler whose client went away (aiohttp 3.8 cannot be asked to).
    # The guard also starts TLS, once it has counted the connection: a listening socket
    # with ssl= would hide handshakes in progress from the cap.
    gw.pool = ConnectionPool(runner.server, max_connections=fd_budget(cfg.max_connections,
                                                                      cfg.slots),
                             header_timeout=cfg.header_timeout,
                             idle_timeout=cfg.keepalive_timeout,
                             on_close=lambda why: gw.m.connections_closed.labels(why).inc(),
                             cancel_on_disconnect=True, tls=tls)
    try:
        server = await loop.create_server(gw.pool, cfg.listen_host, cfg.listen_port,
                                          backlog=511)
    except BaseException:
        await runner.cleanup()
        raise
    scheme = "https" if tls else "http"
    log.info("serving %s on %s://%s:%d, engine %s (%s), at most %d connections",
             cfg.model_id, scheme, cfg.listen_host, cfg.listen_port, cfg.engine_url,
             gw.engine.state, gw.pool.max_connections)
    sd_notify("READY=1")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    sd_notify("STOPPING=1")
    server.close()
    gw.pool.stop()
    await runner.shutdown()
    await runner.server.shutdown(5)  # type: ignore[union-attr]
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge_llm_gateway", description=__doc__)
    ap.add_argument("--config", required=True, type=Path, help="gateway.json")
    ap.add_argument("--keys-file", help="API keys, one per line (overrides the config)")
    ap.add_argument("--host", dest="listen_host", help="listen address")
    ap.add_argument("--port", dest="listen_port", type=int, help="listen port")
    ap.add_argument("--engine-url", help="engine base URL, e.g. http://127.0.0.1:8081")
    ap.add_argument("--tls-cert", help="PEM certificate (with --tls-key)")
    ap.add_argument("--tls-key", help="PEM private key")
    ap.add_argument("--access-log", action="store_true", help="log every request")
    a = ap.parse_args(argv)
    logs.setup()
    try:
        cfg = Config.load(a.config, keys_file=a.keys_file, listen_host=a.listen_host,
                          listen_port=a.listen_port, engine_url=a.engine_url,
                          tls_cert=a.tls_cert, tls_key=a.tls_key)
        keys = load_keys(cfg.keys_file) if cfg.api_auth else []
        asyncio.run(serve(cfg, keys, a.access_log))
    except ConfigError as e:
        print(f"edge-llm-gateway: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as e:
        print(f"edge-llm-gateway: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
