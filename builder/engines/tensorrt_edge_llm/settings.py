"""TensorRT Edge-LLM's profile section, `engine.tensorrt_edge_llm:`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...schema import DevicePath, EngineSettings, PinnedFile

# The releases the builder knows, and the CUDA releases each was built for on Orin
# (docs/source/user_guide/getting_started/installation.md:175-185 at 0.9.1: JetPack 7.2
# with CUDA_CTK_VERSION 13.2 is the supported Orin path, JetPack 6.2 with 12.6 compatible).
RELEASES = {"0.9.1": ("13.2", "12.6")}
# what `tensorrt-edgellm-export --externalize-weights` takes (scripts/export.py, 0.9.1)
EXTERNALIZE = ("int4_ffn", "int4_moe", "nvfp4_moe", "lm_head", "all")


class TensorRtEdgeLlmSettings(EngineSettings):
    version: Literal[tuple(RELEASES)] = Field(  # type: ignore[valid-type]
        "0.9.1", description="TensorRT Edge-LLM release: its host tools export the model, "
        "its llm_build builds the engine on the device, its runtime serves it.")
    source: PinnedFile = Field(
        default_factory=PinnedFile, description="GitHub's archive of the release's source "
        "(TensorRT-Edge-LLM-<version>.tar.gz): the build host installs its Python package "
        "(tensorrt-edgellm-export, tensorrt-edgellm-quantize) into a venv of its own. Not "
        "needed when --model-file names an exported ONNX directory.")
    runtime: PinnedFile = Field(
        default_factory=PinnedFile, description="A tarball of Edge-LLM's build directory "
        "made on a Jetson of the device's JetPack (cmake -DEMBEDDED_TARGET=jetson-orin "
        "-DBUILD_PYTHON_BINDINGS=ON; docs/orin.md): llm_build, the plugin library and the "
        "Python binding of its runtime; unpacked to `checkout` in the image.")
    checkout: DevicePath = Field(
        "/opt/tensorrt-edgellm", description="Where the runtime tarball is unpacked on the "
        "device (build/examples/llm/llm_build, build/libNvInfer_edgellm_plugin.so, "
        "build/pybind/).")
    max_input_len: int = Field(
        2048, ge=1, description="llm_build --maxInputLen: the longest prompt in tokens "
        "(the adapter refuses longer ones, 400 context_length_exceeded); its KV cache holds "
        "runtime.context_length tokens of prompt and answer (--maxKVCacheCapacity).")
    max_batch_size: int = Field(
        1, ge=1, description="llm_build --maxBatchSize: sequences the engine can hold; "
        "the appliance serves one request at a time (Orin Nano and NX are benchmarked at "
        "batch 1), so more only costs memory.")
    externalize_weights: list[Literal[EXTERNALIZE]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="tensorrt-edgellm-export --externalize-weights: "
        "weights kept outside the engine (int4_ffn is NVIDIA's advice for INT4 on the Orin "
        "Nano: a smaller engine build).")
    calibration: str | None = Field(
        None, description="int4_awq or int8_sq from an fp16 checkpoint: the local "
        "calibration set tensorrt-edgellm-quantize reads instead of the Hub's cnn_dailymail "
        "(a JSON/JSONL file of {\"article\": text} rows, or a datasets directory; given as "
        "EDGELLM_QUANT_DATASET_CNN_DAILYMAIL), relative to the profile file.")
    python: DevicePath = Field(
        "/usr/bin/python3", description="The device's Python that loads the runtime's "
        "binding (the binding is built for it).")
