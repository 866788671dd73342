"""llama.cpp build recipes: what CMake is told for a platform. Pure data, no side
effects; the same recipe is the build's cache key and what `builder engine recipe`
prints (for on-device builds, the commands a person or the engine role runs)."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field

from ...contracts import Platform
from .settings import LlamaCppSettings

# Options every llama.cpp build gets: only what an appliance runs, nothing fetched from
# the network at build time (the prebuilt web UI download is off), no OpenSSL.
COMMON = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # never the build host's CPU (AMX kernels SIGILL elsewhere)
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
TOOLS = ("llama-server", "llama-quantize", "llama-bench")
# built only where the build runs on the build host (it runs there: `builder model
# quality`), and never part of a release (Engine.release_files leaves it out)
HOST_ONLY = ("llama-perplexity",)

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
CUDA_COMPILER = "/usr/local/cuda/bin/nvcc"  # JetPack's CUDA toolkit


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
    arch: str  # Debian architecture of the binaries
    cmake_args: tuple[str, ...]
    variants: tuple[Variant, ...] = ()  # empty: one CPU backend linked in statically
    compilers: tuple[str, str] = ("cc", "c++")
    on_device: bool = False  # built on the device itself (CUDA on Jetson)
    targets: tuple[str, ...] = TOOLS
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def commands(self) -> list[str]:
        """The build as shell commands, run in the llama.cpp source tree."""
        out = []
        for i, v in enumerate(self.variants or (None,)):
            bdir = f"build-{v.name}" if v else "build"
            args = [*self.cmake_args, *(v.cmake_args if v else ())]
            out.append(shlex.join(["cmake", "-S", ".", "-B", bdir, "-G", "Ninja", *args]))
            targets = self.targets if i == 0 else ("ggml-cpu",)
            out.append(shlex.join(["cmake", "--build", bdir, "--target", *targets]))
        return out


def recipe(s: LlamaCppSettings, platform: Platform, host_triplet: str) -> LlamaCppRecipe:
    """The build for `platform`, made on a host whose GNU triplet is `host_triplet`."""
    extra = tuple(s.cmake_args)
    if platform.gpu == "cuda":  # CUDA comes with the device's JetPack: built there
        return LlamaCppRecipe(
            arch=platform.arch, on_device=True,
            cmake_args=(*COMMON, "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=ON",
                        f"-DCMAKE_CUDA_ARCHITECTURES={platform.gpu_arch}",
                        f"-DCMAKE_CUDA_COMPILER={CUDA_COMPILER}",
                        *_arm(platform), *extra),
            notes=["run on the device (its JetPack's CUDA in /usr/local/cuda)"])
    if platform.x86_levels:
        # one build runs on every CPU of the fleet: a CPU backend per x86-64 level, the
        # best one the CPU supports loaded at run time by ggml's loader
        return LlamaCppRecipe(
            arch=platform.arch,
            cmake_args=(*COMMON, "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON",
                        "-DCMAKE_BUILD_RPATH=$ORIGIN", *_cross(platform, host_triplet),
                        *extra),
            variants=tuple(Variant(level, x86_flags(level)) for level in platform.x86_levels),
            compilers=_compilers(platform, host_triplet),
            targets=_targets(platform, host_triplet))
    return LlamaCppRecipe(
        arch=platform.arch,
        cmake_args=(*COMMON, "-DBUILD_SHARED_LIBS=OFF", *_cross(platform, host_triplet),
                    *_arm(platform), *extra),
        compilers=_compilers(platform, host_triplet),
        targets=_targets(platform, host_triplet))


def _targets(platform: Platform, host_triplet: str) -> tuple[str, ...]:
    return (*TOOLS, *HOST_ONLY) if platform.gnu_triplet == host_triplet else TOOLS


def _arm(platform: Platform) -> tuple[str, ...]:
    return (f"-DGGML_CPU_ARM_ARCH={platform.arm_arch}",) if platform.arm_arch else ()


def _compilers(platform: Platform, host_triplet: str) -> tuple[str, str]:
    if platform.gnu_triplet == host_triplet:
        return ("cc", "c++")
    return (f"{platform.gnu_triplet}-gcc", f"{platform.gnu_triplet}-g++")


def _cross(platform: Platform, host_triplet: str) -> tuple[str, ...]:
    """Cross-compiling with Debian's toolchain for the platform's triplet, linked
    statically against ggml and llama."""
    if platform.gnu_triplet == host_triplet:
        return ()
    cc, cxx = _compilers(platform, host_triplet)
    return ("-DCMAKE_SYSTEM_NAME=Linux",
            f"-DCMAKE_SYSTEM_PROCESSOR={platform.gnu_triplet.split('-')[0]}",
            f"-DCMAKE_C_COMPILER={cc}", f"-DCMAKE_CXX_COMPILER={cxx}")
