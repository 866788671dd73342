"""A stand-in for TensorRT-LLM 0.12 (v0.12.0-jetson) installed directly, for unit tests.

    from fakes.jetson.fake_trtllm import install_fake_trtllm
    paths = install_fake_trtllm(tmp_path / "trtllm")
    # paths["root"] is the checkout (run the examples from there, as the builder does),
    # paths["python"] imports tensorrt_llm, paths["bin"] (beside it) holds trtllm-build

Images get the wheel, its dependencies and the checkout the way a user does
(fake_trtllm_wheel.py: make_wheel, make_wheelhouse, make_examples, installed with pip and
tar). This direct install lays the same files out without pip:

* dest/venv: a venv (no pip) whose site-packages hold the tensorrt_llm package of the
  wheel and a stand-in of JetPack's `tensorrt`; venv/bin/trtllm-build is the console
  script (it also finds the package when run with another Python, as the tests do)
* dest/TensorRT-LLM/examples/qwen/convert_checkpoint.py,
  examples/quantization/quantize.py, examples/apps/openai_server.py (+ requirements.txt):
  each example directory links tensorrt_llm and tensorrt from the venv, so the examples
  import them with whatever Python runs them (the tests run them with their own)

The tools (tools/trtllm_*.py) are stdlib-only Python with the 0.12 command lines, the
real failures at that boundary (each one's header cites the real source, file:line) and
the real outputs: TensorRT-LLM checkpoints (config.json + rank<N>.safetensors), engine
directories (config.json + rank<N>.engine, sparse files of plausible size) and an
OpenAI-compatible HTTP server.

Environment the fakes read: FAKE_TRTLLM_GPUS (trtllm-build: the GPU count, default 1),
FAKE_TRTLLM_LOAD_SECONDS (server: seconds before the port opens, default 0),
FAKE_TRTLLM_TOKEN_DELAY (server: seconds per generated token, default 0),
HF_DATASETS_OFFLINE (the wording of the offline calibration failure).
"""

from __future__ import annotations

import subprocess
import sysconfig
import venv
from pathlib import Path

from .fake_trtllm_wheel import EXAMPLES, REQUIREMENTS, TOOLS, package_files, write_tensorrt

SCRIPTS = {"convert_checkpoint": "examples/qwen/convert_checkpoint.py",
           "quantize": "examples/quantization/quantize.py",
           "openai_server": "examples/apps/openai_server.py"}


def install_fake_trtllm(dest: Path, python: str | None = None) -> dict[str, Path]:
    """Install the fake TensorRT-LLM under DEST, in a venv of PYTHON (default: this
    interpreter's base; pass /usr/bin/python3 when another user must run it); return the
    paths by name: root (the checkout), python (the venv's), bin (beside it, holds
    trtllm-build), site (its site-packages), convert_checkpoint, quantize,
    openai_server, trtllm_build."""
    dest = Path(dest)
    env = dest / "venv"
    if python is None:
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
        site = Path(sysconfig.get_path("purelib", vars={"base": str(env),
                                                       "platbase": str(env)}))
    else:
        subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True)
        site = Path(subprocess.run(
            [str(env / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path("
             "'purelib'))"], check=True, capture_output=True, text=True).stdout.strip())
    for rel, data in package_files().items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    write_tensorrt(site)
    paths = {"root": dest / "TensorRT-LLM", "bin": env / "bin", "python": env / "bin/python",
             "site": site, "trtllm_build": env / "bin/trtllm-build"}
    paths["trtllm_build"].write_text(
        f"#!{paths['python']}\nimport sys\n"
        f"sys.path.insert(0, {str(site)!r})  # direct install: found by any Python\n"
        "from tensorrt_llm.commands.build import main\n"
        "if __name__ == '__main__':\n    sys.exit(main())\n")
    paths["trtllm_build"].chmod(0o755)
    for key, rel in SCRIPTS.items():
        target = paths["root"] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((TOOLS / EXAMPLES[rel]).read_bytes())
        target.chmod(0o755)
        for module in ("tensorrt_llm", "tensorrt"):
            link = target.parent / module
            if not link.is_symlink():
                link.symlink_to(site / module)
        paths[key] = target
    for rel, text in REQUIREMENTS.items():
        (paths["root"] / rel).write_text(text)
    return paths
