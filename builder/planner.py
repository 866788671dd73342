"""Memory planner: will this model, at these settings, run on this device?

Pure arithmetic over a PlanInput (contracts: the model's shape, the catalog's or
the file that is built, the runtime knobs and the device; builder/resolve.py makes it
from a profile). What the engine allocates is the engine's own memory model
(engines/<engine>: weights, repacked copies, KV cache, compute and output buffers, the
process, and what it may grow into while serving: llama-server's host prompt cache);
the planner adds the gateway, holds the total against RAM minus what the OS keeps -
fits (<= 85%), tight (<= 100%), does not fit - and looks for single changes that make
it fit. What an engine may grow into is bounded by `headroom`: what a fitting plan
leaves below the 85% line, so growth never changes the verdict.
"""

from __future__ import annotations

from dataclasses import replace

from .contracts import BuildCheck, Plan, PlanInput, Suggestion, Verdict
from .model import catalog
from .model.shape import from_catalog
from .schema import Profile
from .units import MiB, format_size

FIT_SHARE = 0.85  # above this share of the budget the verdict is "tight"

# The gateway's memory (its unit's MemoryMax, and its share of the plan): measured with
# the real gateway in front of a stand-in engine, every place taken by a valid request
# of max_request_bytes built to cost the most once parsed (33,000 small objects in a
# tool's parameters; a 1 MiB string that one emoji makes 4 bytes a character) and by
# replies of max_tokens with 20 logprobs each, left unread by their clients
# (tests/test_adversarial_gateway.py::test_a_full_gateway_stays_under_its_planned_memory_max).
# 1 MiB bodies, 1024 tokens: peak RSS 84-98 MiB streaming, 109-128 MiB with whole replies
# unread, at 1 to 8 slots and 16 queued (39 MiB at rest).
GATEWAY_BASE = 40 * MiB  # the process at rest
GATEWAY_PARSE = 24  # x max_request_bytes: the one body parsed at a time, with the heap it leaves
GATEWAY_PER_PLACE = 3 / 2  # x max_request_bytes: a request's body, raw or as sent (with buffers)
GATEWAY_REPLY_PER_TOKEN = 2 * 1024  # a whole reply's bytes per token (with 20 logprobs: ~1.5 KiB)
GATEWAY_STALLED_STREAM = 4 * MiB  # a stream's kernel send buffer to a client that stopped
# reading (net.ipv4.tcp_wmem's maximum), charged to the unit like its own memory
GATEWAY_MARGIN = 1.25


def _limit(pin: PlanInput) -> tuple[int, int]:
    budget = pin.ram - pin.reserved
    return budget, min(budget, pin.memory_max) if pin.memory_max else budget


def gateway_memory_max(slots: int, max_queue: int, max_request_bytes: int,
                       max_tokens: int) -> int:
    """The gateway unit's MemoryMax, from the limits that bound what it holds (see
    GATEWAY_BASE): every place (slots + max_queue) with a body and a whole reply, the
    streams' kernel buffers, one body being parsed, the process; plus a margin, in
    steps of 16 MiB."""
    place = GATEWAY_PER_PLACE * max_request_bytes + GATEWAY_REPLY_PER_TOKEN * max_tokens
    need = (GATEWAY_BASE + GATEWAY_PARSE * max_request_bytes
            + (slots + max_queue) * place + slots * GATEWAY_STALLED_STREAM)
    return _round_up(int(need * GATEWAY_MARGIN), 16 * MiB)


def _gateway(pin: PlanInput) -> int:
    return gateway_memory_max(pin.parallel, pin.max_queue, pin.max_request_bytes,
                              pin.max_tokens)


def headroom(pin: PlanInput, engine_bytes: int) -> int:
    """Bytes an engine whose fixed part is `engine_bytes` may still grow into without
    leaving the "fits" share of what is available (0 when there is none): whole MiB."""
    _, limit = _limit(pin)
    room = int(FIT_SHARE * limit) - engine_bytes - _gateway(pin)
    return max(0, room // MiB * MiB)


def _totals(pin: PlanInput) -> dict[str, int]:
    parts = {**pin.engine.memory(pin), "gateway_overhead": _gateway(pin)}
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


def _growth(parts: dict[str, int]) -> str:
    grown = parts.get("prompt_cache", 0) + parts.get("checkpoints", 0)
    return f", {format_size(grown)} of it cache the engine fills while serving" if grown \
        else ""


def plan(pin: PlanInput, *, build: BuildCheck | None = None,
         suggest: bool = True) -> Plan:
    parts = _totals(pin)
    budget, limit = _limit(pin)
    verdict, reason = _verdict(parts["total"], pin)
    if verdict is Verdict.FITS:
        reason += _growth(parts)
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

    # A smaller quantization of a catalog model: the best quality one that fits.
    if pin.model.in_catalog:
        current = pin.model.weights
        smaller = sorted((from_catalog(pin.model_id, q.name, pin.engine)
                          for q in pin.engine.quants),
                         key=lambda m: -m.weights)
        for m in (m for m in smaller if m.weights < current):
            if consider(f"model.quant: {m.quant}", replace(pin, model=m)):
                break
    # A cheaper KV cache, where the engine has one.
    cheaper = pin.engine.cheaper_kv(pin)
    if cheaper is not None:
        consider(*cheaper)
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
    # A smaller catalog model: the largest that fits, at this quantization (when the
    # engine has it) or the best one that fits.
    size = pin.model.arch.n_params
    own = {q.name for q in pin.engine.quants}
    for m in sorted(catalog.MODELS.values(), key=lambda m: -m.n_params):
        if m.n_params >= size:
            continue
        if pin.quant in own and consider(
                f"model.id: {m.id}", replace(pin, model=from_catalog(m.id, pin.quant,
                                                                     pin.engine))):
            break
        quants = sorted((from_catalog(m.id, q.name, pin.engine) for q in pin.engine.quants),
                        key=lambda x: -x.weights)
        if any(consider(f"model.id: {m.id} with model.quant: {q.quant}", replace(pin, model=q))
               for q in quants):
            break
    return out


# --- building on the device -------------------------------------------------------

def build_budget(p: Profile) -> int:
    """What building the engine on the device may use: its RAM less what the OS keeps."""
    return p.device.ram - p.os.reserved_memory
