"""TensorRT Edge-LLM's source release as GitHub archives it, as far as the build host's
tools go: the `tensorrt-edgellm` Python package with the console scripts
`tensorrt-edgellm-export` and `tensorrt-edgellm-quantize` (test stand-ins).

    from fakes.edgellm.fake_edgellm_source import make_source_tarball
    tarball = make_source_tarball(tmp / "src")     # TensorRT-Edge-LLM-0.9.1.tar.gz
    # tar -xzf TARBALL; pip install --no-index --no-build-isolation TensorRT-Edge-LLM-0.9.1

The real archive (tag v0.9.1 of NVIDIA/TensorRT-Edge-LLM; read here from the fork
whitesscott/TensorRT-Edge-LLM at 7f061f2) has the top directory TensorRT-Edge-LLM-0.9.1/
(GitHub drops the "v" of a tag v<digit>...) and holds cpp/, examples/, experimental/ and
the package. Its pyproject.toml (setuptools, version from tensorrt_edgellm/_version.py:
pyproject.toml:1-3, 70-74) pins torch==2.12.0, transformers==5.9.0, onnx==1.19.0, ...
(24-32) and declares six console scripts (54-60). The stand-in's pyproject.toml keeps the
build system, the name, the dynamic version and the two scripts the builder runs, with
the real entry points, and declares NO dependencies: its scripts (tools/edgellm_export.py,
tools/edgellm_quantize.py) are stdlib-only. Its build backend is an in-tree one of the
stand-in's own (_stand_in_backend.py, PEP 517 with `backend-path`, no requirements)
instead of setuptools from PyPI, so `pip install TARBALL[tools]` works offline, build
isolation included, as the builder runs it (builder/engines/tensorrt_edge_llm/export.py).
"""

from __future__ import annotations

from pathlib import Path

from .fake_edgellm_runtime import TOOLS, write_tar_gz

COMMIT = "7f061f21f0a581ba234a1e233c9315b89d8e47d6"  # the fork's commit read as 0.9.1

PYPROJECT = """\
# Test stand-in of TensorRT-Edge-LLM {version}'s pyproject.toml: the real one pins torch,
# transformers, onnx, ... (pyproject.toml:24-32) and builds with setuptools>=68 (1-3);
# these stand-in scripts need none of them, and the stand-in builds with its own backend.
[build-system]
requires = []
build-backend = "_stand_in_backend"
backend-path = ["."]

[project]
name = "tensorrt-edgellm"
dynamic = ["version"]
description = "A Python package for quantizing and exporting LLMs for edge deployment"
readme = "README.md"
requires-python = ">=3.10"
dependencies = []

[project.optional-dependencies]
tools = []

[project.scripts]
tensorrt-edgellm-quantize = "tensorrt_edgellm.scripts.quantize:main"
tensorrt-edgellm-export = "tensorrt_edgellm.scripts.export:main"

[tool.setuptools.packages.find]
where = ["."]
include = ["tensorrt_edgellm*"]

[tool.setuptools.dynamic]
version = {{attr = "tensorrt_edgellm._version.__version__"}}
"""


# A PEP 517 backend of the stand-in's own (no setuptools needed, so no index): the wheel
# holds tensorrt_edgellm/ and the two console scripts of pyproject.toml.
BACKEND = '''"""Build backend of the TensorRT Edge-LLM test stand-in (not NVIDIA's)."""
import base64, hashlib, os, zipfile

NAME, VERSION = "tensorrt_edgellm", "{version}"
DIST = f"{{NAME}}-{{VERSION}}"
ENTRY = ("[console_scripts]\\n"
         "tensorrt-edgellm-export = tensorrt_edgellm.scripts.export:main\\n"
         "tensorrt-edgellm-quantize = tensorrt_edgellm.scripts.quantize:main\\n")
META = ("Metadata-Version: 2.1\\nName: tensorrt-edgellm\\nVersion: {version}\\n"
        "Provides-Extra: tools\\n")


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = f"{{DIST}}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        def add(arc, data):
            whl.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            records.append(f"{{arc}},sha256={{digest.decode()}},{{len(data)}}")
        for root, _, files in sorted(os.walk(NAME)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    with open(path, "rb") as fh:
                        add(path, fh.read())
        info = f"{{DIST}}.dist-info"
        add(f"{{info}}/METADATA", META.encode())
        add(f"{{info}}/WHEEL", b"Wheel-Version: 1.0\\nGenerator: stand-in\\n"
            b"Root-Is-Purelib: true\\nTag: py3-none-any\\n")
        add(f"{{info}}/entry_points.txt", ENTRY.encode())
        whl.writestr(f"{{info}}/RECORD", "\\n".join(records + [f"{{info}}/RECORD,,"]) + "\\n")
    return name
'''


def source_files(version: str = "0.9.1") -> dict[str, tuple[bytes, int]]:
    """The archive's files under its top directory: path -> (bytes, mode)."""
    text = {
        "pyproject.toml": PYPROJECT.format(version=version),
        "README.md": f"# TensorRT Edge-LLM {version} (test stand-in of the source release)\n",
        "tensorrt_edgellm/__init__.py": '"""TensorRT Edge-LLM (test stand-in)."""\n',
        "tensorrt_edgellm/_version.py": f'__version__ = "{version}"\n',
        "tensorrt_edgellm/scripts/__init__.py": "",
        "_stand_in_backend.py": BACKEND.format(version=version),
    }
    files = {k: (v.encode(), 0o644) for k, v in text.items()}
    for rel, src in (("tensorrt_edgellm/_fake_checkpoint.py", "edgellm_checkpoint.py"),
                     ("tensorrt_edgellm/scripts/export.py", "edgellm_export.py"),
                     ("tensorrt_edgellm/scripts/quantize.py", "edgellm_quantize.py")):
        files[rel] = ((TOOLS / src).read_bytes(), 0o644)
    return files


def make_source_tarball(dest: Path, version: str = "0.9.1") -> Path:
    """DEST/TensorRT-Edge-LLM-<version>.tar.gz, GitHub's archive of tag v<version>
    (root-owned entries, a pax global header naming the commit, as `git archive` writes)."""
    top = f"TensorRT-Edge-LLM-{version}"
    return write_tar_gz(Path(dest) / f"{top}.tar.gz", top, source_files(version),
                        owner=(0, "root"), pax={"comment": COMMIT})
