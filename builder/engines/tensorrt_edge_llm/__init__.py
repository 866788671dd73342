"""TensorRT Edge-LLM: NVIDIA's inference stack for Jetson (github.com/NVIDIA/
TensorRT-Edge-LLM). The build host exports the model to ONNX with Edge-LLM's own Python
tools; the device builds the TensorRT engine from it with Edge-LLM's C++ builder
(engines are specific to the GPU and the TensorRT version) and serves it from Edge-LLM's
C++ runtime.

- On the build host (export.py): a Hugging Face checkpoint -> `tensorrt-edgellm-export`
  -> an ONNX directory (model.onnx, its weights, the runtime config, the embedding table,
  the tokenizer and chat template), which the release carries as the model. An fp16
  checkpoint that the profile wants as int4_awq or int8_sq is first quantized with
  `tensorrt-edgellm-quantize llm`, which calibrates on a CUDA GPU; a pre-quantized
  checkpoint (Qwen's -AWQ and -GPTQ-Int4) exports as it is. Or `--model-file` names an
  ONNX directory exported elsewhere.
- On the device (builder/device/edgellm.py, `edge-llm-edgellm`): the inference role's
  build unit runs `llm_build` with the release's limits into the device's engine cache
  (keyed by the ONNX's sha256, the Edge-LLM version, the L4T release, TensorRT and the
  GPU); the engine unit serves it with a thin OpenAI adapter over Edge-LLM's runtime
  binding (builder/device/edgellm_serve.py says why not Edge-LLM's experimental server),
  on loopback behind the gateway, one request at a time.
- Edge-LLM itself is in the image: a tarball of its build directory made on a Jetson of
  the same JetPack (engine.tensorrt_edge_llm.runtime, sha256-pinned), unpacked offline.

Sources: TensorRT-Edge-LLM 0.9.1 (7f061f2; docs/orin.md says where each fact comes from).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...contracts import (
    Engine,
    EngineArtifact,
    OfflineInstall,
    Pinned,
    Platform,
    Probe,
    Quantization,
)
from ...errors import BuilderError
from ...schema import Profile
from ...units import GiB, MiB
from .settings import RELEASES, TensorRtEdgeLlmSettings

if TYPE_CHECKING:
    from ...cache import Cache
    from ...contracts import BuildCheck, Device, PlanInput, ReleaseInputs
    from ...device.layout import Layout
    from ...model.catalog import ModelArch, Tensor
    from ...model.pipeline import Fetched, ModelArtifact
    from ...model.shape import ModelShape

SETTINGS = "engine/build.json"  # builder/device/engine_cache.py SETTINGS
TOOL = "edge-llm-edgellm"  # the device tool that builds and serves it (device/edgellm.py)
BUILD_TIMEOUT = 2 * 3600  # the first start waits for llm_build
# CUDA context, TensorRT's runtime and activation workspace, the decoding CUDA graphs and
# the adapter's Python. Sanity check against NVIDIA's own figure: Qwen3-0.6B INT4 AWQ on an
# Orin Nano 8GB, JetPack 7.2, 1,889 MB of GPU memory in all (performance-benchmarks.md:
# 427-433, 0.9.0), of which weights, embedding and KV cache are about 0.8 GB.
ENGINE_OVERHEAD = 1 * GiB
BUILD_OVERHEAD = 1 * GiB  # llm_build: TensorRT's builder, its tactic workspace, CUDA

# The precisions Edge-LLM runs on Orin: FP16, INT8 (SmoothQuant) and INT4 (AWQ, GPTQ);
# "Jetson Orin does not support FP8, MXFP8, FP4, or NVFP4" (installation.md:184-185)
QUANTS = (
    Quantization("int4_awq", 4 + 16 / 128,
                 "4-bit AWQ weights, fp16 scale per 128-group (ModelOpt); from an fp16 "
                 "checkpoint it calibrates on a CUDA GPU, or Qwen's -AWQ checkpoint as is"),
    Quantization("int4_gptq", 4 + 20 / 128,
                 "4-bit GPTQ weights from Qwen's GPTQ-Int4 checkpoint (fp16 scale, 4-bit "
                 "zero per 128-group); exported as it is, no calibration"),
    Quantization("int8_sq", 8.0, "int8 SmoothQuant weights and activations, per-channel "
                 "scales (ModelOpt; calibrates on a CUDA GPU)"),
    Quantization("fp16", 16.0, "unquantized half precision"),
)
NEEDS_GPU = {"int4_awq", "int8_sq"}  # made by tensorrt-edgellm-quantize from fp16
PREQUANTIZED = {"int4_awq": "awq", "int4_gptq": "gptq"}  # quant_method of a checkpoint


def tensor_bytes(t: Tensor, quant: str) -> int:
    """A weight tensor's bytes as Edge-LLM lays it out: the linear layers at the
    precision, norms, biases, the embedding table (embedding.safetensors) and lm_head in
    fp16 (lm_head is quantized only with --lm_head_quantization, FP8/FP4: not on Orin)."""
    if quant == "fp16" or not t.is_matrix or t.name in ("token_embd.weight",
                                                       "output.weight"):
        return t.n * 2
    groups = t.n // 128
    if quant == "int4_awq":
        return t.n // 2 + groups * 2
    if quant == "int4_gptq":
        return t.n // 2 + groups * 2 + groups // 2
    return t.n + t.ne1 * 4  # int8_sq: fp32 per-channel weight scales


@dataclass(frozen=True)
class EdgeLlmRecipe:
    """What is run where: the export on the build host, llm_build on the device."""

    arch: str
    export: list[list[str]]  # argv of each host step (MODEL, QUANTIZED, ONNX placeholders)
    steps: list[list[str]]  # argv of each device step (ONNX, ENGINE placeholders)
    on_device: bool = True
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def commands(self) -> list[str]:
        import shlex

        def where(argv: list[str]) -> str:
            if argv[0] == "tensorrt-edgellm-quantize":
                return "# build host, from an unquantized checkpoint (a CUDA GPU)"
            return "# build host"

        return [f"{where(s)}\n{shlex.join(s)}" for s in self.export] + \
               [f"# device\n{shlex.join(s)}" for s in self.steps]


def kv_capacity(p: Profile) -> int:
    """Tokens of one sequence the engine's KV cache holds (llm_build
    --maxKVCacheCapacity): the context the gateway and the plan use."""
    return p.runtime.context_length


def externalized(model: ModelArch, quant: str, kinds: list[str]) -> int:
    """Bytes of weights `tensorrt-edgellm-export --externalize-weights` keeps outside the
    engine: the FFN matrices of an INT4 model (int4_ffn; an fp16 or int8 one keeps them,
    tensorrt_edgellm/external_weights.py:437-443), lm_head (fp16 only)."""
    out = 0
    every = "all" in kinds
    if quant.startswith("int4") and (every or "int4_ffn" in kinds):
        out += sum(tensor_bytes(t, quant) for t in model.tensors()
                   if t.is_matrix and ".ffn_" in t.name)
    if every or "lm_head" in kinds:
        out += model.n_vocab * model.n_embd * 2
    return out


class TensorRtEdgeLlm(Engine):
    kind = "tensorrt-edge-llm"
    section = "tensorrt_edge_llm"
    settings = TensorRtEdgeLlmSettings
    probe = Probe(ready="/health", alive="/health")
    model_format = "onnx"
    quants = QUANTS
    logprobs = False  # the adapter (device/edgellm_serve.py) refuses `logprobs`

    def version(self, p: Profile) -> str:
        return f"TensorRT Edge-LLM {self.settings_of(p).version}"

    def runs_on(self, platform: Platform) -> str | None:
        if not (platform.gpu == "cuda" and platform.build_on_device):
            return "it needs a Jetson's GPU, with JetPack's CUDA and TensorRT"
        known = {c for cudas in RELEASES.values() for c in cudas}
        if platform.cuda is not None and platform.cuda not in known:
            return ("its releases are built for CUDA 13.2 (JetPack 7.2) or 12.6 (JetPack "
                    f"6.2), not {platform.cuda}")
        return None

    def relative_paths(self) -> tuple[tuple[str | int, ...], ...]:
        return (("source", "path"), ("runtime", "path"), ("calibration",))

    def problems(self, p: Profile) -> list[tuple[tuple[str | int, ...], str]]:
        t = self.settings_of(p)
        out: list[tuple[tuple[str | int, ...], str]] = []
        kv = kv_capacity(p)
        if t.max_input_len >= kv:
            out.append((("engine", "tensorrt_edge_llm", "max_input_len"),
                        f"{t.max_input_len} leaves no room for an answer in a KV cache of "
                        f"runtime.context_length ({kv}) tokens; llm_build's guidance is "
                        "capacity = input + expected output"))
        if p.runtime.parallel != 1:
            out.append((("runtime", "parallel"),
                        f"{p.runtime.parallel}: the Edge-LLM adapter serves one request at "
                        "a time (its runtime is not safe for concurrent requests); set "
                        "runtime.parallel: 1"))
        kinds = t.externalize_weights
        if ("int4_ffn" in kinds) and not p.model.quant.startswith("int4"):
            out.append((("engine", "tensorrt_edge_llm", "externalize_weights"),
                        f"int4_ffn moves INT4 FFN weights out of the engine; model.quant "
                        f"{p.model.quant} has none (the exporter only warns)"))
        return out

    # --- weights ---------------------------------------------------------------------------
    def tensor_types(self, model: ModelArch, quant: str) -> list[tuple[Tensor, str, int]]:
        from ...model.catalog import Tensor

        rows = [(t, quant, tensor_bytes(t, quant)) for t in model.tensors()]
        if model.tied_embeddings:  # the engine holds lm_head; the runtime the table
            lm_head = Tensor("output.weight", model.n_embd, model.n_vocab)
            rows.append((lm_head, "fp16", tensor_bytes(lm_head, quant)))
        return rows

    def shape_of(self, path: Path, quant: str) -> ModelShape:
        from ...errors import display_path
        from ...model.shape import from_hf_dir

        if not path.is_dir():
            raise BuilderError(f"{display_path(path)}: TensorRT Edge-LLM takes a Hugging Face "
                               "checkpoint directory or an ONNX directory exported by "
                               "tensorrt-edgellm-export, not a file")
        # the export's runtime config names the shape as Hugging Face's config.json does
        # (checkpoint_utils.py build_runtime_llm_config_dict, 0.9.1: 340-375)
        return from_hf_dir(path, quant, self)

    # --- building ----------------------------------------------------------------------
    def recipe(self, p: Profile, platform: Platform) -> EdgeLlmRecipe:
        from .export import export_steps

        t = self.settings_of(p)
        build = ["llm_build", "--onnxDir", "ONNX", "--engineDir", "ENGINE",
                 "--maxInputLen", str(t.max_input_len),
                 "--maxKVCacheCapacity", str(kv_capacity(p)),
                 "--maxBatchSize", str(t.max_batch_size)]
        return EdgeLlmRecipe(arch=platform.arch, export=export_steps(p, quantize=None),
                             steps=[build], notes=[
            f"TensorRT Edge-LLM {t.version} for CUDA sm_{platform.gpu_arch}: the export "
            "runs on the build host (quantization on a CUDA GPU), llm_build on the device "
            "(engines are specific to the GPU and the TensorRT version), from "
            f"{t.checkout}/build; a pre-quantized checkpoint (Qwen's -AWQ, -GPTQ-Int4) skips "
            "the quantization and exports MODEL"])

    def build(self, p: Profile, platform: Platform, cache: Cache, *,
              base_dir: Path | None = None, jobs: int | None = None) -> EngineArtifact | None:
        return None  # the device builds its engine

    def build_check(self, p: Profile, platform: Platform) -> BuildCheck | None:
        from ...contracts import BuildCheck
        from ...model.catalog import get_model
        from ...planner import build_budget

        model = get_model(p.model.id)
        weights = self.weight_bytes(model, p.model.quant)
        # TensorRT's builder holds the ONNX's weights and the engine it serializes; weights
        # kept outside the engine (--externalize-weights) are held once
        outside = externalized(model, p.model.quant, self.settings_of(p).externalize_weights)
        external = outside > 0
        peak = weights * 2 - outside + BUILD_OVERHEAD
        budget = build_budget(p)
        ok = peak <= budget
        advice = "" if ok else ", ".join([
            *([] if external else ["set engine.tensorrt_edge_llm.externalize_weights: "
                                   "[int4_ffn] (INT4)"]),
            "use a smaller model.quant", "or pick a smaller model"])
        return BuildCheck(f"Edge-LLM engine build (llm_build) for {model.id} "
                          f"{p.model.quant}", peak, budget, ok, advice)

    # --- the model ----------------------------------------------------------------------
    def model(self, p: Profile, fetched: Fetched, cache: Cache, *,
              source_base: Path | None = None) -> ModelArtifact:
        from .export import onnx_model

        return onnx_model(self, p, fetched, cache, source_base=source_base)

    def convert(self, p: Profile, fetched: Fetched, cache: Cache, *,
                source_base: Path | None = None) -> Path:
        return self.model(p, fetched, cache, source_base=source_base).path

    # --- on the device -----------------------------------------------------------------
    def rootfs_packages(self, p: Profile) -> tuple[str, ...]:
        return ("python3",)  # the adapter, and the runtime's binding is a CPython module

    def gpu_stack(self, p: Profile, platform: Platform) -> tuple[str, ...]:
        # llm_build and the runtime link CUDA's runtime and TensorRT with its ONNX parser
        # (examples/llm/CMakeLists.txt:13-16, 0.9.1)
        return ("cuda-runtime", "tensorrt")

    def offline_install(self, device: Device) -> OfflineInstall:
        """Edge-LLM's build directory (llm_build, the plugin, the runtime binding),
        from the profile's tarball: the device has no network, nor the toolchain that
        builds it (docs/orin.md says how to make it on a Jetson)."""
        t = self.settings_of(device.profile)
        where = "engine.tensorrt_edge_llm.runtime"
        if not t.runtime.path:
            raise BuilderError(f"{where}.path: name the tarball of Edge-LLM {t.version}'s "
                               "build directory for the device's JetPack (and its sha256); "
                               "docs/orin.md says how to make it")
        path = device.source.dir_of("engine", self.section, "runtime", "path") / \
            Path(t.runtime.path).expanduser()
        return OfflineInstall(trees=((Pinned(path, t.runtime.sha256, where), t.checkout),))

    def device_settings(self, i: ReleaseInputs, layout: Layout) -> dict[str, Any]:
        """engine/build.json: what edge-llm-edgellm builds and serves on the device."""
        p = i.profile
        t = self.settings_of(p)
        return {"tool": TOOL, "version": t.version, "quant": p.model.quant,
                "sm": i.device.platform.gpu_arch,
                "model": f"{layout.model_dir}/{i.model.device_name}",
                "model_sha256": i.model.sha256, "checkout": t.checkout,
                "python": t.python, "port": p.service.engine_port, "model_id": i.model_id,
                "max_input_len": t.max_input_len, "max_kv_cache_capacity": kv_capacity(p),
                "steps": self.recipe(p, i.device.platform).steps}

    def release_files(self, i: ReleaseInputs, tree: Path) -> None:
        (tree / "engine").mkdir()
        (tree / SETTINGS).write_text(
            json.dumps(self.device_settings(i, i.device.layout), indent=2) + "\n")

    def env(self, i: ReleaseInputs, layout: Layout) -> dict[str, str]:
        # absolute: unset, the runtime dlopens build/libNvInfer_edgellm_plugin.so relative
        # to its working directory (cpp/common/trtUtils.h:60-72, 0.9.1)
        t = self.settings_of(i.profile)
        return {"EDGELLM_PLUGIN_PATH": f"{t.checkout}/build/libNvInfer_edgellm_plugin.so",
                "CUDA_MODULE_LOADING": "LAZY"}

    def exec_start(self, i: ReleaseInputs, layout: Layout) -> str:
        return f"{layout.tool(TOOL)} serve {layout.current}/{SETTINGS}"

    def start_timeout(self, p: Profile) -> int:
        return BUILD_TIMEOUT

    def gateway_settings(self, layout: Layout) -> dict[str, Any]:
        # of the fields beyond OpenAI's, the runtime takes top_k (LLMGenerationRequest,
        # experimental/pybind/edgellm_pybind.cpp:449-464, 0.9.1)
        return {**super().gateway_settings(layout), "engine_fields": ["top_k"],
                "engine_status_file": layout.engine_status}

    def device_access(self, platform: Platform) -> tuple[str, ...]:
        return platform.gpu_devices

    def compute_basis(self, pin: PlanInput) -> str:
        return f"a prefill of {pin.settings.max_input_len} tokens (max_input_len)"

    def memory(self, pin: PlanInput) -> dict[str, int]:
        """Weights (the engine's and the embedding table the runtime holds), an fp16 KV
        cache of exactly context_length tokens per sequence for max_batch_size
        sequences (llm_build sizes it: it never grows), activations of a prefill of
        max_input_len tokens, fp32 logits of the batch, the runtime process."""
        m, t = pin.model.arch, pin.settings
        kv_slot = m.n_layer * 2 * m.n_embd_kv * 2 * pin.context_length
        prefill = t.max_input_len * (4 * m.n_embd + 2 * m.n_ff) * 2
        return {
            "weights": pin.model.weights,
            "repacked": 0,
            "kv_per_slot": kv_slot,
            "kv_total": kv_slot * t.max_batch_size,
            "compute": prefill + 64 * MiB,
            "output": t.max_batch_size * m.n_vocab * 4,
            "engine_overhead": ENGINE_OVERHEAD,
        }


ENGINE = TensorRtEdgeLlm()
