"""Planner arithmetic checked by hand against the catalog, and its verdicts."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from stand_ins import device

from builder import planner, resolve
from builder.contracts import PlanInput, Verdict
from builder.engines.llama_cpp import COMPILE_JOB_PEAK
from builder.engines.llama_cpp.memory import CACHE_RAM_DEFAULT
from builder.model import catalog
from builder.model.shape import from_catalog
from builder.planner import plan
from builder.units import GiB, MiB, format_size

LLAMA = resolve.engine_named("llama.cpp")


def pin(model_id: str = "qwen2.5-0.5b-instruct", quant: str = "Q4_K_M", **kw) -> PlanInput:
    base = dict(model=from_catalog(model_id, quant, LLAMA), engine=LLAMA,
                context_length=4096, parallel=1, kv_cache_type="f16", flash_attn="auto",
                ubatch_size=512, ram=4 * GiB, reserved=320 * MiB, memory_max=None,
                unified_gpu=False)
    return PlanInput(**{**base, **kw})


def applied(start: PlanInput, **change) -> PlanInput:
    """`start` with a suggestion's change: model.id/model.quant pick another catalog model."""
    model_id = change.pop("model_id", start.model_id)
    quant = change.pop("quant", start.quant)
    return dataclasses.replace(start, model=from_catalog(model_id, quant, start.engine),
                               **change)


def test_kv_cache_by_hand() -> None:
    # 24 layers x (K + V) x 2 KV heads x 64 head dim x 2 bytes (f16) x 4096 tokens
    assert plan(pin()).kv_per_slot == 24 * 2 * 2 * 64 * 2 * 4096 == 48 * MiB
    # q8_0 stores 32 values in 34 bytes
    assert plan(pin(kv_cache_type="q8_0")).kv_per_slot == 24 * 2 * 128 * 4096 * 34 // 32
    # 7B: 28 layers x 2 x 4 KV heads x 128 x 2 bytes = 56 KiB per token; 4 slots
    p = plan(pin(model_id="qwen2.5-7b-instruct", context_length=8192, parallel=4))
    assert p.kv_per_slot == 28 * 2 * 4 * 128 * 2 * 8192
    assert p.kv_total == 4 * p.kv_per_slot


def test_context_is_rounded_up_to_256_cells_per_slot_like_llama_cpp() -> None:
    assert plan(pin(context_length=1000)).kv_per_slot == plan(pin(context_length=1024)
                                                              ).kv_per_slot


def test_total_is_the_sum_of_its_parts() -> None:
    p = plan(pin(parallel=2))
    assert p.total == (p.weights + p.repacked + p.kv_total + p.compute + p.output
                       + p.engine_overhead + p.gateway_overhead + p.prompt_cache
                       + p.checkpoints)
    assert p.weights == LLAMA.weight_bytes(catalog.get_model("qwen2.5-0.5b-instruct"),
                                           "Q4_K_M")
    assert p.output == 151936 * 4 * 2  # one f32 logits row per slot


def test_compute_buffer_without_flash_attention_grows_with_context() -> None:
    short = plan(pin(flash_attn="off", context_length=1024)).compute
    long = plan(pin(flash_attn="off", context_length=16384)).compute
    # KQ scores: 512 tokens x 16384 cells x 14 heads x 4 bytes dominate
    assert long >= 512 * 16384 * 14 * 4 > short
    assert plan(pin(flash_attn="on", context_length=16384)).compute < long


