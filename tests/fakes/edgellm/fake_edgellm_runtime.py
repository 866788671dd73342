"""The "Edge-LLM runtime" artifact of issue 26 as a test stand-in: TensorRT Edge-LLM's
build tree, built on a Jetson and packed with `tar czf tensorrt-edgellm-0.9.1-jp72.tar.gz
TensorRT-Edge-LLM/build`.

    from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
    tarball = make_runtime_tarball(tmp / "dist")            # 0.9.1 for CUDA 13.2 (JetPack 7.2)
    # tar -xzf TARBALL --strip-components=1 -C CHECKOUT
    # CHECKOUT/build/examples/llm/llm_build, CHECKOUT/build/pybind/_edgellm_runtime.py

What a real build of TensorRT-Edge-LLM 0.9.1 (7f061f2) leaves there, and what the stand-in
puts at the same paths (docs/source/user_guide/getting_started/installation.md:298-384;
examples/llm/CMakeLists.txt:13-41; cpp/CMakeLists.txt:146-159;
experimental/pybind/CMakeLists.txt:119-140):

* build/examples/llm/llm_build, llm_inference: ELF executables; here Python scripts
  (tools/llm_build.py, tools/llm_inference.py, `#!/usr/bin/env python3`, stdlib only) with
  fake_edgellm_common.py beside them
* build/libNvInfer_edgellm_plugin.so -> .so.1 -> .so.1.0 (VERSION 1.0 SOVERSION 1, so the
  archive holds two symlinks); here .so.1.0 is a text file starting with PLUGIN_MAGIC
* build/pybind/_edgellm_runtime<EXT_SUFFIX>.so; here _edgellm_runtime.py
  (tools/edgellm_runtime.py) and its fake_edgellm_common.py
* build/CMakeCache.txt: the cache keys of the configure step (CUDA_CTK_VERSION,
  EMBEDDED_TARGET, BUILD_PYTHON_BINDINGS, CMAKE_HOME_DIRECTORY, CMAKE_PROJECT_VERSION) plus
  FAKE_TENSORRT_VERSION: the fakes read the build's CUDA and TensorRT releases there

The real tree also holds object files, the kernel libraries and the other examples.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"
TOP = "TensorRT-Edge-LLM"
SOURCE_DIR = "/home/nvidia/TensorRT-Edge-LLM"  # where the device build ran (__FILE__ paths)
MTIME = 1785196800  # 2026-07-28, fixed so the same inputs make the same bytes
TENSORRT_OF_CUDA = {"13.2": "10.16.2", "12.6": "10.3.0"}  # JetPack 7.2, 6.2 (notes section 6)
JETPACK_OF_CUDA = {"13.2": "jp72", "12.6": "jp62"}
PLUGIN = "libNvInfer_edgellm_plugin.so"
PLUGIN_MAGIC = b"FAKE libNvInfer_edgellm_plugin.so.1.0\n"  # fake_edgellm_common.PLUGIN_MAGIC


def cmake_cache(version: str, cuda: str, tensorrt: str, target: str) -> str:
    return "\n".join([
        "# This is the CMakeCache file.",
        f"# For build in directory: {SOURCE_DIR}/build",
        "# (test stand-in: the entries the fakes read)",
        "BUILD_PYTHON_BINDINGS:BOOL=ON",
        "CMAKE_BUILD_TYPE:STRING=Release",
        f"CMAKE_HOME_DIRECTORY:INTERNAL={SOURCE_DIR}",
        f"CMAKE_PROJECT_VERSION:STATIC={version}",
        f"CUDA_CTK_VERSION:UNINITIALIZED={cuda}",
        f"EMBEDDED_TARGET:UNINITIALIZED={target}",
        "TRT_PACKAGE_DIR:UNINITIALIZED=/usr",
        "// fake: the TensorRT release NvInferVersion.h gave the build",
        f"FAKE_TENSORRT_VERSION:STRING={tensorrt}", ""])


def runtime_files(version: str = "0.9.1", cuda: str = "13.2", tensorrt: str | None = None,
                  target: str = "jetson-orin") -> dict[str, tuple[bytes, int] | str]:
    """The tarball's entries under TensorRT-Edge-LLM/: path -> (bytes, mode) or, for a
    symlink, its target."""
    tensorrt = tensorrt or TENSORRT_OF_CUDA.get(cuda, "10.16.2")
    common = (TOOLS / "fake_edgellm_common.py").read_bytes()
    plugin = PLUGIN_MAGIC + json.dumps({"edgellm_version": version, "cuda": cuda,
                                        "tensorrt": tensorrt, "target": target}).encode() + b"\n"
    return {
        "build/CMakeCache.txt": (cmake_cache(version, cuda, tensorrt, target).encode(), 0o644),
        "build/examples/llm/llm_build": ((TOOLS / "llm_build.py").read_bytes(), 0o755),
        "build/examples/llm/llm_inference": ((TOOLS / "llm_inference.py").read_bytes(), 0o755),
        "build/examples/llm/fake_edgellm_common.py": (common, 0o644),
        f"build/{PLUGIN}.1.0": (plugin, 0o755),
        f"build/{PLUGIN}.1": f"{PLUGIN}.1.0",
        f"build/{PLUGIN}": f"{PLUGIN}.1",
        "build/pybind/_edgellm_runtime.py": ((TOOLS / "edgellm_runtime.py").read_bytes(), 0o644),
        "build/pybind/fake_edgellm_common.py": (common, 0o644),
    }


def write_tar_gz(out: Path, top: str, files: dict[str, tuple[bytes, int] | str], *,
                 owner: tuple[int, str], pax: dict[str, str] | None = None) -> Path:
    """OUT (.tar.gz, written beside and renamed): TOP/ and its directories, then FILES,
    sorted, owned by OWNER (uid, name), with fixed times."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})

    def entry(name: str) -> tarfile.TarInfo:
        info = tarfile.TarInfo(f"{top}/{name}".rstrip("/"))
        info.uid = info.gid = owner[0]
        info.uname = info.gname = owner[1]
        info.mtime = MTIME
        return info
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT,
                         pax_headers=pax or {}) as tar:
        for d in ["", *dirs]:
            info = entry(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, content in sorted(files.items()):
            info = entry(name)
            if isinstance(content, str):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content, 0o777
                tar.addfile(info)
            else:
                data, info.mode = content
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return out


def make_runtime_tarball(dest: Path, version: str = "0.9.1", cuda: str = "13.2",
                         tensorrt: str | None = None, target: str = "jetson-orin") -> Path:
    """DEST/tensorrt-edgellm-<version>-<jp72|jp62|cudaX.Y>.tar.gz: TensorRT-Edge-LLM/build
    as a device build for CUDA CUDA and TensorRT TENSORRT (default: JetPack's for CUDA)
    leaves it, packed by user nvidia (uid 1000)."""
    tag = JETPACK_OF_CUDA.get(cuda, f"cuda{cuda}")
    return write_tar_gz(Path(dest) / f"tensorrt-edgellm-{version}-{tag}.tar.gz", TOP,
                        runtime_files(version, cuda, tensorrt, target), owner=(1000, "nvidia"))
