"""Engine build recipes: what CMake is told for each target. Pure data, no side effects;
each target module (builder/targets/) returns its recipe from a profile."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Options every llama.cpp build gets: only what an appliance runs, nothing fetched from
# the network at build time (the prebuilt web UI download is off), no OpenSSL.
LLAMA_CPP_COMMON = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # never the build host's CPU (AMX kernels SIGILL elsewhere)
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
LLAMA_CPP_TARGETS = ("llama-server", "llama-quantize", "llama-bench")

# ggml's x86 feature switches; a variant turns on exactly the ones it lists.
X86_FEATURES = ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI", "AVX512",
                "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8",
                "AMX_BF16")
# x86-64 psABI micro-architecture levels, as ggml feature sets.
X86_LEVELS = {
    "x86-64-v2": ("SSE42",),
    "x86-64-v3": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "x86-64-v4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
}


def x86_flags(level: str) -> tuple[str, ...]:
    on = set(X86_LEVELS[level])
    return tuple(f"-DGGML_{f}={'ON' if f in on else 'OFF'}" for f in X86_FEATURES)


@dataclass(frozen=True)
class Variant:
    """One CPU backend library built with its own flags (GGML_BACKEND_DL)."""

    name: str
    cmake_args: tuple[str, ...]


@dataclass(frozen=True)
class LlamaCppRecipe:
    target: str
    arch: str  # Debian architecture of the binaries
    cmake_args: tuple[str, ...]
    variants: tuple[Variant, ...] = ()  # empty: one CPU backend linked in statically
    compilers: tuple[str, str] = ("cc", "c++")
    on_device: bool = False  # built on the device itself (CUDA on Jetson)
    targets: tuple[str, ...] = LLAMA_CPP_TARGETS
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)
