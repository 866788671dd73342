"""NVIDIA Jetson Orin (sm_87, unified memory): L4T/JetPack, TensorRT-LLM or llama.cpp CUDA.

CUDA builds happen on the device (or an identical one): the CUDA toolkit and TensorRT
come from JetPack, and engines are tied to them. Here we only render the recipe; the
engine role drives it on the device.
"""

from __future__ import annotations

from ..recipes import LLAMA_CPP_COMMON, LlamaCppRecipe
from ..schema import Profile
from . import Target


def llama_cpp_recipe(p: Profile) -> LlamaCppRecipe:
    arch = p.engine.llama_cpp.cuda_architectures or "87"
    return LlamaCppRecipe(
        target="jetson-orin", arch="arm64",
        cmake_args=(*LLAMA_CPP_COMMON, "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=ON",
                    f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
                    "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
                    "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16",
                    *p.engine.llama_cpp.cmake_args),
        on_device=True,
        notes=["run on the Orin (JetPack's CUDA in /usr/local/cuda)"],
    )


TARGET = Target(
    name="jetson-orin",
    description="NVIDIA Jetson Orin, L4T/JetPack, TensorRT-LLM or llama.cpp (CUDA sm_87)",
    arches=("arm64",),
    engines=("tensorrt-llm", "llama.cpp"),
    os_families=("l4t",),
    why_not="",
    llama_cpp_recipe=llama_cpp_recipe,
)
