"""llama-server's settings, rendered from a profile (pure): one table that gives both
its command line and the LLAMA_ARG_* environment its unit reads; and what it says it
allocated at load. Flags are llama.cpp's own (tools/server, common/arg.cpp)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...schema import Runtime
from .memory import CTX_CHECKPOINTS

MiB = 1024 * 1024


def load_mode(rt: Runtime) -> str:
    """llama-server --load-mode for the profile's mmap/mlock pair."""
    return {(True, False): "mmap", (True, True): "mmap+mlock", (False, True): "mlock",
            (False, False): "none"}[(rt.mmap, rt.mlock)]


def cache_ram_mib(rt: Runtime, prompt_cache: int | None) -> int:
    """--cache-ram: the planned prompt cache (bytes), else the profile's explicit size;
    'auto' without a plan keeps none (nothing unplanned is held)."""
    if prompt_cache is None:
        prompt_cache = 0 if rt.prompt_cache == "auto" else int(rt.prompt_cache)
    return prompt_cache // MiB


def server_settings(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
                    threads: int, alias: str | None = None, prompt_cache: int | None = None
                    ) -> list[tuple[str, str, str]]:
    """Every runtime knob as (llama-server flag, its environment variable, value): the
    one table both the command line and the service's EnvironmentFile come from.
    -c is the total over all slots (no unified KV cache), so each slot gets
    context_length cells; --fit off keeps the server from resizing what was planned;
    --cache-ram and --ctx-checkpoints bound what it keeps while serving to the plan's
    prompt_cache (bytes) and checkpoints (none), instead of llama.cpp's defaults (an
    8 GiB prompt cache, 32 checkpoints per slot)."""
    rows = [
        ("--model", "LLAMA_ARG_MODEL", model),
        ("--host", "LLAMA_ARG_HOST", host),
        ("--port", "LLAMA_ARG_PORT", str(port)),
        ("--ctx-size", "LLAMA_ARG_CTX_SIZE", str(rt.context_length * rt.parallel)),
        ("--parallel", "LLAMA_ARG_N_PARALLEL", str(rt.parallel)),
        ("--kv-unified", "LLAMA_ARG_KV_UNIFIED", "false"),
        ("--threads", "LLAMA_ARG_THREADS", str(rt.threads or threads)),
        ("--batch-size", "LLAMA_ARG_BATCH", str(rt.batch_size)),
        ("--ubatch-size", "LLAMA_ARG_UBATCH", str(rt.ubatch_size)),
        ("--cache-type-k", "LLAMA_ARG_CACHE_TYPE_K", rt.kv_cache_type),
        ("--cache-type-v", "LLAMA_ARG_CACHE_TYPE_V", rt.kv_cache_type),
        ("--flash-attn", "LLAMA_ARG_FLASH_ATTN", rt.flash_attn),
        ("--load-mode", "LLAMA_ARG_LOAD_MODE", load_mode(rt)),
        ("--fit", "LLAMA_ARG_FIT", "off"),
        ("--cache-ram", "LLAMA_ARG_CACHE_RAM", str(cache_ram_mib(rt, prompt_cache))),
        ("--ctx-checkpoints", "LLAMA_ARG_CTX_CHECKPOINTS", str(CTX_CHECKPOINTS)),
        # a prompt that drops or edits earlier turns keeps the cached chunks after the
        # change (KV shifted), in runs of 256 tokens or more, as llama.cpp's presets do
        ("--cache-reuse", "LLAMA_ARG_CACHE_REUSE", "256"),
        ("--metrics", "LLAMA_ARG_ENDPOINT_METRICS", "true"),
    ]
    if alias:
        rows.append(("--alias", "LLAMA_ARG_ALIAS", alias))
    return rows


def server_args(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
                threads: int, alias: str | None = None, prompt_cache: int | None = None
                ) -> list[str]:
    """The settings as llama-server flags (boolean flags take their on/off spelling)."""
    args: list[str] = []
    for flag, _, value in server_settings(rt, model, host=host, port=port, threads=threads,
                                          alias=alias, prompt_cache=prompt_cache):
        if value in ("true", "false"):
            args.append(flag if value == "true" else flag.replace("--", "--no-", 1))
        else:
            args += [flag, value]
    return args


def server_env(rt: Runtime, model: str, *, host: str = "127.0.0.1", port: int = 8081,
               threads: int, alias: str | None = None, prompt_cache: int | None = None
               ) -> dict[str, str]:
    """The settings as llama-server's own LLAMA_ARG_* environment variables."""
    rows = server_settings(rt, model, host=host, port=port, threads=threads, alias=alias,
                           prompt_cache=prompt_cache)
    return {env: value for _, env, value in rows}


@dataclass
class LoadReport:
    """What llama-server says it allocated (bytes), parsed from its log."""

    model: float = 0  # the model file's tensors (mapped or loaded)
    repack: float = 0  # copies of weights re-laid-out for the CPU's SIMD (CPU_REPACK)
    kv: float = 0
    compute: float = 0
    output: float = 0
    n_ctx: int = 0
    raw: list[str] = field(default_factory=list)


_PATTERNS = {
    "repack": re.compile(r"REPACK model buffer size = +([\d.]+) MiB"),
    "model": re.compile(r"(?<!REPACK) model buffer size = +([\d.]+) MiB"),
    "kv": re.compile(r"KV buffer size = +([\d.]+) MiB"),
    "compute": re.compile(r"compute buffer size = +([\d.]+) MiB"),
    "output": re.compile(r"output buffer size = +([\d.]+) MiB"),
}
_N_CTX = re.compile(r"llama_context: n_ctx += (\d+)")


def parse_load_report(text: str) -> LoadReport:
    r = LoadReport()
    for line in text.splitlines():
        for name, pat in _PATTERNS.items():
            m = pat.search(line)
            if m:
                setattr(r, name, getattr(r, name) + float(m.group(1)) * MiB)
                r.raw.append(line.strip())
                break
        m = _N_CTX.search(line)
        if m:
            r.n_ctx = int(m.group(1))
    return r
