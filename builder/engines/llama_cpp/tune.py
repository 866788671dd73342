"""How `builder tune` measures llama.cpp on a device: llama.cpp's own llama-bench (built
with the engine, shipped in every release's bin/), its flags for each runtime setting
and its JSON lines (tools/llama-bench/llama-bench.cpp in the pinned source: -t, -fa,
-ctk/-ctv, -b, -ub, -lm, -p/-n/-d, -r, -o jsonl; avg_ts, avg_ns, n_prompt, n_gen,
n_depth, cpu_info per test).

Two runs per setting: a prompt of `prompt` tokens on an empty context (prefill tok/s;
its time is the time to first token of such a prompt), and `gen` tokens decoded on an
empty context and after `depth` tokens (llama-bench fills the depth once per run and
restores it for each repetition, so the fill is not timed).
"""

from __future__ import annotations

import json
from typing import Any

from ...contracts import Platform
from ...schema import Profile, Runtime
from ...tuned import Knob
from .ggml import QUANTS
from .server import load_mode

TOOL = "llama-bench"
QUANTIZE = "llama-quantize"  # makes the weight format a candidate needs, on the device
# A weight format is a speed setting among formats of one size (the same bits per weight,
# within this): a bigger or smaller one is a quality choice, which stays the profile's.
SAME_SIZE_BPW = 0.5


