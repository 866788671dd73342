# Test fake: what TensorRT Edge-LLM 0.9.1's device binaries share, for the stand-ins of
# llm_build, llm_inference and the pybind module _edgellm_runtime (tools/*.py here). The
# runtime tarball (fake_edgellm_runtime.make_runtime_tarball) ships a copy beside each
# tool (build/examples/llm/ and build/pybind/): the real binaries link these parts in.
# Nothing of NVIDIA's code is here; each behaviour names the file:line of TensorRT-Edge-LLM
# 0.9.1 (7f061f2, read from the fork whitesscott/TensorRT-Edge-LLM) it copies:
#   logger       cpp/common/logger.h:239-298: "[HH:MM:SS.mmm] [LEVEL] [file.cpp:line:func]
#                msg"; TensorRT's own messages carry " [TensorRT]" (105-117); ERROR and
#                WARNING go to stderr, INFO and DEBUG to stdout (134)
#   plugin       cpp/common/trtUtils.h:60-92: EDGELLM_PLUGIN_PATH, else the CWD-relative
#                build/libNvInfer_edgellm_plugin.so; dlopen failure is logged, not fatal
#                (the caller goes on without the plugin); dlerror() texts are glibc's
#   ELLM_CHECK   cpp/common/checkMacros.h:106-112: std::runtime_error("<__FILE__>:<line>:
#                <msg>"); __FILE__ is the absolute source path CMake compiles (CMakeCache
#                CMAKE_HOME_DIRECTORY here)
#   version      cpp/common/version.h:28 kRUNTIME_VERSION (= the project version)
#   TensorRT     closed source: the texts below come from public reports (NVIDIA/TensorRT
#                issues #149, #2913, #4621; NVIDIA/Model-Optimizer ONNX quantization logs)
#                and are UNVERIFIED against TensorRT 10.16 itself
# The fake's own conventions (not NVIDIA's):
#   build info   build/CMakeCache.txt holds the real cache keys (CUDA_CTK_VERSION,
#                EMBEDDED_TARGET, BUILD_PYTHON_BINDINGS, CMAKE_HOME_DIRECTORY,
#                CMAKE_PROJECT_VERSION) plus FAKE_TENSORRT_VERSION (the real build reads it
#                from NvInferVersion.h)
#   the device   FAKE_EDGELLM_GPUS (default 1), FAKE_EDGELLM_GPU_SM (compute capability,
#                default 8.7: Orin), FAKE_EDGELLM_TENSORRT and FAKE_EDGELLM_CUDA (the
#                device's libnvinfer and CUDA; default: what the build was made for). A
#                different CUDA or TensorRT major makes the dynamic loader fail, as a
#                binary linked to libcudart.so.13 does on a CUDA 12 system
#   files        the plugin library starts with PLUGIN_MAGIC, an engine with ENGINE_MAGIC,
#                a fake ONNX model with ONNX_MAGIC; each is followed by a JSON line
#   tokens       see encode(): one token per special token (tokenizer.json added_tokens)
#                and per run of up to 4 non-space characters with the whitespace before
#                it. The real tokenizer is a C++ BPE over tokenizer.json; these counts are
#                near real ones for English text but not exact
"""Shared parts of the TensorRT Edge-LLM 0.9.1 device stand-ins (test fake)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

PLUGIN_MAGIC = b"FAKE libNvInfer_edgellm_plugin.so.1.0\n"
ENGINE_MAGIC = b"FAKE TensorRT plan\n"
ONNX_MAGIC = b"FAKE ONNX model\n"
PLUGIN_DEFAULT = "build/libNvInfer_edgellm_plugin.so"  # trtUtils.h:71
LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
# The custom ops the exported LLM graph holds (tensorrt_edgellm/onnx/onnx_custom_schemas.py:47-50,
# cpp/plugins/attentionPlugin/attentionPlugin.cpp:57-58).
PLUGIN_OPS = [{"op": "AttentionPlugin", "domain": "trt_edgellm", "version": "1"}]
CUDA_HELP = "http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"
LEVELS = {"DEBUG": 3, "INFO": 2, "WARNING": 1, "ERROR": 0}
_level = {"min": LEVELS["INFO"]}


# ------------------------------------------------------------------ build tree, device

def build_dir() -> Path:
    """The Edge-LLM build directory this copy sits in (the one holding CMakeCache.txt)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "CMakeCache.txt").is_file():
            return parent
    raise RuntimeError(f"fake: no CMakeCache.txt above {__file__}")


