"""NVIDIA Jetson Orin (sm_87, unified memory): L4T/JetPack, TensorRT-LLM or llama.cpp CUDA."""

from . import Target

TARGET = Target(
    name="jetson-orin",
    description="NVIDIA Jetson Orin, L4T/JetPack, TensorRT-LLM or llama.cpp (CUDA sm_87)",
    arches=("arm64",),
    engines=("tensorrt-llm", "llama.cpp"),
    os_families=("l4t",),
    why_not="",
)
