"""TensorRT-LLM's profile section, `engine.tensorrt_llm:`."""

from __future__ import annotations

from pydantic import Field

from ...schema import DevicePath, EngineSettings, PinnedFile


class TensorRtLlmSettings(EngineSettings):
    version: str = Field("0.12.0-jetson", description="TensorRT-LLM release (on Jetson: the "
                         "v0.12.0-jetson branch, built for the device's JetPack).")
    max_batch_size: int = Field(4, ge=1, description="trtllm-build --max_batch_size: "
                                "sequences decoded together; at least runtime.parallel.")
    max_input_len: int = Field(2048, ge=1, description="trtllm-build --max_input_len: the "
                               "longest prompt in tokens.")
    max_num_tokens: int | None = Field(
        None, ge=1, description="trtllm-build --max_num_tokens (tokens per engine step); "
        "default: max_batch_size x max_input_len, capped at 8192.")
    calibration_dir: str | None = Field(
        None, description="int4_awq: a local calibration dataset directory for quantize.py "
        "(no hub access on the device); int4_gptq and int8 weight-only need none.")
    checkout: DevicePath = Field(
        "/opt/TensorRT-LLM", description="The TensorRT-LLM checkout (the v0.12.0-jetson "
        "branch) on the device: the build runs its examples/qwen/convert_checkpoint.py or "
        "examples/quantization/quantize.py, the service examples/apps/openai_server.py.")
    wheel: PinnedFile = Field(
        default_factory=PinnedFile, description="The TensorRT-LLM wheel for the device "
        "(tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl, built from the v0.12.0-jetson "
        "branch as its README4Jetson.md says): installed into the image with pip, "
        "offline.")
    wheelhouse: str | None = Field(
        None, description="A directory of the wheel's Python dependencies for the device "
        "(pip download on a machine with network: docs/orin.md), relative to the profile "
        "file; the image's pip installs from it and nothing else.")
    examples: PinnedFile = Field(
        default_factory=PinnedFile, description="A tarball of the v0.12.0-jetson checkout "
        "(GitHub's archive of the branch): its examples/ convert and serve the model on "
        "the device; unpacked to `checkout`.")
    python: DevicePath = Field("/usr/bin/python3", description="The Python on the device that "
                        "has the tensorrt_llm wheel installed; trtllm-build is taken from "
                        "beside it, else from PATH.")