def test_repacked_weights_are_the_matrices_the_cpu_relays_out() -> None:
    # x86 AVX2 repacks Q4_K: in 0.5B Q4_K_M that is ffn_down of the 12 layers that
    # use_more_bits leaves at Q4_K (4864 x 896, 144 bytes per 256)
    p = plan(pin(repack_types=("Q4_0", "Q4_K", "IQ4_NL")))
    assert p.repacked == 12 * 4864 * 896 * 144 // 256
    assert plan(pin()).repacked == 0  # a CPU without repack kernels
    # the Pi 5 (dotprod) also repacks Q6_K, and the tied embedding is never repacked
    pi = plan(pin(model_id="qwen2.5-1.5b-instruct",
                  repack_types=("Q4_0", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")))
    embd = 151936 * 1536 * 210 // 256
    assert pi.repacked == pi.weights - embd - 28 * (3 * 1536 + 2 * 256) * 4 - 1536 * 4


def test_pi_and_x86_profiles_plan_their_cpu_repack() -> None:
    pi = resolve.plan_input(device("pi5-4gb"))
    assert "Q6_K" in pi.repack_types
    orin = resolve.plan_input(device("orin-nano-8gb"))
    assert orin.repack_types == ()


def test_budget_is_ram_minus_what_the_os_keeps() -> None:
    p = plan(pin())
    assert p.budget == p.limit == 4 * GiB - 320 * MiB


# --- the verdicts the issue names ---------------------------------------------------

def test_7b_f16_on_pi5_4gb_does_not_fit(cli) -> None:
    r = cli("plan", "--profile", "pi5-4gb", "--model", "qwen2.5-7b-instruct", "--quant", "F16")
    assert r.code == 3
    assert "verdict: does not fit" in r.out
    assert "to make it fit, change one of:" in r.out


def test_0_5b_q4_k_m_4k_on_pi5_4gb_fits(cli) -> None:
    r = cli("plan", "--profile", "pi5-4gb", "--model", "qwen2.5-0.5b-instruct",
            "--quant", "q4_k_m", "--ctx", "4096")
    assert r.code == 0
    assert "verdict: fits" in r.out


def test_3b_q8_on_pi5_4gb_is_tight(cli) -> None:
    r = cli("plan", "--profile", "pi5-4gb", "--model", "qwen2.5-3b-instruct", "--quant", "Q8_0",
            "--json")
    assert r.code == 1
    d = json.loads(r.out)
    assert d["verdict"] == "tight"
    assert planner.FIT_SHARE * d["limit"] < d["total"] <= d["limit"]


@pytest.mark.parametrize("name", ["orin-agx-64gb", "orin-nano-8gb", "pi5-8gb", "pi5-4gb",
                                  "x86-gateway"])
def test_every_builtin_profile_fits_as_shipped(name: str, cli) -> None:
    assert cli("plan", "--profile", name).code == 0


LONG_CONTEXT = pin(model_id="qwen2.5-3b-instruct", quant="Q6_K", context_length=16384,
                   parallel=4, ram=5 * GiB)
BIG_WEIGHTS = pin(model_id="qwen2.5-3b-instruct", quant="Q8_0", context_length=8192,
                  parallel=2, ram=4 * GiB)


@pytest.mark.parametrize(("start", "kinds"), [
    (LONG_CONTEXT, ["runtime.kv_cache_type", "runtime.context_length", "runtime.parallel",
                    "model.id"]),
    (BIG_WEIGHTS, ["model.quant", "model.id"]),
])
def test_suggestions_each_make_it_fit_when_applied(start: PlanInput, kinds: list[str]) -> None:
    p = plan(start)
    assert p.verdict is Verdict.NO_FIT
    assert [s.change.split(":")[0] for s in p.suggestions] == kinds
    for s in p.suggestions:
        field, value = s.change.split(": ", 1)
        value = value.split(" ")[0]
        key = {"model.quant": "quant", "runtime.kv_cache_type": "kv_cache_type",
               "runtime.context_length": "context_length", "runtime.parallel": "parallel",
               "model.id": "model_id"}[field]
        typed = int(value) if key in ("context_length", "parallel") else value
        after = plan(applied(start, **{key: typed}))
        assert after.verdict is Verdict.FITS, s.change
        assert after.total == s.total


def test_suggested_context_is_the_longest_that_fits() -> None:
    start = LONG_CONTEXT
    ctx = next(int(s.change.split(": ")[1]) for s in plan(start).suggestions
               if s.change.startswith("runtime.context_length"))
    assert plan(dataclasses.replace(start, context_length=ctx)).verdict is Verdict.FITS
    assert plan(dataclasses.replace(start, context_length=ctx + 256)).verdict is not \
        Verdict.FITS


def test_explicit_memory_max_below_the_need_does_not_fit() -> None:
    p = plan(pin(memory_max=256 * MiB))
    assert p.verdict is Verdict.NO_FIT
    assert "service.memory_max is 256MiB" in p.reason


def test_auto_memory_max_leaves_20_percent_headroom_within_the_budget() -> None:
    p = plan(pin(prompt_cache=0))
    assert p.total * 1.2 <= p.memory_max <= p.budget
    # the prompt cache fills the plan to its 85% line: 20% more is over the budget
    assert plan(pin()).memory_max == p.budget


# --- what the engine may grow into while serving --------------------------------------

def test_prompt_cache_fills_what_the_plan_leaves_below_the_fits_line() -> None:
    loaded = plan(pin(prompt_cache=0))
    p = plan(pin())
    assert p.prompt_cache > 0 and p.prompt_cache % MiB == 0  # --cache-ram is whole MiB
    assert p.total == loaded.total + p.prompt_cache + p.checkpoints
    assert p.verdict is Verdict.FITS
    assert p.total <= planner.FIT_SHARE * p.limit < p.total + MiB
    assert f"{format_size(p.prompt_cache)} of it cache" in p.reason


def test_prompt_cache_is_planned_within_an_explicit_memory_max() -> None:
    p = plan(pin(memory_max=1 * GiB))
    assert p.limit == 1 * GiB and p.memory_max == 1 * GiB
    assert p.prompt_cache > 0 and p.total <= planner.FIT_SHARE * GiB


def test_no_prompt_cache_where_the_plan_leaves_no_headroom() -> None:
    tight = pin(model_id="qwen2.5-3b-instruct", quant="Q8_0")  # 93% of a 4 GiB Pi
    p = plan(tight)
    assert p.verdict is Verdict.TIGHT and p.prompt_cache == 0
    assert p.total == plan(dataclasses.replace(tight, prompt_cache=0)).total


def test_auto_prompt_cache_never_exceeds_llama_cpp_default() -> None:
    assert plan(pin(ram=64 * GiB)).prompt_cache == CACHE_RAM_DEFAULT == 8192 * MiB


def test_an_explicit_prompt_cache_is_counted_and_judged() -> None:
    p = plan(pin(prompt_cache=3584 * MiB))  # more than a 4 GiB device has left
    assert p.prompt_cache == 3584 * MiB
    assert p.total == plan(pin(prompt_cache=0)).total + 3584 * MiB
    assert p.verdict is Verdict.NO_FIT
    assert plan(pin(prompt_cache=256 * MiB)).verdict is Verdict.FITS


@pytest.mark.parametrize("name", ["pi5-4gb", "pi5-8gb", "x86-gateway"])
def test_memory_max_covers_everything_the_engine_may_hold(name: str) -> None:
    p = plan(resolve.plan_input(device(name)))
    assert p.prompt_cache > 0
    engine = p.total - p.gateway_overhead
    assert engine == (p.weights + p.repacked + p.kv_total + p.compute + p.output
                      + p.engine_overhead + p.prompt_cache + p.checkpoints)
    assert engine <= p.memory_max <= p.budget


def test_orin_reports_the_gpu_share_of_unified_memory(cli) -> None:
    d = json.loads(cli("plan", "--profile", "orin-agx-64gb", "--json").out)
    assert d["gpu_share"] == d["weights"] + d["kv_total"] + d["compute"] + d["output"]


# --- building on the device ----------------------------------------------------------

def test_tensorrt_llm_build_of_7b_on_orin_nano_warns(cli) -> None:
    r = cli("plan", "--profile", "orin-nano-8gb", "--model", "qwen2.5-7b-instruct", "--json")
    build = json.loads(r.out)["build"]
    assert build["ok"] is False and build["peak"] > build["budget"]
    r = cli("plan", "--profile", "orin-nano-8gb", "--model", "qwen2.5-7b-instruct")
    assert "warning: on-device build" in r.out


def test_tensorrt_llm_build_of_the_default_orin_nano_model_is_ok() -> None:
    check = device("orin-nano-8gb").plan.build
    assert check is not None and check.ok


def test_cross_built_profiles_have_no_on_device_build() -> None:
    assert device("pi5-4gb").plan.build is None


def test_llama_cpp_cuda_build_on_orin_nano_advises_fewer_jobs(workdir, cli) -> None:
    (workdir / "profiles").mkdir()
    (workdir / "profiles/nano-gguf.yaml").write_text(
        "extends: orin-nano-8gb\nengine:\n  kind: llama.cpp\nmodel:\n  quant: Q4_K_M\n")
    d = json.loads(cli("plan", "--profile", "nano-gguf", "--json").out)
    assert d["build"]["ok"] is False
    jobs = int(d["build"]["advice"].rsplit(" ", 1)[1])
    assert jobs * COMPILE_JOB_PEAK[True] + 512 * MiB <= d["build"]["budget"]


# --- overrides on the command line ----------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--quant", "Q9"], "error: --quant: 'Q9' is not a llama.cpp quantization; choose one "
     "of Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16\n"),
    (["--model", "llama-3"], "error: --model: unknown model 'llama-3'; known: "
     "qwen2.5-0.5b-instruct, qwen2.5-1.5b-instruct, qwen2.5-3b-instruct, "
     "qwen2.5-7b-instruct\n"),
    (["--ctx", "100000"], "error: --ctx: 100000 exceeds qwen2.5-1.5b-instruct's maximum "
     "context of 32768\n"),
    (["--parallel", "0"], "error: --parallel: input should be greater than or equal to 1, "
     "got 0\n"),
    (["--kv-cache-type", "q3"], "error: --kv-cache-type: must be one of 'f32', 'f16', "
     "'bf16', 'q8_0', 'q5_1', 'q5_0', 'q4_1', 'q4_0' or 'iq4_nl', got 'q3'\n"),
    (["--ctx", "abc"], "error: Invalid value for '--ctx': 'abc' is not a valid integer. "
     "(see `builder plan --help`)\n"),
])
def test_bad_override_names_the_flag(args: list[str], message: str, cli) -> None:
    r = cli("plan", "--profile", "pi5-4gb", *args)
    assert (r.code, r.err) == (2, message)


