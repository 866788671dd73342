"""Memory planner: will this model, at these settings, run on this device?

Pure arithmetic over the catalog and the profile. What llama.cpp allocates at load:
- weights: every tensor at the type llama-quantize gives it (catalog.weight_bytes);
- repacked weights: the CPU backend copies the matrices it has faster kernels for
  into an interleaved layout (CPU_REPACK); the mapped originals stay resident as page
  cache until reclaimed, so they count twice;
- KV cache: n_layer x 2 (K and V) x n_kv_heads x head_dim x element size, per token,
  for context_length tokens per slot x parallel slots (we run llama-server with
  -c context_length*parallel -np parallel, no unified cache, so each slot owns its
  share);
- compute buffer: one graph reserved for the worst case, an ubatch attending over a
  slot's cache; the KQ mask plus the largest stage (attention scores, FFN, logits);
- output buffer: one row of logits per sequence;
- overhead: the process itself (binary, tokenizer tables, threads) and the gateway.
Verdict against RAM minus what the OS keeps: fits (<= 85%), tight (<= 100%),
does not fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from . import catalog
from .catalog import GGML_TYPES, ModelArch
from .schema import Profile
from .targets import TARGETS
from .units import GiB, MiB, format_size

FIT_SHARE = 0.85  # above this share of the budget the verdict is "tight"
# Estimates of fixed costs, per engine, from measuring the processes (see docs/planner.md).
ENGINE_OVERHEAD = {"llama.cpp": 96 * MiB, "tensorrt-llm": 1024 * MiB}
GATEWAY_OVERHEAD = 48 * MiB

# KV cache element sizes: llama-server --cache-type-k/-v (ggml type traits).
KV_BYTES = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": GGML_TYPES["Q8_0"].bpw / 8, "q5_1": GGML_TYPES["Q5_1"].bpw / 8,
    "q5_0": GGML_TYPES["Q5_0"].bpw / 8, "q4_1": GGML_TYPES["Q4_1"].bpw / 8,
    "q4_0": GGML_TYPES["Q4_0"].bpw / 8, "iq4_nl": GGML_TYPES["IQ4_NL"].bpw / 8,
}


class Verdict(StrEnum):
    FITS = "fits"
    TIGHT = "tight"
    NO_FIT = "does not fit"

    @property
    def exit_code(self) -> int:
        return {"fits": 0, "tight": 1, "does not fit": 3}[self.value]


@dataclass(frozen=True)
class PlanInput:
    model_id: str
    quant: str
    engine: catalog.Engine
    context_length: int  # per slot
    parallel: int
    kv_cache_type: str
    flash_attn: str
    ubatch_size: int
    ram: int
    reserved: int
    memory_max: int | None  # explicit systemd MemoryMax, None for auto
    unified_gpu: bool
    repack_types: tuple[str, ...] = ()  # weight types the CPU backend copies at load

    @classmethod
    def from_profile(cls, p: Profile) -> PlanInput:
        mm = p.service.memory_max
        return cls(
            model_id=p.model.id, quant=p.model.quant, engine=p.engine.kind,
            context_length=p.runtime.context_length, parallel=p.runtime.parallel,
            kv_cache_type=p.runtime.kv_cache_type, flash_attn=p.runtime.flash_attn,
            ubatch_size=p.runtime.ubatch_size, ram=p.device.ram,
            reserved=p.os.reserved_memory, memory_max=None if mm == "auto" else mm,
            unified_gpu=p.device.accelerator.kind == "cuda",
            repack_types=(() if p.engine.kind != "llama.cpp"
                          or p.device.accelerator.kind == "cuda"
                          else TARGETS[p.target].cpu_repack_types),
        )


@dataclass
class Suggestion:
    change: str  # what to set, e.g. "model.quant: Q8_0"
    total: int  # predicted total after the change
    verdict: Verdict


@dataclass
class BuildCheck:
    what: str
    peak: int
    budget: int
    ok: bool
    advice: str


@dataclass
class Plan:
    input: PlanInput
    weights: int
    repacked: int
    kv_per_slot: int
    kv_total: int
    compute: int
    output: int
    engine_overhead: int
    gateway_overhead: int
    total: int
    budget: int
    limit: int  # what total is held against: budget, or an explicit MemoryMax
    memory_max: int  # MemoryMax to give the engine unit
    verdict: Verdict
    reason: str
    gpu_share: int | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    build: BuildCheck | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        for s in d["suggestions"]:
            s["verdict"] = s["verdict"].value
        return d


def kv_bytes_per_token(model: ModelArch, kv_type: str) -> float:
    return model.n_layer * 2 * model.n_embd_kv * KV_BYTES[kv_type]


def compute_buffer_bytes(model: ModelArch, pin: PlanInput) -> int:
    """Peak of llama.cpp's worst-case graph (llama-context.cpp sched_reserve).

    An ubatch of n_tok tokens; each slot's attention spans its own n_ctx_seq cells (no
    unified KV cache). The KQ mask is an input, alive throughout (f32, or f16 with flash
    attention); the intermediates share memory, so the rest is the largest stage:
    attention scores (without flash attention), the FFN, or the logits. Fitted to
    llama-server's "compute buffer size" for Qwen2 shapes (see docs/planner.md)."""
    n_ctx_seq = _round_up(pin.context_length, 256)
    n_tok = min(pin.ubatch_size, n_ctx_seq * pin.parallel)
    f32 = 4
    if pin.flash_attn == "off":
        mask = n_tok * n_ctx_seq * f32
        attn = n_tok * (n_ctx_seq * model.n_head + 5 * model.n_embd + 2 * model.n_embd_kv) * f32
    else:
        mask = n_tok * n_ctx_seq * 2
        attn = n_tok * 8 * model.n_embd * f32
    ffn = n_tok * (3 * model.n_ff + 4 * model.n_embd) * f32
    logits = min(n_tok, pin.parallel) * model.n_vocab * f32
    return mask + max(attn, ffn, logits)


