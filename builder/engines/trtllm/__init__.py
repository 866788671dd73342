"""TensorRT-LLM (the v0.12.0-jetson branch): engines are GPU-specific, so the device
builds them itself from a checkpoint the release carries, and serves them with the
branch's OpenAI server on loopback behind the gateway.

The release carries the model (a Hugging Face checkpoint directory, content-addressed)
and engine/build.json: the build recipe (the checkpoint made with convert_checkpoint.py
or, for AWQ, quantize.py; then trtllm-build with limits from the profile and the
planner) and where TensorRT-LLM is on the device. Before the engine unit starts, the
inference role's edge-llm-engine-build.service runs `edge-llm-trtllm build`
(through `edge-llm-engine-build`)
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

from ...contracts import (
    Engine,
    EngineArtifact,
    HostServer,
    OfflineInstall,
    Pinned,
    Platform,
    Probe,
    Quantization,
)
from ...errors import BuilderError
from ...schema import Profile
from ...units import GiB, MiB
from .settings import TensorRtLlmSettings

if TYPE_CHECKING:
    from ...cache import Cache
    from ...contracts import BuildCheck, Device, PlanInput, ReleaseInputs
    from ...device.layout import Layout
    from ...model.catalog import ModelArch, Tensor
    from ...model.pipeline import Fetched, ModelArtifact
    from ...model.shape import ModelShape

PREQUANTIZED = {"int4_gptq"}  # the release carries the quantized checkpoint itself
ENGINE_OVERHEAD = 1 * GiB  # CUDA context, TensorRT runtime, the Python server
TOOLING_PEAK = 3 * GiB // 2  # python, torch and a CUDA context during convert/quantize
BUILD_TIMEOUT = 4 * 3600  # seconds the first start may take: the engine is built then
SETTINGS = "engine/build.json"  # builder/device/engine_cache.py SETTINGS
TOOL = "edge-llm-trtllm"  # the device tool that builds and serves it (device/trtllm.py)
LEGACY_SETTINGS = "engine/trtllm.json"  # SETTINGS' name in releases before 2026-12

# TensorRT-LLM weight-only formats (convert_checkpoint.py; AWQ via quantize.py)
QUANTS = (
    Quantization("int4_gptq", 4 + 32 / 128,
                 "4-bit GPTQ weights from a GPTQ-Int4 checkpoint, fp16 scale and zero per "
                 "128-group; no calibration data"),
    Quantization("int4_awq", 4 + 16 / 128,
                 "4-bit AWQ weights, fp16 scale per 128-group; embeddings fp16"),
    Quantization("int8_wo", 8.0, "int8 weight-only, fp16 per-channel scales; embeddings fp16"),
    Quantization("fp16", 16.0, "unquantized half precision"),
)

# verify.min_agreement's tolerance when the device runs the checkpoint in this precision
# on its GPU and the reference is llama.cpp F16 of it here (nats below the reference's
# choice that still count as a near tie). Measured with llama.cpp's own formats of a
# trained model standing in (benchmarks/agreement_across_precision.py, docs/quality.md):
# Q8_0 against F16 strayed at most 0.29 nats at its first divergence, Q4_K_M 1.35
# (2 of 24 to a token outside F16's top 5). To be confirmed on a board (tests/test_hil.py).
REFERENCE_TIE_NATS = {"fp16": 0.5, "int8_wo": 0.5, "int4_awq": 1.5}

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


def tensor_bytes(t: Tensor, quant: str) -> int:
    """A weight tensor's bytes in TensorRT-LLM's weight-only layouts."""
    if quant == "fp16" or not t.is_matrix or t.name in ("token_embd.weight",
                                                       "output.weight"):
        return t.n * 2  # embeddings, lm_head, norms and biases stay fp16
    if quant == "int4_awq":
        return t.n // 2 + (t.n // 128) * 2
    if quant == "int4_gptq":
        return t.n // 2 + (t.n // 128) * 4  # fp16 scale and zero per group
    return t.n + t.ne1 * 2  # int8_wo: one fp16 scale per output channel


def max_num_tokens(t: TensorRtLlmSettings) -> int:
    return t.max_num_tokens or min(8192, t.max_batch_size * t.max_input_len)


class TrtLlm(Engine):
    kind = "tensorrt-llm"
    section = "tensorrt_llm"
    settings = TensorRtLlmSettings
    probe = Probe(ready="/health", alive="/health")
    model_format = "hf"
    quants = QUANTS
    logprobs = False  # 0.12's OpenAI server: "returning log probs is not supported"

    def version(self, p: Profile) -> str:
        return f"TensorRT-LLM {self.settings_of(p).version}"

    def runs_on(self, platform: Platform) -> str | None:
        if not (platform.gpu == "cuda" and platform.build_on_device):
            return "it needs a Jetson's GPU, with JetPack's CUDA and TensorRT"
        if platform.cuda is not None and platform.cuda.split(".")[0] != "12":
            # the v0.12.0-jetson wheel links JetPack 6's CUDA 12 (and TensorRT 10.3)
            return (f"TensorRT-LLM 0.12.0-jetson is built for JetPack 6's CUDA 12, not CUDA "
                    f"{platform.cuda}: set jetson.l4t_release 36.4.3 (JetPack 6.2) for it")
        return None

    def relative_paths(self) -> tuple[tuple[str | int, ...], ...]:
        return (("wheel", "path"), ("wheelhouse",), ("examples", "path"))

    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        return ("python3-pip",)  # installs the wheel into the image (offline_install)

    def gpu_stack(self, p: Profile, platform: Platform) -> tuple[str, ...]:
        # the wheel's own runtime needs: CUDA, cuDNN and TensorRT with its Python
        # binding (JetPack's python3-libnvinfer; README4Jetson.md)
        return ("cuda-runtime", "cudnn", "tensorrt")

    def offline_install(self, device: Device) -> OfflineInstall:
        """The wheel (with its dependencies from the wheelhouse) and the branch's
        examples, from the profile's files: the device has no network to fetch them."""
        t = self.settings_of(device.profile)
        where = "engine.tensorrt_llm"

        def at(*loc: str) -> Path:
            return device.source.dir_of("engine", self.section, *loc)

        def pinned(name: str, what: str) -> Pinned:
            f = getattr(t, name)
            if not f.path:
                raise BuilderError(f"{where}.{name}.path: name {what} (and its sha256) in "
                                   "the profile; see docs/orin.md")
            return Pinned(at(name, "path") / Path(f.path).expanduser(), f.sha256,
                          f"{where}.{name}")

        wheel = pinned("wheel", f"the TensorRT-LLM {t.version} wheel for the device")
        how = (f"on a machine with network: pip download --dest WHEELHOUSE "
               "--only-binary=:all: --platform linux_aarch64 --platform "
               "manylinux2014_aarch64 --python-version 3.10 "
               f"{wheel.path.name} (docs/orin.md)")
        if not t.wheelhouse:
            raise BuilderError(f"{where}.wheelhouse: name a directory of the wheel's Python "
                               f"dependencies; {how}")
        return OfflineInstall(
            wheels=(wheel,), wheelhouse=at("wheelhouse") / Path(t.wheelhouse).expanduser(),
            wheelhouse_setting=f"{where}.wheelhouse", how=how,
            trees=((pinned("examples", f"a tarball of the TensorRT-LLM {t.version} "
                           "checkout"), t.checkout),))

    def problems(self, p: Profile) -> list[tuple[tuple[str | int, ...], str]]:
        t = self.settings_of(p)
        if p.model.quant.lower() == "int4_awq" and not t.calibration_dir:
            # quantize.py would fall back to the Hub's cnn_dailymail, which a device
            # cannot reach (examples/quantization/quantize.py --calib_dataset)
            return [(("engine", "tensorrt_llm", "calibration_dir"),
                     "int4_awq needs a local calibration set on the device (AWQ "
                     "calibrates on it); set engine.tensorrt_llm.calibration_dir, or use "
                     "model.quant: int4_gptq (no calibration)")]
        return []

    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        return [(t, quant, tensor_bytes(t, quant)) for t in model.tensors()]

    def host_server(self, p: Profile, platform: Platform, tree: Path, cache: Cache, *,
                    source_base: Path | None = None) -> HostServer | None:
        """llama.cpp F16 of the release's own checkpoint (TensorRT-LLM does not run
        here): the same weights, another precision, so the pair's tolerance is the one
        measured for it (REFERENCE_TIE_NATS). None for a GPTQ checkpoint, which the
        pinned convert_hf_to_gguf.py does not dequantize."""
        from ..llama_cpp.local import checkpoint_server

        tie = REFERENCE_TIE_NATS.get(p.model.quant.lower())
        if tie is None:
            return None
        return checkpoint_server(cache, tie_nats=tie, source_base=source_base,
                                 what="llama-server (F16) of the release's checkpoint, "
                                      f"against {p.model.quant} on the device")

    def shape_of(self, path: Path, quant: str) -> ModelShape:
        from ...errors import display_path
        from ...model.shape import from_hf_dir

        if not path.is_dir():
            raise BuilderError(f"{display_path(path)}: TensorRT-LLM builds its engine from "
                               "a Hugging Face checkpoint directory, not a GGUF file")
        return from_hf_dir(path, quant, self)

    def recipe(self, p: Profile, platform: Platform) -> TrtLlmRecipe:
        t = self.settings_of(p)
        quant = p.model.quant
        if quant == "int4_awq":
            make = ["python3", "examples/quantization/quantize.py", "--model_dir", "MODEL",
                    "--dtype", "float16", "--qformat", "int4_awq", "--awq_block_size", "128",
                    "--output_dir", "CHECKPOINT", "--calib_size", "32",
                    *(["--calib_dataset", t.calibration_dir] if t.calibration_dir else [])]
        else:
            make = ["python3", "examples/qwen/convert_checkpoint.py", "--model_dir", "MODEL",
                    "--output_dir", "CHECKPOINT", "--dtype", "float16", *CONVERT[quant]]
        build = ["trtllm-build", "--checkpoint_dir", "CHECKPOINT", "--output_dir", "ENGINE",
                 "--gemm_plugin", "float16", "--max_batch_size", str(t.max_batch_size),
                 "--max_input_len", str(t.max_input_len),
                 "--max_seq_len", str(p.runtime.context_length),
                 "--max_num_tokens", str(max_num_tokens(t))]
        # no --workers: trtllm-build caps it at the GPU count and uses it only to build
        # ranks side by side (tensorrt_llm/commands/build.py, 0.12: 350-393, 410); an
        # Orin has one GPU and the engine one rank
        return TrtLlmRecipe(arch=platform.arch, steps=[make, build], notes=[
            f"TensorRT-LLM {t.version} for CUDA sm_{platform.gpu_arch}, run on the device "
            "(engines are specific to the GPU and the TensorRT version), in "
            f"{t.checkout}: MODEL is the release's checkpoint, CHECKPOINT and ENGINE "
            "the device's work and cache directories"])

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        return None  # the device builds its engine

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        from ...contracts import BuildCheck
        from ...model.catalog import get_model
        from ...planner import build_budget

        model = get_model(p.model.id)
        budget = build_budget(p)
        # Conversion (or AWQ calibration) holds its source checkpoint plus activations: the
        # GPTQ checkpoint for int4_gptq, the fp16 model otherwise; trtllm-build then holds
        # the weights twice (the network and the serialized engine).
        engine = self.weight_bytes(model, p.model.quant)
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
        from ...model.pipeline import ModelArtifact, tree_digest

        if fetched.kind != "hf":
            raise BuilderError(f"{fetched.origin}: TensorRT-LLM builds its engine from a "
                               "Hugging Face checkpoint directory, not a "
                               f"{'GGUF file' if fetched.kind == 'gguf' else 'ONNX directory'}")
        return ModelArtifact(fetched.path, tree_digest(fetched.files), p.model.quant, "hf",
                             files=fetched.files)

    def device_settings(self, i: ReleaseInputs, layout: Layout) -> dict[str, Any]:
        """engine/build.json: what edge-llm-trtllm builds and serves on the device."""
        p = i.profile
        t = self.settings_of(p)
        platform = i.device.platform
        return {"tool": TOOL, "version": t.version, "quant": p.model.quant,
                "sm": platform.gpu_arch,
                "model": f"{layout.model_dir}/{i.model.device_name}",
                "model_sha256": i.model.sha256, "checkout": t.checkout,
                "python": t.python, "port": p.service.engine_port,
                "steps": self.recipe(p, platform).steps}

    def release_files(self, i: ReleaseInputs, tree: Path) -> None:
        (tree / "engine").mkdir()
        text = json.dumps(self.device_settings(i, i.device.layout), indent=2) + "\n"
        (tree / SETTINGS).write_text(text)
        # the same settings where a device imaged before engine/build.json looks: its
        # build unit runs `edge-llm-trtllm build current/engine/trtllm.json`, and a fleet
        # rollout updates the device tools, not that unit
        (tree / LEGACY_SETTINGS).write_text(text)

    def env(self, i: ReleaseInputs, layout: Layout) -> dict[str, str]:
        # CUDA loads kernels as they are first used: less memory on a unified-memory board
        return {"CUDA_MODULE_LOADING": "LAZY"}

    def exec_start(self, i: ReleaseInputs, layout: Layout) -> str:
        return f"{layout.tool(TOOL)} serve {layout.current}/{SETTINGS}"

    def start_timeout(self, p: Profile) -> int:
        # the first start waits for the build (edge-llm-engine-build.service gets this too)
        return BUILD_TIMEOUT

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        # 0.12's OpenAI server refuses fields it does not know (pydantic extra="forbid");
        # of llama.cpp's, it takes these (tensorrt_llm/hlapi/openai_protocol.py, 0.14; the
        # server first appears there, not in 0.12's main: docs/orin.md)
        return {**super().gateway_settings(layout),
                "engine_fields": ["ignore_eos", "min_p", "top_k"],
                "engine_status_file": layout.engine_status}

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        return platform.gpu_devices

    def compute_basis(self, pin: PlanInput) -> str:
        return f"one engine step of {max_num_tokens(pin.settings)} tokens"

    def memory(self, pin: PlanInput) -> dict[str, int]:
        """Weights in the engine's precision; a paged fp16 KV cache for the slots;
        activations of one engine step; the runtime process. (0.12's OpenAI server has no
        option to bound its KV pool, which the LLM API sizes from free memory: the engine
        unit's MemoryMax is what holds it to this plan; docs/orin.md.)"""
        m, t = pin.model.arch, pin.settings
        kv_slot = m.n_layer * 2 * m.n_embd_kv * 2 * pin.context_length
        step = max_num_tokens(t) * (4 * m.n_embd + 2 * m.n_ff) * 2
        return {
            "weights": pin.model.weights,
            "repacked": 0,
            "kv_per_slot": kv_slot,
            "kv_total": kv_slot * pin.parallel,
            "compute": step + 64 * MiB,
            "output": t.max_batch_size * m.n_vocab * 4,
            "engine_overhead": ENGINE_OVERHEAD,
        }


assert set(CONVERT) | {"int4_awq"} >= {q.name for q in QUANTS}
ENGINE = TrtLlm()