def test_planning_an_abstract_base_is_refused(cli) -> None:
    r = cli("plan", "--profile", "base-pi5")
    assert r.code == 2 and "is an abstract base; plan a profile that extends it" in r.err


# --- the gateway -------------------------------------------------------------------------

def test_the_gateway_is_planned_at_the_memory_max_its_limits_need(cli) -> None:
    """Its share of the plan is its unit's MemoryMax, which grows with what it may hold:
    every place (slots and queue) with a body and a whole reply (a fixed 128M was
    outgrown at 8 slots); `builder plan` shows it, and a release carries it."""
    from stand_ins import build_context

    from builder import build as build_mod
    from builder.fleet import release

    one = plan(pin())
    assert one.gateway_overhead == planner.gateway_memory_max(1, 16, MiB, 1024)
    for more in (dict(parallel=8), dict(max_queue=64), dict(max_request_bytes=4 * MiB),
                 dict(max_tokens=8192)):
        assert plan(pin(**more)).gateway_overhead > one.gateway_overhead, more
    orin = device("orin-agx-64gb").plan
    assert orin.gateway_overhead > 128 * MiB and orin.gateway_overhead % (16 * MiB) == 0
    out = cli("plan", "--profile", "orin-agx-64gb").out
    assert re.search(rf"gateway +{re.escape(format_size(orin.gateway_overhead))} +its "
                     "MemoryMax", out), out
    assert f"MemoryMax={orin.gateway_overhead}\n" in release.gateway_unit_conf(
        build_mod.release_inputs(build_context("orin-agx-64gb")))
