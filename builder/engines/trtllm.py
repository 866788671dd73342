"""TensorRT-LLM (the v0.12.0-jetson branch): engines are GPU-specific, so the device
builds them itself from a checkpoint the release carries, and serves them with the
branch's OpenAI server on loopback behind the gateway.

The release carries the model (a Hugging Face checkpoint directory, content-addressed)
and engine/trtllm.json: the build recipe (the checkpoint made with convert_checkpoint.py
or, for AWQ, quantize.py; then trtllm-build with limits from the profile and the
planner) and where TensorRT-LLM is on the device. Before the engine unit starts, the
inference role's edge-llm-engine-build.service runs `edge-llm-trtllm build`
(builder/device/trtllm.py: the engine from the device's cache or built now, keyed by
model, quantization, TensorRT-LLM version, L4T release, GPU and flags) as the engine
user, in the engine's sandbox, with only the cache writable; the engine unit's ExecStart
is `edge-llm-trtllm serve` (the OpenAI server on loopback), which reads the cache.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuilderError
from ..hardware import Platform
from ..model.catalog import QUANTS
from ..schema import Profile
from ..units import GiB, MiB
from . import Engine, EngineArtifact, Probe

if TYPE_CHECKING:
    from ..cache import Cache
    from ..device.layout import Layout
    from ..fleet.release import Inputs
    from ..model.pipeline import Fetched, ModelArtifact
    from ..planner import BuildCheck, PlanInput

PREQUANTIZED = {"int4_gptq"}  # the release carries the quantized checkpoint itself
ENGINE_OVERHEAD = 1 * GiB  # CUDA context, TensorRT runtime, the Python server
TOOLING_PEAK = 3 * GiB // 2  # python, torch and a CUDA context during convert/quantize
BUILD_TIMEOUT = 4 * 3600  # seconds the first start may take: the engine is built then
SETTINGS = "engine/trtllm.json"

# quantization -> how the checkpoint is made (examples/qwen/convert_checkpoint.py, or
# examples/quantization/quantize.py for AWQ, which needs calibration data)
CONVERT = {
    "int4_gptq": ["--use_weight_only", "--weight_only_precision", "int4_gptq", "--per_group"],
    "int8_wo": ["--use_weight_only", "--weight_only_precision", "int8"],
    "fp16": [],
}


@dataclass(frozen=True)
class TrtLlmRecipe:
    arch: str
    steps: list[list[str]]  # argv of each step, run on the device in the checkpoint's dir
    on_device: bool = True
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def commands(self) -> list[str]:
        return [shlex.join(s) for s in self.steps]


class TrtLlm(Engine):
    kind = "tensorrt-llm"
    probe = Probe(ready="/health", alive="/health")
    model_format = "hf"

    def version(self, p: Profile) -> str:
        return f"TensorRT-LLM {p.engine.tensorrt_llm.version}"

    def recipe(self, p: Profile, platform: Platform) -> TrtLlmRecipe:
        t = p.engine.tensorrt_llm
        quant = p.model.quant
        if quant == "int4_awq":
            make = ["python3", "examples/quantization/quantize.py", "--model_dir", "MODEL",
                    "--dtype", "float16", "--qformat", "int4_awq", "--awq_block_size", "128",
                    "--output_dir", "CHECKPOINT", "--calib_size", "32",
                    *(["--calib_dataset", t.calibration_dir] if t.calibration_dir else [])]
        else:
            make = ["python3", "examples/qwen/convert_checkpoint.py", "--model_dir", "MODEL",
                    "--output_dir", "CHECKPOINT", "--dtype", "float16", *CONVERT[quant]]
        max_num_tokens = t.max_num_tokens or min(8192, t.max_batch_size * t.max_input_len)
        build = ["trtllm-build", "--checkpoint_dir", "CHECKPOINT", "--output_dir", "ENGINE",
                 "--gemm_plugin", "float16", "--max_batch_size", str(t.max_batch_size),
                 "--max_input_len", str(t.max_input_len),
                 "--max_seq_len", str(p.runtime.context_length),
                 "--max_num_tokens", str(max_num_tokens)]
        if p.engine.build_jobs:
            build += ["--workers", str(p.engine.build_jobs)]
        return TrtLlmRecipe(arch=platform.arch, steps=[make, build], notes=[
            f"TensorRT-LLM {t.version} for CUDA sm_{platform.cuda_arch}, run on the device "
            "(engines are specific to the GPU and the TensorRT version), in "
            f"{t.checkout}: MODEL is the release's checkpoint, CHECKPOINT and ENGINE "
            "the device's work and cache directories"])

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        return None  # the device builds its engine

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        from ..model.catalog import get_model, weight_bytes
        from ..planner import BuildCheck, build_budget

        model = get_model(p.model.id)
        budget = build_budget(p)
        # Conversion (or AWQ calibration) holds its source checkpoint plus activations: the
        # GPTQ checkpoint for int4_gptq, the fp16 model otherwise; trtllm-build then holds
        # the weights twice (the network and the serialized engine).
        engine = weight_bytes(p.model.id, p.model.quant)
        source = engine if p.model.quant in PREQUANTIZED else model.n_params * 2
        peak = max(int(source * 1.25) + TOOLING_PEAK, engine * 2 + GiB)
        ok = peak <= budget
        advice = "" if ok else ", ".join([
            *([] if p.model.quant in PREQUANTIZED else
              ["use model.quant: int4_gptq (converted from its GPTQ checkpoint, no fp16 pass)"]),
            "use engine.kind: llama.cpp (CUDA, built on the device)", "or pick a smaller model"])
        return BuildCheck(f"TensorRT-LLM engine build for {model.id} {p.model.quant}",
                          peak, budget, ok, advice)

    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        from ..model.pipeline import ModelArtifact, tree_digest

        if fetched.kind != "hf":
            raise BuilderError(f"{fetched.origin}: TensorRT-LLM builds its engine from a "
                               "Hugging Face checkpoint directory, not a GGUF file")
        return ModelArtifact(fetched.path, tree_digest(fetched.files), p.model.quant, "hf",
                             files=fetched.files)

    def settings(self, i: Inputs, layout: Layout) -> dict[str, Any]:
        """engine/trtllm.json: what edge-llm-trtllm builds and serves on the device."""
        from ..targets import TARGETS

        p = i.profile
        t = p.engine.tensorrt_llm
        platform = TARGETS[p.target].platform(p)
        return {"version": t.version, "quant": p.model.quant, "sm": platform.cuda_arch,
                "model": f"{layout.model_dir}/{i.model.device_name}",
                "model_sha256": i.model.sha256, "checkout": t.checkout,
                "python": t.python, "port": p.service.engine_port,
                "steps": self.recipe(p, platform).steps}

    def release_files(self, i: Inputs, tree: Path) -> None:
        from ..device.layout import DEFAULT as LAYOUT

        (tree / "engine").mkdir()
        (tree / SETTINGS).write_text(json.dumps(self.settings(i, LAYOUT), indent=2) + "\n")

    def env(self, i: Inputs, layout: Layout) -> dict[str, str]:
        # CUDA loads kernels as they are first used: less memory on a unified-memory board
        return {"CUDA_MODULE_LOADING": "LAZY"}

    def exec_start(self, i: Inputs, layout: Layout) -> str:
        return f"{layout.tool('edge-llm-trtllm')} serve {layout.current}/{SETTINGS}"

    def start_timeout(self, p: Profile) -> int:
        # the first start waits for the build (edge-llm-engine-build.service gets this too)
        return BUILD_TIMEOUT

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        # 0.12's OpenAI server refuses fields it does not know (pydantic extra="forbid");
        # of llama.cpp's, it takes these (tensorrt_llm/serve/openai_protocol.py)
        return {**super().gateway_settings(layout),
                "engine_fields": ["ignore_eos", "min_p", "top_k"],
                "engine_status_file": layout.engine_status}

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        return platform.gpu_devices

    def memory(self, pin: PlanInput) -> dict[str, int]:
        """Weights in the engine's precision; a paged fp16 KV cache for the slots;
        activations of one engine step; the runtime process. (0.12's OpenAI server has no
        option to bound its KV pool, which the LLM API sizes from free memory: the engine
        unit's MemoryMax is what holds it to this plan; docs/orin.md.)"""
        m = pin.model.arch
        kv_slot = m.n_layer * 2 * m.n_embd_kv * 2 * pin.context_length
        step = pin.max_num_tokens * (4 * m.n_embd + 2 * m.n_ff) * 2
        return {
            "weights": pin.model.weights,
            "repacked": 0,
            "kv_per_slot": kv_slot,
            "kv_total": kv_slot * pin.parallel,
            "compute": step + 64 * MiB,
            "output": pin.max_batch_size * m.n_vocab * 4,
            "engine_overhead": ENGINE_OVERHEAD,
        }


assert set(CONVERT) | {"int4_awq"} >= {q.name for q in QUANTS.values()
                                       if q.engine == TrtLlm.kind}
ENGINE = TrtLlm()