def build_info() -> dict[str, str]:
    """KEY -> value of build/CMakeCache.txt."""
    info = {}
    for line in (build_dir() / "CMakeCache.txt").read_text().splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line and ":" in line:
            key, value = line.split("=", 1)
            info[key.split(":", 1)[0]] = value
    return info


def device() -> dict[str, str | int]:
    """The device the process runs on, as the fake sees it (environment over build)."""
    info = build_info()
    return {"gpus": int(os.environ.get("FAKE_EDGELLM_GPUS", "1")),
            "sm": os.environ.get("FAKE_EDGELLM_GPU_SM", "8.7"),
            "tensorrt": os.environ.get("FAKE_EDGELLM_TENSORRT", info["FAKE_TENSORRT_VERSION"]),
            "cuda": os.environ.get("FAKE_EDGELLM_CUDA", info["CUDA_CTK_VERSION"])}


def missing_shared_library() -> str | None:
    """The first library the dynamic loader would not find, or None: the build links
    libcudart.so.<CUDA major> and libnvinfer.so.<TensorRT major>."""
    info, dev = build_info(), device()
    for lib, built, present in (("libcudart.so", info["CUDA_CTK_VERSION"], dev["cuda"]),
                                ("libnvinfer.so", info["FAKE_TENSORRT_VERSION"],
                                 dev["tensorrt"])):
        major = built.split(".")[0]
        if present.split(".")[0] != major:
            return f"{lib}.{major}"
    return None


def runtime_version() -> str:
    """kRUNTIME_VERSION (cpp/common/version.h:28: "0.9.1"): the release this build is of."""
    return build_info()["CMAKE_PROJECT_VERSION"]


def source_file(rel: str) -> str:
    """__FILE__ of a source file of the build (CMake passes absolute paths)."""
    return f"{build_info()['CMAKE_HOME_DIRECTORY']}/{rel}"


def ellm_check_message(rel: str, line: int, msg: str) -> str:
    """The what() of a failed ELLM_CHECK (checkMacros.h:106-112)."""
    return f"{source_file(rel)}:{line}: {msg}"


# ------------------------------------------------------------------ logger (logger.h)

def set_debug(debug: bool) -> None:
    _level["min"] = LEVELS["DEBUG"] if debug else LEVELS["INFO"]


def log(level: str, msg: str, where: str) -> None:
    """One line as EdgeLLMLogger writes it. WHERE is "file.cpp:line:function" or
    "TensorRT". Written to the file descriptors, as C++ does, not to sys.stdout."""
    if LEVELS[level] > _level["min"]:
        return
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    line = f"[{stamp}] [{level}] [{where}] {msg}\n"
    fd = 2 if LEVELS[level] <= LEVELS["WARNING"] else 1
    for s in (sys.stdout, sys.stderr):
        s.flush()
    os.write(fd, line.encode())


# ------------------------------------------------------------------ plugin (trtUtils.h)

