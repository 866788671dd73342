"""TensorRT-LLM 0.12 for a Jetson as a user gets it: a wheel, its dependencies, and the
v0.12.0-jetson checkout's examples (test stand-ins, built offline with zipfile/tarfile).

    from fakes.jetson.fake_trtllm_wheel import make_wheel, make_wheelhouse, make_examples
    whl = make_wheel(tmp / "dist", python_tag="cp311", platform="linux_x86_64")
    house = make_wheelhouse(tmp / "wheelhouse")
    tarball = make_examples(tmp / "src")
    # pip install --no-index --find-links HOUSE WHL; tar -xzf TARBALL --strip-components=1

NVIDIA's Jetson install (README4Jetson.md, NVIDIA/TensorRT-LLM 20a7cec9, the only file of
the v0.12.0-jetson branch in the stored copies): JetPack 6.1 (CUDA, cuDNN, TensorRT from
NVIDIA's apt repository: `import tensorrt` is python3-libnvinfer's module in
/usr/lib/python3/dist-packages, not a pip package), `git checkout v0.12.0-jetson`,
`scripts/build_wheel.py ... --cuda_architectures 87`, `pip install
build/tensorrt_llm-*.whl`: on the device's Ubuntu 22.04 that is
tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl. Its metadata here follows setup.py at
be9cd719 (0.12.0.dev2024080600, the last 0.12 snapshot of main; the branch itself is not
stored): name tensorrt_llm, console script `trtllm-build =
tensorrt_llm.commands.build:main` (setup.py:121-123), a binary distribution
(Root-Is-Purelib: false, setup.py:102). The real wheel requires 31 packages
(requirements.txt: torch, transformers, nvidia-modelopt, tensorrt~=10.2.0, ...); this one
requires two light ones of that list, StrEnum and janus, shipped as stand-in wheels by
make_wheelhouse, so an offline pip install resolves dependencies the way the image's does.
Tests build it for the test rootfs (Debian bookworm: python_tag="cp311" and the rootfs's
platform) instead of cp310/linux_aarch64.

The package: tensorrt_llm/__init__.py imports tensorrt through tensorrt_llm.functional
(__init__.py:32, functional.py:25 at be9cd719), so without JetPack's TensorRT the import
fails with "ModuleNotFoundError: No module named 'tensorrt'", and prints
"[TensorRT-LLM] TensorRT-LLM version: 0.12.0" (__init__.py:94); tensorrt_llm/version.py;
tensorrt_llm/commands/build.py is tools/trtllm_build.py. The real one also needs torch,
CUDA and its compiled bindings; this one needs only `tensorrt` (write_tensorrt for tests;
the stand-in apt repository's python3-libnvinfer for images).

The checkout: GitHub's archive of branch v0.12.0-jetson, TensorRT-LLM-0.12.0-jetson.tar.gz
with the top directory TensorRT-LLM-0.12.0-jetson/ (GitHub drops the "v" of a ref named
v<digit>...), files root-owned with a pax global header naming the commit, as `git
archive` writes it. It holds README4Jetson.md and the examples the builder runs
(tools/trtllm_convert_checkpoint.py, trtllm_quantize.py, trtllm_openai_server.py) with
their requirements.txt; the real checkout also holds the tensorrt_llm/ sources, cpp/ and
the other examples (and needs `git lfs pull`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"
VERSION = "0.12.0"
TOP = "TensorRT-LLM-0.12.0-jetson"  # GitHub's archive of branch v0.12.0-jetson
COMMIT = "0" * 40  # the branch's commit is not known here (not stored)
STAMP = (2024, 11, 1, 0, 0, 0)  # fixed: the same inputs make the same bytes
TENSORRT_VERSION = "10.3.0"  # JetPack 6.1's TensorRT

PACKAGE = {
    "tensorrt_llm/__init__.py": (
        "# Test fake of tensorrt_llm/__init__.py (TensorRT-LLM 0.12, be9cd719): the package\n"
        "# imports tensorrt through tensorrt_llm.functional (__init__.py:32) and prints its\n"
        "# version (__init__.py:94).\n"
        "import sys\n\n"
        "import tensorrt_llm.functional as functional  # noqa: F401\n\n"
        "from .version import __version__\n\n"
        'print(f"[TensorRT-LLM] TensorRT-LLM version: {__version__}")\n'
        "sys.stdout.flush()\n"),
    "tensorrt_llm/functional.py": (
        "# Test fake of tensorrt_llm/functional.py (0.12): it needs TensorRT (line 25 there)\n"
        "import tensorrt as trt  # noqa: F401\n"),
    "tensorrt_llm/version.py": f'__version__ = "{VERSION}"\n',
    "tensorrt_llm/commands/__init__.py": "",
}
# The dependencies of the stand-in wheel: (distribution, version, module, source). The
# real janus 1.0.0 requires typing-extensions; these stand-ins require nothing.
DEPENDENCIES = [
    ("StrEnum", "0.4.15", "strenum",
     '"""Test stand-in for StrEnum 0.4.15."""\nimport enum\n\n\n'
     "class StrEnum(str, enum.Enum):\n    def __str__(self):\n        return self.value\n"),
    ("janus", "1.0.0", "janus",
     '"""Test stand-in for janus 1.0.0."""\n__version__ = "1.0.0"\n'),
]
EXAMPLES = {
    "examples/qwen/convert_checkpoint.py": "trtllm_convert_checkpoint.py",
    "examples/quantization/quantize.py": "trtllm_quantize.py",
    "examples/apps/openai_server.py": "trtllm_openai_server.py",
}
REQUIREMENTS = {  # examples/*/requirements.txt at be9cd719, the tensorrt_llm pin made 0.12.0
    "examples/qwen/requirements.txt": "--extra-index-url https://pypi.nvidia.com\n"
    "tensorrt_llm==0.12.0\ndatasets~=2.16.0\nevaluate~=0.4.1\nrouge_score~=0.1.2\n"
    "transformers>=4.40.1\ntransformers-stream-generator\nsentencepiece~=0.1.99\ntiktoken\n"
    "einops\n",
    "examples/quantization/requirements.txt": "--extra-index-url https://pypi.nvidia.com\n"
    "tensorrt_llm==0.12.0\ndatasets>=2.14.4\nnemo-toolkit[all]<=1.20.0,>=1.18.0\n"
    "rouge_score~=0.1.2\ntransformers_stream_generator==0.0.4\ntiktoken\nmpmath==1.3.0\n",
    "examples/apps/requirements.txt": "fastapi\nuvicorn\nopenai\nclick\n",
}


def package_files() -> dict[str, bytes]:
    """The tensorrt_llm package as the wheel installs it: path -> bytes."""
    files = {k: v.encode() for k, v in PACKAGE.items()}
    files["tensorrt_llm/commands/build.py"] = (TOOLS / "trtllm_build.py").read_bytes()
    return files


def write_tensorrt(site: Path) -> Path:
    """A stand-in of JetPack's `tensorrt` module (python3-libnvinfer) under SITE."""
    mod = Path(site) / "tensorrt/__init__.py"
    mod.parent.mkdir(parents=True, exist_ok=True)
    mod.write_text(f'"""Test stand-in for JetPack\'s TensorRT Python module."""\n'
                   f'__version__ = "{TENSORRT_VERSION}"\n')
    return mod.parent


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _write_wheel(dest: Path, name: str, version: str, tag: str, files: dict[str, bytes],
                 metadata: list[str], purelib: bool, entry_points: str = "") -> Path:
    dist_info = f"{name}-{version}.dist-info"
    meta = {f"{dist_info}/METADATA": "\n".join(
                ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *metadata])
            + "\n",
            f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: fake_trtllm_wheel\n"
            f"Root-Is-Purelib: {'true' if purelib else 'false'}\nTag: {tag}\n",
            f"{dist_info}/top_level.txt": "".join(
                sorted({p.split("/")[0] + "\n" for p in files}))}
    if entry_points:
        meta[f"{dist_info}/entry_points.txt"] = entry_points
    everything = {**files, **{k: v.encode() for k, v in meta.items()}}
    record = [_record_line(p, d) for p, d in everything.items()] + [f"{dist_info}/RECORD,,"]
    everything[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / f"{name}-{version}-{tag}.whl"
    tmp = whl.with_name(whl.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in everything.items():
            info = zipfile.ZipInfo(path, STAMP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    tmp.replace(whl)
    return whl


def make_wheel(dest: Path, python_tag: str = "cp310", platform: str = "linux_aarch64") -> Path:
    """DEST/tensorrt_llm-0.12.0-<python_tag>-<python_tag>-<platform>.whl."""
    return _write_wheel(
        Path(dest), "tensorrt_llm", VERSION, f"{python_tag}-{python_tag}-{platform}",
        package_files(),
        ["Summary: TensorRT-LLM: A TensorRT Toolbox for Large Language Models",
         "Home-page: https://github.com/NVIDIA/TensorRT-LLM", "Author: NVIDIA Corporation",
         "License: Apache License 2.0", "Requires-Python: >=3.7, <4",
         *[f"Requires-Dist: {name}" for name, *_ in DEPENDENCIES]],
        purelib=False,
        entry_points="[console_scripts]\ntrtllm-build = tensorrt_llm.commands.build:main\n")


def make_wheelhouse(dest: Path) -> Path:
    """DEST holding the stand-in wheels of the wheel's dependencies; returns DEST."""
    dest = Path(dest)
    for name, version, module, source in DEPENDENCIES:
        _write_wheel(dest, name, version, "py3-none-any", {f"{module}/__init__.py":
                                                          source.encode()},
                     [f"Summary: test stand-in for {name}"], purelib=True)
    return dest


def make_examples(dest: Path) -> Path:
    """DEST/TensorRT-LLM-0.12.0-jetson.tar.gz, GitHub's archive of the branch."""
    files = {"README.md": b"# TensorRT-LLM (test stand-in of the v0.12.0-jetson branch)\n",
             "README4Jetson.md": (
                 b"# TensorRT-LLM Deployment on Jetson Orin (test stand-in)\n\n"
                 b"git checkout v0.12.0-jetson; python3 scripts/build_wheel.py --clean "
                 b"--cuda_architectures 87 -DENABLE_MULTI_DEVICE=0 --build_type Release; "
                 b"pip install build/tensorrt_llm-*.whl\n"),
             **{rel: (TOOLS / src).read_bytes() for rel, src in EXAMPLES.items()},
             **{rel: text.encode() for rel, text in REQUIREMENTS.items()}}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{TOP}.tar.gz"
    tmp = out.with_name(out.name + ".tmp")
    dirs = sorted({"/".join(p.split("/")[:i]) for p in files
                   for i in range(1, p.count("/") + 1)})
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT,
                         pax_headers={"comment": COMMIT}) as tar:
        for rel in ["", *dirs]:
            info = tarfile.TarInfo(f"{TOP}/{rel}".rstrip("/") + "/")
            info.type, info.mode = tarfile.DIRTYPE, 0o775
            _root(info)
            tar.addfile(info)
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{TOP}/{rel}")
            info.size, info.mode = len(data), 0o664
            _root(info)
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(out)
    return out


def _root(info: tarfile.TarInfo) -> None:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 1730419200  # 2024-11-01
