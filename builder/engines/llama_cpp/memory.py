"""What llama.cpp allocates at load, for the planner:
- weights: every tensor at the type llama-quantize gives it (the model's shape);
- repacked weights: the CPU backend copies the matrices it has faster kernels for into
  an interleaved layout (CPU_REPACK); the mapped originals stay resident as page cache
  until reclaimed, so they count twice;
- KV cache: n_layer x 2 (K and V) x n_kv_heads x head_dim x element size, per token,
  for context_length tokens per slot x parallel slots (llama-server runs with
  -c context_length*parallel -np parallel, no unified cache, so each slot owns its
  share);
- compute buffer: one graph reserved for the worst case, an ubatch attending over a
  slot's cache; the KQ mask plus the largest stage (attention scores, FFN, logits);
- output buffer: one row of logits per sequence;
- overhead: the process itself (binary, tokenizer tables, threads);
and what llama-server may grow into while it serves (tools/server):
- the host prompt cache (--cache-ram, MiB; llama.cpp's default ceiling is 8 GiB): when a
  slot takes a new prompt it saves its current one - the slot's KV cells, a copy in
  host memory - and evicts the oldest saved prompts to stay under the ceiling. Planned
  at the ceiling: the headroom the plan leaves below its "fits" line (planner.headroom),
  never above llama.cpp's own default, or the profile's runtime.prompt_cache;
- context checkpoints (--ctx-checkpoints, default 32 per slot): copies of the state
  that cannot be rolled back, made only for models with sliding-window or recurrent
  layers. Qwen2 never makes them; they are turned off (0) so a replaced model cannot
  hold memory the plan does not count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ...model.catalog import ModelArch
from ...units import MiB
from .ggml import GGML_TYPES

if TYPE_CHECKING:
    from ...contracts import PlanInput

ENGINE_OVERHEAD = 96 * MiB  # llama-server's process, measured (docs/planner.md)
# llama-server --cache-ram default (common/common.h cache_ram_mib): the most "auto" plans
CACHE_RAM_DEFAULT = 8192 * MiB
CTX_CHECKPOINTS = 0  # --ctx-checkpoints: none (see above)

# KV cache element sizes: llama-server --cache-type-k/-v (ggml type traits).
KV_BYTES = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0,
    "q8_0": GGML_TYPES["Q8_0"].bpw / 8, "q5_1": GGML_TYPES["Q5_1"].bpw / 8,
    "q5_0": GGML_TYPES["Q5_0"].bpw / 8, "q4_1": GGML_TYPES["Q4_1"].bpw / 8,
    "q4_0": GGML_TYPES["Q4_0"].bpw / 8, "iq4_nl": GGML_TYPES["IQ4_NL"].bpw / 8,
}

# Weight types ggml's CPU backend re-lays out in RAM at load, by the SIMD it finds
# (ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type).
REPACK = (
    ("avx2", ("Q4_0", "Q4_K", "IQ4_NL")),
    ("dotprod", ("Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")),
)


def repacked_types(cpu_features: frozenset[str]) -> tuple[str, ...]:
    for feature, types in REPACK:
        if feature in cpu_features:
            return types
    return ()


def kv_bytes_per_token(model: ModelArch, kv_type: str) -> float:
    return model.n_layer * 2 * model.n_embd_kv * KV_BYTES[kv_type]


def cells(context_length: int) -> int:
    """llama.cpp rounds each sequence's KV cells up to a multiple of 256."""
    return -(-context_length // 256) * 256


def compute_buffer_bytes(model: ModelArch, pin: PlanInput) -> int:
    """Peak of llama.cpp's worst-case graph (llama-context.cpp sched_reserve).

    An ubatch of n_tok tokens; each slot's attention spans its own n_ctx_seq cells (no
    unified KV cache). The KQ mask is an input, alive throughout (f32, or f16 with flash
    attention); the intermediates share memory, so the rest is the largest stage:
    attention scores (without flash attention), the FFN, or the logits. Fitted to
    llama-server's "compute buffer size" for Qwen2 shapes (see docs/planner.md)."""
    n_ctx_seq = cells(pin.context_length)
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


def prompt_cache_bytes(pin: PlanInput, engine_bytes: int) -> int:
    """The host prompt cache's ceiling (whole MiB, as --cache-ram takes it): the
    profile's, else what the plan leaves, at most llama.cpp's default."""
    from ...planner import headroom

    if pin.prompt_cache is not None:
        return pin.prompt_cache // MiB * MiB
    return min(CACHE_RAM_DEFAULT, headroom(pin, engine_bytes))


def memory(pin: PlanInput) -> dict[str, int]:
    model = pin.model.arch
    kv_slot = math.ceil(kv_bytes_per_token(model, pin.kv_cache_type)
                        * cells(pin.context_length))
    parts = {
        "weights": pin.model.weights,
        "repacked": pin.model.repacked(pin.repack_types),
        "kv_per_slot": kv_slot,
        "kv_total": kv_slot * pin.parallel,
        "compute": compute_buffer_bytes(model, pin),
        "output": model.n_vocab * 4 * pin.parallel,
        "engine_overhead": ENGINE_OVERHEAD,
    }
    loaded = sum(v for k, v in parts.items() if k != "kv_per_slot")
    parts["prompt_cache"] = prompt_cache_bytes(pin, loaded)
    parts["checkpoints"] = 0  # --ctx-checkpoints 0: none are made (see above)
    return parts
