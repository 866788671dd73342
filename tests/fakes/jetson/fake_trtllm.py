"""A faithful stand-in for a TensorRT-LLM v0.12.0-jetson checkout and install.

    from fakes.jetson.fake_trtllm import install_fake_trtllm
    paths = install_fake_trtllm(tmp_path / "trtllm")
    # paths["root"] is the checkout (run the examples from there, as the builder does),
    # paths["bin"] goes first on PATH for trtllm-build

install_fake_trtllm(dest) writes:

* dest/TensorRT-LLM/examples/qwen/convert_checkpoint.py
* dest/TensorRT-LLM/examples/quantization/quantize.py
* dest/TensorRT-LLM/examples/apps/openai_server.py (+ requirements.txt)
* dest/bin/trtllm-build (the console script)

All are executable Python scripts (stdlib only) with the 0.12 command lines (argparse
options and choices; click-style parsing for the server), the real failures at that
boundary (missing or foreign checkpoints, offline calibration datasets, a server
started on an engine directory without rank0.engine or without a tokenizer) and the
real outputs: TensorRT-LLM checkpoints (config.json + rank<N>.safetensors), engine
directories (config.json + rank<N>.engine, sparse files of plausible size) and an
OpenAI-compatible HTTP server with the 0.12 response and SSE chunk shapes.

Environment the fakes read: FAKE_TRTLLM_LOAD_SECONDS (server: seconds before the port
opens, default 0), FAKE_TRTLLM_TOKEN_DELAY (server: seconds per generated token,
default 0), HF_DATASETS_OFFLINE (the wording of the offline calibration failure).
"""

from __future__ import annotations

from pathlib import Path

TOOLS = Path(__file__).resolve().parent / "tools"
SCRIPTS = {
    "convert_checkpoint": ("trtllm_convert_checkpoint.py",
                           "TensorRT-LLM/examples/qwen/convert_checkpoint.py"),
    "quantize": ("trtllm_quantize.py", "TensorRT-LLM/examples/quantization/quantize.py"),
    "openai_server": ("trtllm_openai_server.py", "TensorRT-LLM/examples/apps/openai_server.py"),
    "trtllm_build": ("trtllm_build.py", "bin/trtllm-build"),
}


def install_fake_trtllm(dest: Path) -> dict[str, Path]:
    """Install the fake TensorRT-LLM under DEST; return the paths by name: root (the
    checkout), bin (holds trtllm-build), convert_checkpoint, quantize, openai_server,
    trtllm_build."""
    dest = Path(dest)
    paths = {"root": dest / "TensorRT-LLM", "bin": dest / "bin"}
    for key, (source, rel) in SCRIPTS.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((TOOLS / source).read_bytes())
        target.chmod(0o755)
        paths[key] = target
    (paths["root"] / "examples/apps/requirements.txt").write_text(
        "fastapi\nuvicorn\nopenai\nclick\n")
    (paths["root"] / "tensorrt_llm").mkdir(exist_ok=True)
    (paths["root"] / "tensorrt_llm/version.py").write_text(
        "# Test fake (tests/fakes/jetson): the version the fake tools report\n"
        '__version__ = "0.12.0"\n')
    return paths