def _limit(pin: PlanInput) -> tuple[int, int]:
    budget = pin.ram - pin.reserved
    return budget, min(budget, pin.memory_max) if pin.memory_max else budget


def _totals(pin: PlanInput) -> dict[str, int]:
    model = catalog.get_model(pin.model_id)
    kv_slot = math.ceil(kv_bytes_per_token(model, pin.kv_cache_type)
                        * _round_up(pin.context_length, 256))
    parts = {
        "weights": catalog.weight_bytes(pin.model_id, pin.quant),
        "repacked": catalog.repacked_bytes(pin.model_id, pin.quant, pin.repack_types),
        "kv_per_slot": kv_slot,
        "kv_total": kv_slot * pin.parallel,
        "compute": compute_buffer_bytes(model, pin),
        "output": model.n_vocab * 4 * pin.parallel,
        "engine_overhead": ENGINE_OVERHEAD[pin.engine],
        "gateway_overhead": GATEWAY_OVERHEAD,
    }
    parts["total"] = sum(v for k, v in parts.items() if k != "kv_per_slot")
    return parts


def _verdict(total: int, pin: PlanInput) -> tuple[Verdict, str]:
    budget, limit = _limit(pin)
    if pin.memory_max and total > pin.memory_max:
        return Verdict.NO_FIT, (f"needs {format_size(total)} but service.memory_max is "
                                f"{format_size(pin.memory_max)}")
    if total > budget:
        return Verdict.NO_FIT, (f"needs {format_size(total)}, {format_size(total - budget)} "
                                f"more than the {format_size(budget)} left after the OS")
    if total > FIT_SHARE * limit:
        return Verdict.TIGHT, (f"needs {total / limit:.0%} of the {format_size(limit)} "
                               f"available; leave {1 - FIT_SHARE:.0%} headroom")
    return Verdict.FITS, f"uses {total / limit:.0%} of the {format_size(limit)} available"


def plan(pin: PlanInput, *, build: BuildCheck | None = None,
         suggest: bool = True) -> Plan:
    parts = _totals(pin)
    budget, limit = _limit(pin)
    verdict, reason = _verdict(parts["total"], pin)
    memory_max = pin.memory_max or min(budget, _round_up(int(parts["total"] * 1.2), 16 * MiB))
    gpu = None
    if pin.unified_gpu:
        gpu = parts["weights"] + parts["kv_total"] + parts["compute"] + parts["output"]
    result = Plan(input=pin, **parts, budget=budget, limit=limit, memory_max=memory_max,
                  verdict=verdict, reason=reason, gpu_share=gpu, build=build)
    if suggest and verdict is not Verdict.FITS:
        result.suggestions = suggestions(pin)
    return result


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _fits(pin: PlanInput) -> int | None:
    """Predicted total when `pin` fits, else None."""
    total = _totals(pin)["total"]
    return total if _verdict(total, pin)[0] is Verdict.FITS else None