def dlopen_error(path: str) -> str | None:
    """What dlerror() says after dlopen(PATH), or None when the fake plugin loads."""
    if "/" not in path:  # a bare name: the loader's search path
        dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
        found = next((Path(d) / path for d in (*dirs, *LIB_DIRS) if (Path(d) / path).exists()),
                     None)
        if found is None:
            return f"{path}: cannot open shared object file: No such file or directory"
        target = found
    else:
        target = Path(path)
    try:
        with open(target, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        return f"{path}: cannot open shared object file: No such file or directory"
    except IsADirectoryError:
        return f"{path}: cannot read file data: Is a directory"
    except PermissionError:
        return f"{path}: cannot open shared object file: Permission denied"
    if not head.startswith(PLUGIN_MAGIC):
        return f"{path}: invalid ELF header"
    missing = missing_shared_library()  # the plugin links libcudart too
    return f"{missing}: cannot open shared object file: No such file or directory" \
        if missing else None


def load_plugin() -> bool:
    """loadEdgellmPluginLib (trtUtils.h:60-92): True when the plugin's creators are
    registered. A failure is only logged; the caller carries on."""
    where = "trtUtils.h:{}:loadEdgellmPluginLib"
    path = os.environ.get("EDGELLM_PLUGIN_PATH")
    if path is not None:
        log("INFO", f"EDGELLM_PLUGIN_PATH: {path}", where.format(66))
    else:
        log("INFO", "EDGELLM_PLUGIN_PATH variable is not set. Default to "
            "build/libNvInfer_edgellm_plugin.so", where.format(70))
        path = PLUGIN_DEFAULT
    if path == "":  # dlopen("") hands back the main program: no error, no plugin in it
        return False
    err = dlopen_error(path)
    if err:
        log("ERROR", f"Cannot open plugin library: {err}", where.format(79))
        return False
    return True


def missing_plugin_messages() -> list[str]:
    """TensorRT's plugin registry when an op's creator was never registered."""
    return [f"IPluginRegistry::getCreator: Error Code 4: API Usage Error (Cannot find plugin: "
            f"{p['op']}, version: {p['version']}, namespace:{p['domain']}.)" for p in PLUGIN_OPS]


def cuda_init_failure() -> str:
    """TensorRT when no CUDA device is there (cudaErrorNoDevice = 100)."""
    return ("CUDA initialization failure with error: 100. Please check your CUDA installation: "
            f"{CUDA_HELP}")


# ------------------------------------------------------------------ files

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_tagged(path: Path, magic: bytes) -> dict | None:
    """The JSON line after MAGIC at the start of PATH, or None when PATH is not one."""
    with open(path, "rb") as f:
        head = f.read(len(magic))
        if head != magic:
            return None
        try:
            return json.loads(f.readline())
        except ValueError:
            return None


def write_tagged(path: Path, magic: bytes, header: dict, size: int = 0) -> None:
    """MAGIC, HEADER as one JSON line, then zeros up to SIZE bytes (sparse)."""
    with open(path, "wb") as f:
        f.write(magic + json.dumps(header, sort_keys=True).encode() + b"\n")
        if size > f.tell():
            f.truncate(size)


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file")
        return json.loads(f.read(n))


# ------------------------------------------------------------------ tokens

_PIECE = re.compile(r"\s*\S{1,4}|\s+")


class Tokens:
    """The fake tokenizer of an engine directory (tokenizer.json, tokenizer_config.json):
    special tokens by their ids, everything else counted by the rule above."""

    def __init__(self, tokenizer: dict, tokenizer_config: dict, vocab_size: int) -> None:
        self.special = {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens", [])
                        if t.get("special", True)}
        self.vocab_size = vocab_size
        self.base = min([vocab_size, *self.special.values()])  # ids below the added tokens
        eos = tokenizer_config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_id = self.special.get(eos, vocab_size - 1)
        names = sorted(self.special, key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names))) if names else None

    def _plain(self, text: str) -> list[int]:
        return [int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) % max(self.base, 1)
                for p in _PIECE.findall(text)]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text) if self._special_re else ():
            ids += self._plain(text[pos:m.start()])
            ids.append(self.special[m.group()])
            pos = m.end()
        return ids + self._plain(text[pos:])
