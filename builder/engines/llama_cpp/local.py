"""llama-server run on this machine with a release's own settings: the reference a
device's answers are compared with (builder/verify/agreement.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ...contracts import HostServer
from ...errors import BuilderError, display_path
from ...run import stop_group

if TYPE_CHECKING:
    from ...cache import Cache
    from ...model.pipeline import Fetched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(server: Path, env: dict[str, str], model: Path, *, timeout: float = 600
            ) -> Iterator[str]:
    """llama-server `server` serving `model` on a free loopback port with the release's
    LLAMA_ARG_* environment (`env`, from its engine.env), as the device's unit starts it
    (`--host 127.0.0.1`); yields its URL once /health answers 200, stops it after."""
    port = _free_port()
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")},
            **env, "LLAMA_ARG_MODEL": str(model), "LLAMA_ARG_PORT": str(port)}
    with tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log") as log:
        proc = subprocess.Popen([str(server), "--host", "127.0.0.1"], env=full,
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = " | ".join(log.read().splitlines()[-5:])
                    raise BuilderError(f"{display_path(server)} serving {model.name} here "
                                       f"exited with status {proc.returncode}: {tail}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise BuilderError(f"{display_path(server)} did not load {model.name} "
                                       f"here in {timeout:.0f}s")
                time.sleep(0.5)
            yield url
        finally:
            if proc.poll() is None:
                stop_group(proc)


def checkpoint_server(cache: Cache, *, what: str, tie_nats: float,
                      source_base: Path | None = None) -> HostServer:
    """The reference for an engine whose device runs a Hugging Face checkpoint in another
    precision (TensorRT-LLM): the checkpoint it is handed converted to F16 with llama.cpp's
    own convert_hf_to_gguf.py and served by llama-server built for this machine, from the
    catalog's pinned llama.cpp source. Converted only when the answers are made (a cache
    entry per checkpoint); `tie_nats` is the pair's tolerance (docs/quality.md)."""
    from . import build as build_mod
    from . import source as sources
    from .convert import convert, gguf_of
    from .settings import LlamaCppSettings

    s = LlamaCppSettings()
    server = build_mod.host_tools(s, cache, base_dir=source_base).tool("llama-server")

    @contextmanager
    def converted_and_served(checkpoint: Fetched) -> Iterator[str]:
        src = sources.llama_cpp(s.source, cache, base_dir=source_base)
        model = gguf_of(convert(checkpoint, src, cache))
        with serving(server, {"LLAMA_ARG_CTX_SIZE": "4096", "LLAMA_ARG_N_PARALLEL": "1"},
                     model) as url:
            yield url

    return HostServer(converted_and_served, what, server, tie_nats)