def suggestions(pin: PlanInput) -> list[Suggestion]:
    """Single changes that make the plan fit, best first within each kind."""
    out: list[Suggestion] = []

    def consider(change: str, new: PlanInput) -> bool:
        total = _fits(new)
        if total is not None:
            out.append(Suggestion(change, total, Verdict.FITS))
        return total is not None

    # A smaller quantization: the best quality one that fits.
    current = catalog.weight_bytes(pin.model_id, pin.quant)
    smaller = sorted((q for q in catalog.quants_for(pin.engine)
                      if catalog.weight_bytes(pin.model_id, q.name) < current),
                     key=lambda q: -catalog.weight_bytes(pin.model_id, q.name))
    for q in smaller:
        if consider(f"model.quant: {q.name}", replace(pin, quant=q.name)):
            break
    # A quantized KV cache (llama.cpp: needs flash attention for V).
    if pin.engine == "llama.cpp" and KV_BYTES[pin.kv_cache_type] > KV_BYTES["q8_0"]:
        new = replace(pin, kv_cache_type="q8_0",
                      flash_attn="on" if pin.flash_attn == "off" else pin.flash_attn)
        extra = " (with runtime.flash_attn: on)" if pin.flash_attn == "off" else ""
        consider(f"runtime.kv_cache_type: q8_0{extra}", new)
    # A shorter context: the longest (multiple of 256) that fits.
    lo, hi = 0, pin.context_length // 256 - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits(replace(pin, context_length=mid * 256)):
            lo = mid
        else:
            hi = mid - 1
    if lo >= 2:  # 512 tokens is the shortest context worth suggesting
        consider(f"runtime.context_length: {lo * 256}", replace(pin, context_length=lo * 256))
    # Fewer slots.
    for k in range(pin.parallel - 1, 0, -1):
        if consider(f"runtime.parallel: {k}", replace(pin, parallel=k)):
            break
    # A smaller model: the largest that fits, at this quantization or the best one
    # that fits.
    size = catalog.get_model(pin.model_id).n_params
    for m in sorted(catalog.MODELS.values(), key=lambda m: -m.n_params):
        if m.n_params >= size:
            continue
        if consider(f"model.id: {m.id}", replace(pin, model_id=m.id)):
            break
        quants = sorted(catalog.quants_for(pin.engine),
                        key=lambda q: -catalog.weight_bytes(m.id, q.name))
        if any(consider(f"model.id: {m.id} with model.quant: {q.name}",
                        replace(pin, model_id=m.id, quant=q.name)) for q in quants):
            break
    return out


# --- building on the device -------------------------------------------------------

# nvcc on ggml-cuda's template instances peaks near 1.5 GiB per job (seen on Orin);
# gcc on ggml-cpu near 0.5 GiB.
COMPILE_JOB_PEAK = {"cuda": int(1.5 * GiB), "cpu": 512 * MiB}
TRT_TOOLING = int(1.5 * GiB)  # python, torch, CUDA context during convert/quantize


def build_check(p: Profile) -> BuildCheck | None:
    """Peak memory of building on the device itself, when the profile does that."""
    if not p.engine.build_on_device:
        return None
    budget = p.device.ram - p.os.reserved_memory
    model = catalog.get_model(p.model.id)
    if p.engine.kind == "tensorrt-llm":
        # Checkpoint conversion/AWQ calibration holds the fp16 model plus activations;
        # trtllm-build then holds the weights twice (network + serialized engine).
        fp16 = model.n_params * 2
        engine = catalog.weight_bytes(p.model.id, p.model.quant)
        peak = max(int(fp16 * 1.25) + TRT_TOOLING, engine * 2 + GiB)
        ok = peak <= budget
        advice = ("" if ok else "build the engine on a larger Orin of the same JetPack "
                  "(engines are portable across one GPU family and TensorRT version), or "
                  "pick a smaller model")
        return BuildCheck(f"TensorRT-LLM engine build for {model.id} {p.model.quant}",
                          peak, budget, ok, advice)
    per_job = COMPILE_JOB_PEAK["cuda" if p.device.accelerator.kind == "cuda" else "cpu"]
    jobs = p.engine.build_jobs or p.device.cpu_cores
    peak = jobs * per_job + 512 * MiB
    ok = peak <= budget
    safe = max(1, (budget - 512 * MiB) // per_job)
    advice = "" if ok else f"set engine.build_jobs: {safe}"
    return BuildCheck(f"llama.cpp compile with {jobs} jobs", peak, budget, ok, advice)