def knobs(p: Profile, platform: Platform) -> list[Knob]:
    """The settings to try, one knob at a time, from the profile's: threads, flash
    attention, the KV cache type, how the model is loaded, the physical batch. Batch
    sizes shape prompt processing only (a decoded token is a batch of one), so for them
    only prefill is measured."""
    rt, cores = p.runtime, p.device.cpu_cores
    threads = rt.threads or cores
    out = [Knob("threads", tuple({"threads": t} for t in sorted(
        {max(1, cores // 2), max(1, cores - 1), cores} - {threads})))]
    out.append(Knob("flash_attn", ({"flash_attn": "on" if rt.flash_attn == "off"
                                                   else "off"},)))
    out.append(Knob("kv_cache_type", ({"kv_cache_type": "f16" if rt.kv_cache_type != "f16"
                                                          else "q8_0"},)))
    # mmap or not; never mlock: llama-bench runs as the admin user, whose memlock limit
    # (8 MiB by default) makes llama.cpp's mlock fail with a warning and go on, so it
    # would be timed as plain mmap and could win on noise for a setting never measured
    # (the unit runs it with LimitMEMLOCK=infinity)
    modes = ({"mmap": False, "mlock": rt.mlock}, {"mmap": True, "mlock": rt.mlock})
    out.append(Knob("load mode", tuple(m for m in modes
                                       if (m["mmap"], m["mlock"]) != (rt.mmap, rt.mlock))))
    out.append(Knob("ubatch_size", tuple(
        {"ubatch_size": u, "batch_size": max(rt.batch_size, u)}
        for u in (rt.ubatch_size // 2, rt.ubatch_size * 2) if u >= 32), prefill_only=True))
    return [k for k in (*weight_formats(p, platform), *out) if k.values]


def weight_formats(p: Profile, platform: Platform) -> list[Knob]:
    """On ARM, the weight format first (the other knobs are then tuned on the winner):
    the catalog's formats of the profile's size. ggml's CPU backend re-lays out Q4_0
    (4x4 blocks on dotprod, 4x8 on i8mm) and Q4_K (8x4, 8x8) differently
    (ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type), and which decodes faster
    depends on the core. A candidate is measured on a copy requantized on the device
    from the release's model (`requantize`): it has the tensor types, so the speed, of a
    file quantized from the source, which the next release carries."""
    if platform.arch != "arm64":
        return []
    own = next((q for q in QUANTS if q.name == p.model.quant.upper()), None)
    if own is None:
        return []
    return [Knob("weights", tuple(
        {"weights": q.name} for q in QUANTS
        if q is not own and abs(q.nominal_bpw - own.nominal_bpw) <= SAME_SIZE_BPW))]


def requantize(tool: str, model: str, workdir: str, quant: str, threads: int
               ) -> tuple[list[str], str]:
    """The llama-quantize run (on the device) that makes the (quantized) `model` at
    `quant` in `workdir` (tools/quantize/quantize.cpp: [--allow-requantize] model [out]
    type [nthreads]), and the file it makes. Each tensor gets the type `quant` gives it
    whatever its source type (llama_tensor_get_type), so the copy decodes as a file
    quantized from the source would; its quality is not that file's, which is why only
    its speed is used."""
    out = f"{workdir}/model-{quant}.gguf"
    return [tool, "--allow-requantize", model, out, quant, str(threads)], out


def _flags(rt: Runtime, threads: int) -> list[tuple[str, str]]:
    return [("-t", str(rt.threads or threads)), ("-fa", rt.flash_attn),
            ("-ctk", rt.kv_cache_type), ("-ctv", rt.kv_cache_type),
            ("-b", str(rt.batch_size)), ("-ub", str(rt.ubatch_size)), ("-lm", load_mode(rt))]


def _grouped(runtimes: list[Runtime], threads: int) -> list[list[str]] | None:
    """The settings as one set of llama-bench flags when they differ in one flag only
    (its values comma-separated: llama-bench runs one test per value, in order, with one
    model load and one depth fill when the context allows); None when they differ in
    more (llama-bench would run every combination)."""
    sets = [_flags(rt, threads) for rt in runtimes]
    varying = [i for i in range(len(sets[0])) if len({s[i][1] for s in sets}) > 1]
    if len(varying) > 1:
        return None
    out = []
    for i, (flag, value) in enumerate(sets[0]):
        out += [flag, ",".join(s[i][1] for s in sets) if i in varying else value]
    return [out]


def commands(tool: str, model: str, runtimes: list[Runtime], *, threads: int, prompt: int,
             gen: int, depth: int, reps: int, prefill_only: bool = False
             ) -> list[list[str]]:
    """The llama-bench runs that measure each of `runtimes` (argv lists, run on the
    device): their prefill, then (unless prefill_only) their decode at depth 0 and
    `depth`. Settings that differ in one flag share a run (see _grouped)."""
    flag_sets = _grouped(runtimes, threads) or [
        [x for pair in _flags(rt, threads) for x in pair] for rt in runtimes]
    runs = []
    for flags in flag_sets:
        common = [tool, "-m", model, "-r", str(reps), "-o", "jsonl", *flags]
        runs.append([*common, "-p", str(prompt), "-n", "0", "-d", "0"])
        if not prefill_only:
            runs.append([*common, "-p", "0", "-n", str(gen), "-d", f"0,{depth}"])
    return runs


def read(outputs: list[str], *, depth: int, count: int) -> list[dict[str, Any]]:
    """The measurements of `count` settings in the runs' output, in the order they were
    given (llama-bench runs the values of a flag in order: get_cmd_params_instances,
    llama-bench.cpp; its other lines are its log): prefill tok/s and its time (ms),
    decode tok/s at depth 0 and at `depth`, the CPU it saw."""
    prefill: list[dict[str, Any]] = []
    decode: list[dict[str, Any]] = []
    for text in outputs:
        for line in text.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                row = json.loads(line)
                tps, ns = float(row["avg_ts"]), float(row["avg_ns"])
                n_prompt, n_gen, n_depth = (int(row[k]) for k in
                                            ("n_prompt", "n_gen", "n_depth"))
            except (ValueError, KeyError, TypeError):
                continue
            cpu = str(row.get("cpu_info") or "")
            if n_prompt and not n_gen:
                prefill.append({"cpu": cpu, "prefill_tps": tps, "ttft_ms": ns / 1e6})
            elif n_gen and n_depth == 0:
                decode.append({"decode_tps_depth0": tps})
            elif n_gen and n_depth == depth and decode:
                decode[-1]["decode_tps"] = tps
    out = [dict(m) for m in prefill[:count]]
    for m, d in zip(out, decode, strict=False):
        m.update(d)
    return out + [{} for _ in range(count - len(out))]
