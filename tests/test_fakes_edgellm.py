"""The TensorRT Edge-LLM 0.9.1 stand-ins (tests/fakes/edgellm) against the real 0.9.1
interfaces. The tables below are the real ones, cited from TensorRT-Edge-LLM 0.9.1
(7f061f2, read from the fork whitesscott/TensorRT-Edge-LLM): llm_build's getopt table, the
pybind module's names, the argparse parsers of the export and quantize scripts, the
package's console scripts. Each fake is checked against its table, then used the way the
builder uses the real tools: export on the host, llm_build on the device, the pybind
runtime behind the adapter; and made to fail where the real ones fail."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import venv
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType

import pytest
from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
from fakes.edgellm.fake_edgellm_source import make_source_tarball
from fakes.edgellm.fake_hf_checkpoint import make_checkpoint

LLM_BUILD = "build/examples/llm/llm_build"
PLUGIN = "build/libNvInfer_edgellm_plugin.so"
MAX_INPUT, KV = 256, 256  # the engine the runtime tests load

# examples/llm/llm_build.cpp:103-117, buildOptions: (name, has_arg)
REAL_LLM_BUILD_OPTIONS = [
    ("help", False), ("onnxDir", True), ("engineDir", True), ("maxInputLen", True),
    ("maxKVCacheCapacity", True), ("debug", False), ("maxBatchSize", True),
    ("maxLoraRank", True), ("specDraft", False), ("eagleDraft", False), ("specBase", False),
    ("eagleBase", False), ("maxVerifyTreeSize", True), ("maxDraftTreeSize", True),
    ("profilingDetailed", False)]
# cpp/builder/llmBuilder.h:51-70, LLMBuilderConfig::toJson for a vanilla build
REAL_BUILDER_CONFIG_KEYS = {"max_input_len", "spec_draft", "spec_base", "max_batch_size",
                            "max_lora_rank", "max_kv_cache_capacity"}
# experimental/pybind/edgellm_pybind.cpp: class -> {name: rw | ro | method | static | value}
REAL_PYBIND = {
    "LLMPrefillMetrics": {"reused_tokens": "ro", "computed_tokens": "ro",  # 286-289
                          "get_total_runs": "method"},
    "LLMGenerationMetrics": {"generated_tokens": "ro", "get_total_runs": "method"},  # 291-293
    "SpecDecodeGenerationMetrics": {"total_iterations": "ro", "total_generated_tokens": "ro",
                                    "get_total_runs": "method"},  # 295-298
    "MultimodalMetrics": {"total_images": "ro", "total_image_tokens": "ro",  # 300-303
                          "get_total_runs": "method"},
    "ImageData": {"width": "ro", "height": "ro", "channels": "ro", "frames": "ro",  # 308-314
                  "fps": "rw"},
    "AudioData": {"sample_rate": "rw"},  # 326-328
    "MessageContent": {"type": "rw", "content": "rw"},  # 344-354
    "Message": {"role": "rw", "contents": "rw"},  # 356-366
    "LogprobEntry": {"token_id": "ro", "logprob": "ro", "piece": "ro"},  # 387-390
    "FormattedRequest": {"formatted_system_prompt": "rw",  # 392-395
                         "formatted_complete_request": "rw"},
    "Request": {"messages": "rw", "image_buffers": "rw", "audio_buffers": "rw",  # 397-409
                "stop_strings": "rw", "logit_bias": "rw"},
    "FinishReason": {"NOT_FINISHED": "value", "END_ID": "value", "LENGTH": "value",  # 414-420
                     "CANCELLED": "value", "ERROR": "value", "STOP_WORDS": "value"},
    "StreamChunk": {"token_ids": "ro", "text": "ro", "finished": "ro", "reason": "ro",  # 422-428
                    "logprobs": "ro"},
    "StreamChannel": {"create": "static", "try_pop": "method", "wait_pop": "method",  # 430-444
                      "is_finished": "method", "get_reason": "method",
                      "is_cancelled": "method", "cancel": "method",
                      "set_stream_interval": "method", "get_stream_interval": "method",
                      "set_skip_special_tokens": "method",
                      "get_skip_special_tokens": "method"},
    "LLMGenerationRequest": {n: "rw" for n in (  # 449-464
        "requests", "formatted_requests", "temperature", "top_p", "top_k",
        "max_generate_length", "lora_weights_name", "save_system_prompt_kv_cache",
        "apply_chat_template", "add_generation_prompt", "enable_thinking",
        "disable_spec_decode", "stream_channels", "num_logprobs")},
    "LLMGenerationResponse": {"output_ids": "rw", "output_texts": "rw",  # 466-471
                              "logprobs": "rw", "finish_reasons": "ro"},
    "LLMRuntime": {n: "method" for n in (  # 476-500
        "handle_request", "capture_decoding_cuda_graph", "save_system_prompt_kv_cache",
        "has_draft_model", "get_prefill_metrics", "get_generation_metrics",
        "get_spec_decode_generation_metrics", "get_eagle_generation_metrics",
        "get_multimodal_metrics")},
    "LLMBuilderConfig": {}, "LLMBuilder": {}, "VisualBuilderConfig": {},  # 505-541
    "VisualBuilder": {},
}
REAL_PYBIND_FUNCTIONS = {"set_profiling_enabled", "get_profiling_enabled",  # 279-281
                         "load_image_from_path", "load_image_from_bytes",  # 316-321
                         "load_video_from_paths", "load_video_from_array",
                         "load_audio_buffer_from_bytes", "extract_mel_to_numpy",  # 330-339
                         "create_text_message", "create_generation_request"}  # 368, 546
# what the stand-in leaves out (tools/edgellm_runtime.py header)
PYBIND_NOT_PROVIDED = {"load_image_from_path", "load_image_from_bytes", "load_video_from_paths",
                       "load_video_from_array", "load_audio_buffer_from_bytes",
                       "extract_mel_to_numpy", "LLMBuilderConfig", "LLMBuilder",
                       "VisualBuilderConfig", "VisualBuilder"}
# tensorrt_edgellm/scripts/export.py:2382-2570: option strings -> (dest, default, extra)
REAL_EXPORT_OPTIONS = {
    ("model",): ("model", None, {}), ("output_dir",): ("output_dir", None, {}),
    ("--dtype",): ("dtype", "float16", {}),
    ("--skip-llm",): ("skip_llm", False, {}), ("--skip-visual",): ("skip_visual", False, {}),
    ("--skip-audio",): ("skip_audio", False, {}),
    ("--skip-code2wav",): ("skip_code2wav", False, {}),
    ("--components",): ("components", "", {}), ("--eagle-base",): ("eagle_base", False, {}),
    ("--fp8-embedding", "--fp8_embedding"): ("fp8_embedding", False, {}),
    ("--reduced-vocab-dir", "--reduced_vocab_dir"): ("reduced_vocab_dir", "", {}),
    ("--draft-reduced-vocab-dir",): ("draft_reduced_vocab_dir", "", {}),
    ("--mtp",): ("mtp", False, {}),
    ("--mtp-draft-dir", "--mtp_draft_dir"): ("mtp_draft_dir", "", {}),
    ("--mtpDraftModelDir",): ("mtp_draft_dir", "==SUPPRESS==", {}),
    ("--gemma4-mtp-assistant-dir",): ("gemma4_mtp_assistant_dir", "", {}),
    ("--dflash-base",): ("dflash_base", False, {}),
    ("--dflash-tree-base",): ("dflash_tree_base", False, {}),
    ("--dflash-draft",): ("dflash_draft", False, {}),
    ("--dflash-draft-dir",): ("dflash_draft_dir", "", {}),
    ("--externalize-weights",): ("externalize_weights", [], {  # external_weights.py:24-35
        "nargs": "+", "choices": ["int4_ffn", "int4_moe", "nvfp4_moe", "lm_head", "all"]}),
    ("--max-kv-cache-capacity",): ("max_kv_cache_capacity", 4096, {"type": "int"}),
    ("--skip-action",): ("skip_action", False, {}),
    ("--tp-size", "--tp_size"): ("tp_size", 1, {"type": "int"}),
    ("--talker-sidecar-from", "--talker_sidecar_from"): ("talker_sidecar_from", "", {}),
    ("--num-decoder-layer", "--num_decoder_layer"): ("num_decoder_layer", None, {"type": "int"}),
}
# tensorrt_edgellm/scripts/quantize.py:48-116 (common to llm and draft), 124-132
REAL_QUANTIZE_COMMON = {
    ("--output_dir",): ("output_dir", None, {"required": True}),
    ("--quantization",): ("quantization", None, {
        "choices": ["fp8", "int4_awq", "nvfp4", "mxfp8", "int8_sq"]}),
    ("--lm_head_quantization",): ("lm_head_quantization", None, {
        "choices": ["fp8", "int4_awq", "nvfp4", "mxfp8"]}),
    ("--visual_quantization",): ("visual_quantization", None, {"choices": ["fp8"]}),
    ("--audio_quantization",): ("audio_quantization", None, {"choices": ["fp8"]}),
    ("--cp_quantization",): ("cp_quantization", None, {"choices": ["fp8"]}),
    ("--kv_cache_quantization",): ("kv_cache_quantization", None, {"choices": ["fp8"]}),
    ("--dtype",): ("dtype", "fp16", {"choices": ["fp16"]}),
    ("--device",): ("device", "cuda", {}),
    ("--text_dataset",): ("text_dataset", "cnn_dailymail", {}),  # datasets/__init__.py:53-55
    ("--image_dataset",): ("image_dataset", "mmmu", {}),
    ("--audio_dataset",): ("audio_dataset", "librispeech", {}),
    ("--num_samples",): ("num_samples", 512, {"type": "int"}),
}
REAL_QUANTIZE = {
    "llm": {("--model_dir",): ("model_dir", None, {"required": True}), **REAL_QUANTIZE_COMMON},
    "draft": {("--base_model_dir",): ("base_model_dir", None, {"required": True}),
              ("--draft_model_dir",): ("draft_model_dir", None, {"required": True}),
              **REAL_QUANTIZE_COMMON},
    # quantize.py:134-165: its own options, none of the common ones' datasets
    "qwen3-omni": {
        ("--model_dir",): ("model_dir", None, {"required": True}),
        ("--output_dir",): ("output_dir", None, {"required": True}),
        ("--lm_head_quantization",): ("lm_head_quantization", None,
                                      {"choices": ["fp8", "nvfp4"]}),
        ("--kv_cache_quantization",): ("kv_cache_quantization", None, {"choices": ["fp8"]}),
        ("--dtype",): ("dtype", "fp16", {"choices": ["fp16"]}),
        ("--device",): ("device", "cuda", {}),
        ("--dataset",): ("dataset", "cnn_dailymail", {}),
        ("--num_samples",): ("num_samples", 64, {"type": "int"}),
        ("--max_length",): ("max_length", 64, {"type": "int"}),
        ("--talker_num_audio",): ("talker_num_audio", 150, {"type": "int"}),
        ("--talker_num_image",): ("talker_num_image", 150, {"type": "int"}),
        ("--talker_num_text",): ("talker_num_text", 200, {"type": "int"}),
        ("--talker_accept_hidden_layer",): ("talker_accept_hidden_layer", None,
                                            {"type": "int"}),
        ("--keep_full_export",): ("keep_full_export", False, {"nargs": 0}),
    },
}
# pyproject.toml:54-60 (the two the builder runs; the other four are not in the stand-in)
REAL_CONSOLE_SCRIPTS = {"tensorrt-edgellm-quantize": "tensorrt_edgellm.scripts.quantize:main",
                        "tensorrt-edgellm-export": "tensorrt_edgellm.scripts.export:main"}
PARSER_DUMP = """
import json, sys
def dump(p):
    out = []
    for a in p._actions:
        if a.dest == "help":
            continue
        if a.__class__.__name__ == "_SubParsersAction":
            out.append({"sub": {k: dump(v) for k, v in a.choices.items()}})
            continue
        out.append({"opts": a.option_strings or [a.dest], "dest": a.dest,
                    "default": a.default, "choices": list(a.choices) if a.choices else None,
                    "nargs": a.nargs, "required": a.required,
                    "type": getattr(a.type, "__name__", None)})
    return out
from tensorrt_edgellm.scripts.{mod} import build_parser
print(json.dumps(dump(build_parser())))
"""


# ------------------------------------------------------------------ helpers

def run(cmd: list[str], cwd: Path | None = None, umask: int | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": str(cwd or Path.cwd()), "LANG": "C.UTF-8"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**base, **env},
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def out(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout + p.stderr


def unpack(tarball: Path, dest: Path) -> Path:
    """TARBALL unpacked with its top directory stripped (tar --strip-components=1)."""
    with tarfile.open(tarball) as tar:
        tar.extractall(dest.parent / (dest.name + ".x"), filter="data")
    (top,) = (dest.parent / (dest.name + ".x")).iterdir()
    top.rename(dest)
    return dest


def tool(src: Path, name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The stand-in package's console script NAME, run from the unpacked source."""
    mod = {"export": "tensorrt_edgellm.scripts.export",
           "quantize": "tensorrt_edgellm.scripts.quantize"}[name]
    return run([sys.executable, "-m", mod, *args], cwd=src.parent, PYTHONPATH=str(src), **env)


def build(checkout: Path, onnx: Path, engine: Path, *args: str, cwd: Path | None = None,
          **env: str) -> subprocess.CompletedProcess[str]:
    plugin = {} if "EDGELLM_PLUGIN_PATH" in env or cwd else \
        {"EDGELLM_PLUGIN_PATH": str(checkout / PLUGIN)}
    return run([str(checkout / LLM_BUILD), "--onnxDir", str(onnx), "--engineDir", str(engine),
                *args], cwd=cwd or onnx.parent, **{**plugin, **env})


def load_runtime(checkout: Path) -> ModuleType:
    """build/pybind/_edgellm_runtime loaded by file location, as engine.py:262-270 does."""
    spec = spec_from_file_location("_edgellm_runtime",
                                   checkout / "build/pybind/_edgellm_runtime.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request(rt: ModuleType, text: str, max_len: int = 64, **fields) -> object:
    req = rt.LLMGenerationRequest()
    req.requests = [rt.Request([rt.Message("user", [rt.MessageContent("text", text)])])]
    req.max_generate_length = max_len
    req.temperature, req.top_p, req.top_k = 0.0, 1.0, 1
    for k, v in fields.items():
        setattr(req, k, v)
    return req


def stream(rt: ModuleType, runtime: object, req: object) -> tuple[list, list]:
    """engine.py:952-1017: handle_request in a thread, chunks from wait_pop."""
    channel = rt.StreamChannel.create()
    channel.set_skip_special_tokens(True)
    req.stream_channels = [channel]
    errors: list = []

    def work() -> None:
        try:
            runtime.handle_request(req)
        except Exception as exc:
            errors.append(exc)
            channel.cancel()
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    chunks = []
    while True:
        chunk = channel.wait_pop(timeout_ms=200)
        if chunk is None:
            if channel.is_finished() or channel.is_cancelled():
                break
            continue
        chunks.append(chunk)
        if chunk.finished:
            break
    worker.join(timeout=30)
    return chunks, errors


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The runtime checkout, the source package, a tiny Qwen2 checkpoint, its export and an
    engine built from it (maxInputLen = maxKVCacheCapacity = 256)."""
    base = tmp_path_factory.mktemp("edgellm")
    paths = {"base": base,
             "checkout": unpack(make_runtime_tarball(base / "dist"), base / "opt"),
             "src": unpack(make_source_tarball(base / "dist"), base / "src"),
             "model": make_checkpoint(base / "Qwen2.5-tiny")}
    p = tool(paths["src"], "export", str(paths["model"]), str(base / "onnx"))
    assert p.returncode == 0, out(p)
    paths["onnx"] = base / "onnx/llm"
    p = build(paths["checkout"], paths["onnx"], base / "engine", "--maxInputLen", str(MAX_INPUT),
              "--maxKVCacheCapacity", str(KV), "--maxBatchSize", "1")
    assert p.returncode == 0, out(p)
    paths["engine"] = base / "engine"
    return paths


@pytest.fixture(scope="module")
def rt(edge: dict[str, Path]) -> ModuleType:
    return load_runtime(edge["checkout"])


@pytest.fixture
def runtime(rt: ModuleType, edge: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("EDGELLM_PLUGIN_PATH", str(edge["checkout"] / PLUGIN))
    return rt.LLMRuntime(str(edge["engine"]), "", {})


# ------------------------------------------------------------------ the artifacts

def test_runtime_tarball_is_the_device_build_tree(tmp_path: Path) -> None:
    """The design note's paths (i26-design.md point 2; cpp/CMakeLists.txt:148: VERSION 1.0
    SOVERSION 1 makes two symlinks), executables executable, the build's CUDA recorded."""
    tarball = make_runtime_tarball(tmp_path, cuda="13.2")
    assert tarball.name == "tensorrt-edgellm-0.9.1-jp72.tar.gz"
    with tarfile.open(tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert all(n == "TensorRT-Edge-LLM" or n.startswith("TensorRT-Edge-LLM/build")
               for n in members)
    for rel in ("examples/llm/llm_build", "examples/llm/llm_inference"):
        assert members[f"TensorRT-Edge-LLM/build/{rel}"].mode == 0o755
    link = members["TensorRT-Edge-LLM/build/libNvInfer_edgellm_plugin.so"]
    assert link.issym() and link.linkname == "libNvInfer_edgellm_plugin.so.1"
    assert "TensorRT-Edge-LLM/build/pybind/_edgellm_runtime.py" in members
    checkout = unpack(tarball, tmp_path / "co")
    assert b"FAKE" in (checkout / PLUGIN).read_bytes()
    cache = (checkout / "build/CMakeCache.txt").read_text()
    assert "CUDA_CTK_VERSION:UNINITIALIZED=13.2" in cache
    assert "EMBEDDED_TARGET:UNINITIALIZED=jetson-orin" in cache
    assert (checkout / LLM_BUILD).read_text().startswith("#!/usr/bin/env python3\n")
    assert make_runtime_tarball(tmp_path / "again").read_bytes() == tarball.read_bytes()


def test_source_tarball_is_githubs_archive(tmp_path: Path) -> None:
    tarball = make_source_tarball(tmp_path)
    assert tarball.name == "TensorRT-Edge-LLM-0.9.1.tar.gz"
    with tarfile.open(tarball) as tar:
        assert tar.pax_headers["comment"] == "7f061f21f0a581ba234a1e233c9315b89d8e47d6"
        assert all(m.uname == "root" for m in tar.getmembers())
    src = unpack(tarball, tmp_path / "s")
    text = (src / "pyproject.toml").read_text()
    assert 'name = "tensorrt-edgellm"' in text and "dependencies = []" in text
    for script, entry in REAL_CONSOLE_SCRIPTS.items():
        assert f'{script} = "{entry}"' in text
    assert (src / "tensorrt_edgellm/_version.py").read_text() == '__version__ = "0.9.1"\n'


def test_source_installs_offline_with_pip(edge: dict[str, Path], tmp_path: Path) -> None:
    """pip install --no-index --no-build-isolation into a venv that sees the project venv's
    setuptools (>= 68, pyproject.toml:1-3) and pip: both console scripts installed."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = next((env / "lib").glob("python*/site-packages"))
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pip").is_dir())
    (site / "project-tools.pth").write_text(here + "\n")
    src = Path(shutil.copytree(edge["src"], tmp_path / "src"))
    p = run([str(env / "bin/python"), "-m", "pip", "install", "--no-index",
             "--no-build-isolation", "--no-deps", "--disable-pip-version-check", str(src)],
            cwd=tmp_path)
    assert p.returncode == 0, out(p)
    for script in REAL_CONSOLE_SCRIPTS:
        p = run([str(env / "bin" / script), "--help"], cwd=tmp_path)
        assert p.returncode == 0 and "usage:" in p.stdout, out(p)


# ------------------------------------------------------------------ the real interfaces

def load_llm_build_module(checkout: Path) -> ModuleType:
    """build/examples/llm/llm_build (no .py suffix) imported, with its sibling module."""
    path = checkout / LLM_BUILD
    sys.path.insert(0, str(path.parent))
    try:
        loader = SourceFileLoader("fake_llm_build", str(path))
        module = module_from_spec(spec_from_file_location("fake_llm_build", path, loader=loader))
        loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))
        sys.modules.pop("fake_edgellm_common", None)


def test_llm_build_options_are_the_real_ones(edge: dict[str, Path]) -> None:
    module = load_llm_build_module(edge["checkout"])
    assert [(n, a) for n, a, _ in module.LONG_OPTIONS] == REAL_LLM_BUILD_OPTIONS
    p = run([str(edge["checkout"] / LLM_BUILD), "--help"])
    assert p.returncode == 0
    for name, _ in REAL_LLM_BUILD_OPTIONS:
        if not name.startswith("eagle"):  # deprecated aliases are not in the usage
            assert f"--{name}" in p.stderr


def test_runtime_names_are_the_real_ones(rt: ModuleType) -> None:
    """Every name of edgellm_pybind.cpp the stand-in provides, with the real access (a
    def_readonly attribute refuses a write), and no name the real module lacks."""
    defined = {n for n, o in vars(rt).items() if not n.startswith("_")
               and getattr(o, "__module__", None) == rt.__name__}
    assert defined <= set(REAL_PYBIND) | REAL_PYBIND_FUNCTIONS, defined - set(REAL_PYBIND)
    assert defined == (set(REAL_PYBIND) | REAL_PYBIND_FUNCTIONS) - PYBIND_NOT_PROVIDED
    instances = {"ImageData": rt.ImageData(), "AudioData": rt.AudioData(),
                 "MessageContent": rt.MessageContent(), "Message": rt.Message(),
                 "FormattedRequest": rt.FormattedRequest(), "Request": rt.Request(),
                 "StreamChunk": rt.StreamChunk(), "LLMGenerationRequest": rt.LLMGenerationRequest(),
                 "LLMGenerationResponse": rt.LLMGenerationResponse()}
    for cls_name, names in REAL_PYBIND.items():
        if cls_name in PYBIND_NOT_PROVIDED:
            continue
        cls = getattr(rt, cls_name)
        public = {n for n in vars(cls) if not n.startswith("_")}
        if cls_name != "FinishReason":
            assert public <= set(names), (cls_name, public - set(names))
        for name, kind in names.items():
            assert hasattr(cls, name), (cls_name, name)
            obj = instances.get(cls_name)
            if kind == "ro" and obj is not None:
                with pytest.raises(AttributeError, match="has no setter"):
                    setattr(obj, name, getattr(obj, name))
            if kind == "rw" and obj is not None:
                setattr(obj, name, getattr(obj, name))


@pytest.mark.parametrize("mod,expected", [("export", {"": REAL_EXPORT_OPTIONS}),
                                          ("quantize", REAL_QUANTIZE)])
def test_host_script_parsers_are_the_real_ones(edge: dict[str, Path], mod: str,
                                              expected: dict) -> None:
    """Each real option (strings, dest, default, choices, nargs, type, required) is in the
    stand-in's parser, and nothing else."""
    p = run([sys.executable, "-c", PARSER_DUMP.replace("{mod}", mod)], PYTHONPATH=str(edge["src"]))
    assert p.returncode == 0, out(p)
    dumped = json.loads(p.stdout)
    parsers = {"": dumped} if mod == "export" else dumped[0]["sub"]
    for sub, table in expected.items():
        got = {tuple(a["opts"]): a for a in parsers[sub]}
        assert set(got) == set(table), (sub, set(got) ^ set(table))
        for opts, (dest, default, extra) in table.items():
            a = got[opts]
            assert (a["dest"], a["default"]) == (dest, default), opts
            for key, value in extra.items():
                assert a[key] == value, (opts, key)


# ------------------------------------------------------------------ llm_build: command line

@pytest.mark.parametrize("args,rc,expect", [
    # argc < 2 (llm_build.cpp:196-201)
    ([], 1, ["[ERROR] [llm_build.cpp:198:main] Unable to parse builder args.", "Usage: "]),
    # getopt_long's own message, then the default case (187) and main's (198)
    (["--bogus"], 1, ["unrecognized option '--bogus'", "Invalid Argument ? is (null).",
                      "Unable to parse builder args.", "--maxKVCacheCapacity"]),
    (["--max", "5"], 1, ["option '--max' is ambiguous; possibilities: '--maxInputLen'"]),
    (["--eagle"], 1, ["option '--eagle' is ambiguous; possibilities: '--eagleDraft' "
                      "'--eagleBase'"]),
    (["--onnxDir"], 1, ["option '--onnxDir' requires an argument"]),
    (["--debug=yes"], 1, ["option '--debug' doesn't allow an argument"]),
    (["-x"], 1, ["invalid option -- 'x'"]),
    (["--help"], 0, ["Usage: ", "--profilingDetailed"]),
    (["--onnxDir", "/nonexistent", "--engineDir", "/tmp/never"], 1,
     ["config.json not found in onnx directory: /nonexistent"]),  # 217-224
])
def test_llm_build_command_line(edge: dict[str, Path], args: list[str], rc: int,
                                expect: list[str]) -> None:
    p = run([str(edge["checkout"] / LLM_BUILD), *args])
    assert p.returncode == rc, out(p)
    for text in expect:
        assert text in out(p), (text, out(p))


@pytest.mark.parametrize("value,exc", [("abc", "std::invalid_argument"),
                                       ("99999999999", "std::out_of_range")])
def test_llm_build_non_numeric_aborts(edge: dict[str, Path], value: str, exc: str) -> None:
    """std::stoi throws and nothing catches it (llm_build.cpp:150): SIGABRT."""
    p = run([str(edge["checkout"] / LLM_BUILD), "--onnxDir", str(edge["onnx"]),
             "--maxInputLen", value])
    assert p.returncode == -signal.SIGABRT, out(p)
    assert f"terminate called after throwing an instance of '{exc}'\n  what():  stoi" in p.stderr


def test_llm_build_takes_both_forms_and_prefixes(edge: dict[str, Path], tmp_path: Path) -> None:
    """--opt=value, --opt value and a unique prefix (--onnx) all parse; stoi takes "128x"."""
    engine = tmp_path / "e"
    p = run([str(edge["checkout"] / LLM_BUILD), f"--onnx={edge['onnx']}", "--engineDir",
             str(engine), "--maxInputLen=128x", "--maxKV", "512", "--maxBatch=2"],
            EDGELLM_PLUGIN_PATH=str(edge["checkout"] / PLUGIN))
    assert p.returncode == 0, out(p)
    bc = json.loads((engine / "config.json").read_text())["builder_config"]
    assert (bc["max_input_len"], bc["max_kv_cache_capacity"], bc["max_batch_size"]) == \
        (128, 512, 2)


# ------------------------------------------------------------------ llm_build: building

def test_llm_build_writes_the_engine_directory(edge: dict[str, Path]) -> None:
    """llmBuilder.cpp:241-318, 1325-1459, 1627-1638: engine, config.json = the ONNX config
    plus builder_config (llmBuilder.h:51-70), the tokenizer files, the embedding table."""
    engine, onnx = edge["engine"], edge["onnx"]
    assert {p.name for p in engine.iterdir()} == {
        "llm.engine", "config.json", "tokenizer_config.json", "tokenizer.json",
        "processed_chat_template.json", "embedding.safetensors"}
    config = json.loads((engine / "config.json").read_text())
    assert set(config["builder_config"]) == REAL_BUILDER_CONFIG_KEYS
    onnx_config = json.loads((onnx / "config.json").read_text())
    assert {k: config[k] for k in onnx_config} == onnx_config
    assert list(config) == sorted(config)  # nlohmann::json's std::map order
    with open(engine / "llm.engine", "rb") as f:
        assert f.readline() == b"FAKE TensorRT plan\n"
        header = json.loads(f.readline())
    onnx_header = json.loads((onnx / "model.onnx").read_bytes().split(b"\n")[1])
    assert header["checkpoint_sha256"] == onnx_header["checkpoint_sha256"]
    assert (header["max_input_len"], header["max_kv_cache_capacity"],
            header["max_batch_size"]) == (MAX_INPUT, KV, 1)
    assert (header["tensorrt_version"], header["compute_capability"]) == ("10.16.2", "8.7")
    for name in ("tokenizer.json", "embedding.safetensors"):
        assert (engine / name).read_bytes() == (onnx / name).read_bytes()


def test_llm_build_without_a_gpu(edge: dict[str, Path], tmp_path: Path) -> None:
    """createInferBuilder returns null (builderUtils.cpp:222-227)."""
    p = build(edge["checkout"], edge["onnx"], tmp_path / "e", FAKE_EDGELLM_GPUS="0")
    assert p.returncode == 1
    assert "[TensorRT] CUDA initialization failure with error: 100" in p.stderr
    assert "Failed to create TensorRT builder" in p.stderr
    assert "Failed to build LLM engine." in p.stderr
    assert not (tmp_path / "e").exists()


def test_llm_build_finds_the_plugin_only_relative_to_cwd(edge: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """EDGELLM_PLUGIN_PATH unset: build/libNvInfer_edgellm_plugin.so relative to the CWD
    (trtUtils.h:60-72). From the checkout it loads; from elsewhere the ONNX parser cannot
    create AttentionPlugin and the build fails."""
    ok = build(edge["checkout"], edge["onnx"], tmp_path / "ok", cwd=edge["checkout"])
    assert ok.returncode == 0, out(ok)
    assert "EDGELLM_PLUGIN_PATH variable is not set" in ok.stdout
    elsewhere = build(edge["checkout"], edge["onnx"], tmp_path / "e", cwd=tmp_path)
    assert elsewhere.returncode == 1
    assert ("Cannot open plugin library: build/libNvInfer_edgellm_plugin.so: cannot open shared "
            "object file: No such file or directory") in elsewhere.stderr
    assert "Cannot find plugin: AttentionPlugin, version: 1, namespace:trt_edgellm." in \
        elsewhere.stderr
    assert f"Failed to parse ONNX file: {edge['onnx']}/model.onnx" in elsewhere.stderr


def test_llm_build_copies_external_weight_files_without_a_path_check(
        edge: dict[str, Path], tmp_path: Path) -> None:
    """llmBuilder.cpp:1681-1686: onnxDir / entry["file"] to engineDir / entry["file"], no
    check. An ONNX config naming "../secret" copies a file from beside the ONNX directory to
    beside the engine directory: the stand-in is as unsafe as the real tool, so a guard in
    front of it can be tested against it."""
    onnx = Path(shutil.copytree(edge["onnx"], tmp_path / "in/onnx"))
    (tmp_path / "in/secret").write_text("not for the engine\n")
    config = json.loads((onnx / "config.json").read_text())
    config["external_weight_files"] = [{"file": "../secret", "kind": "int4_ffn_weights"}]
    (onnx / "config.json").write_text(json.dumps(config))
    p = build(edge["checkout"], onnx, tmp_path / "out/engine")
    assert p.returncode == 0, out(p)
    assert (tmp_path / "out/secret").read_text() == "not for the engine\n"
    assert "Copied external weight file: ../secret -> ../secret" in p.stdout


def test_llm_build_leaves_a_half_written_engine_dir(edge: dict[str, Path], tmp_path: Path) -> None:
    """A missing tokenizer file fails the build after llm.engine and config.json are
    written (llmBuilder.cpp:268-299, 1462-1478)."""
    onnx = Path(shutil.copytree(edge["onnx"], tmp_path / "onnx"))
    (onnx / "tokenizer.json").unlink()
    p = build(edge["checkout"], onnx, tmp_path / "e")
    assert p.returncode == 1
    assert "Failed to copy tokenizer file tokenizer.json" in p.stderr
    assert (tmp_path / "e/llm.engine").exists() and (tmp_path / "e/config.json").exists()
    assert not (tmp_path / "e/tokenizer.json").exists()


@pytest.mark.parametrize("args,text", [
    (["--maxInputLen", "1"], "Condition min <= opt <= max violated at dimension index 1, min = 1, "
                             "opt = 0, max = 1"),  # inputs_embeds opt = maxInputLen / 2
    (["--maxBatchSize", "0"], "setOptimizationProfile: context_lengths is not valid"),
    (["--specDraft"], "Build mode does not match config: engine_role='llm'"),  # 357-365
    (["--maxLoraRank", "8"], "lora_model.onnx"),  # 197-200
])
def test_llm_build_refuses_what_the_builder_refuses(edge: dict[str, Path], tmp_path: Path,
                                                    args: list[str], text: str) -> None:
    p = build(edge["checkout"], edge["onnx"], tmp_path / "e", *args)
    assert p.returncode == 1
    assert text in out(p)


def test_builds_for_another_cuda_do_not_load(edge: dict[str, Path]) -> None:
    """A JetPack 7.2 build (CUDA 13.2) on a CUDA 12.6 system: the loader misses
    libcudart.so.13, for the executable and for the Python extension."""
    p = run([str(edge["checkout"] / LLM_BUILD), "--help"], FAKE_EDGELLM_CUDA="12.6")
    assert p.returncode == 127
    assert "error while loading shared libraries: libcudart.so.13: cannot open shared object " \
        "file: No such file or directory" in p.stderr
    p = run([sys.executable, "-c", "import _edgellm_runtime"], FAKE_EDGELLM_CUDA="12.6",
            PYTHONPATH=str(edge["checkout"] / "build/pybind"))
    assert "ImportError: libcudart.so.13: cannot open shared object file" in p.stderr


# ------------------------------------------------------------------ runtime: loading

@pytest.mark.parametrize("env,text", [
    ({"FAKE_EDGELLM_GPUS": "0"}, "no CUDA-capable device is detected"),  # pybind.cpp:57-60
    ({"EDGELLM_PLUGIN_PATH": "/nonexistent.so"}, "Failed to deserialize TensorRT engine"),
    ({"FAKE_EDGELLM_TENSORRT": "10.16.3"}, "Failed to deserialize TensorRT engine"),
    ({"FAKE_EDGELLM_GPU_SM": "11.0"}, "Failed to deserialize TensorRT engine"),
])
def test_runtime_refuses_to_load(rt: ModuleType, edge: dict[str, Path],
                                 monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture,
                                 env: dict[str, str], text: str) -> None:
    monkeypatch.setenv("EDGELLM_PLUGIN_PATH", str(edge["checkout"] / PLUGIN))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match=text):
        rt.LLMRuntime(str(edge["engine"]), "", {})
    if "FAKE_EDGELLM_TENSORRT" in env:
        assert "not compatible with this version of TensorRT, expecting library version " \
            "10.16.3 got 10.16.2" in capfd.readouterr().err


def test_runtime_refuses_a_broken_engine_dir(rt: ModuleType, edge: dict[str, Path],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELLM_PLUGIN_PATH", str(edge["checkout"] / PLUGIN))
    engine = Path(shutil.copytree(edge["engine"], tmp_path / "e"))
    (engine / "llm.engine").unlink()
    with pytest.raises(RuntimeError, match=r"Failed to initialize base EngineExecutor: Failed to "
                       r"open engine file: .*llm\.engine: No such file or directory"):
        rt.LLMRuntime(str(engine), "", {})
    (engine / "config.json").unlink()
    with pytest.raises(RuntimeError, match=r"llmEngineConfig\.cpp:465: parseEngineConfig: "
                       r"failed to open"):
        rt.LLMRuntime(str(engine), "", {})
    with pytest.raises(TypeError, match="incompatible constructor arguments"):
        rt.LLMRuntime(engine, "", {})  # a Path is not a std::string


def test_builder_accepts_what_the_runtime_refuses(rt: ModuleType, edge: dict[str, Path],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """llm_build never compares maxInputLen with maxKVCacheCapacity; the runtime does
    (llmEngineConfig.cpp:344-346)."""
    p = build(edge["checkout"], edge["onnx"], tmp_path / "e", "--maxInputLen", "512",
              "--maxKVCacheCapacity", "256")
    assert p.returncode == 0, out(p)
    monkeypatch.setenv("EDGELLM_PLUGIN_PATH", str(edge["checkout"] / PLUGIN))
    with pytest.raises(RuntimeError, match=r"max_input_len \(512\) cannot be greater than "
                       r"max_kv_cache_capacity \(256\)"):
        rt.LLMRuntime(str(tmp_path / "e"), "", {})


# ------------------------------------------------------------------ runtime: generation

def test_generates_with_the_chat_template(rt: ModuleType, runtime: object) -> None:
    req = request(rt, "What is an edge device?")
    resp = runtime.handle_request(req)
    assert resp.finish_reasons[0] == rt.FinishReason.END_ID
    assert resp.output_ids[0][-1] == 502  # <|im_end|>, the tokenizer's EOS
    assert resp.output_texts[0] and "<|im_end|>" not in resp.output_texts[0]
    formatted = req.formatted_requests[0].formatted_complete_request  # written back
    assert formatted == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                         "helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is an edge "
                         "device?<|im_end|>\n<|im_start|>assistant\n")
    again = runtime.handle_request(request(rt, "What is an edge device?"))
    assert again.output_texts == resp.output_texts  # greedy: the same text
    short = runtime.handle_request(request(rt, "What is an edge device?", max_len=3))
    assert short.finish_reasons[0] == rt.FinishReason.LENGTH and len(short.output_ids[0]) == 3


def test_streams_the_same_text(rt: ModuleType, runtime: object,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_EDGELLM_TOKEN_DELAY", "0.001")
    whole = runtime.handle_request(request(rt, "Stream this"))
    chunks, errors = stream(rt, runtime, request(rt, "Stream this"))
    assert not errors and len(chunks) > 2
    assert "".join(c.text for c in chunks) == whole.output_texts[0]
    assert chunks[-1].finished and chunks[-1].reason == rt.FinishReason.END_ID
    assert [t for c in chunks for t in c.token_ids] == whole.output_ids[0]


def test_cancel_and_stop_strings(rt: ModuleType, runtime: object,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel is seen at the next step (streaming.cpp:276-296); a stop string ends the
    output before it (217-274)."""
    monkeypatch.setenv("FAKE_EDGELLM_TOKEN_DELAY", "0.01")
    req = request(rt, "Cancel me")
    channel = rt.StreamChannel.create()
    req.stream_channels = [channel]
    worker = threading.Thread(target=runtime.handle_request, args=(req,), daemon=True)
    worker.start()
    assert channel.wait_pop(timeout_ms=10000) is not None
    channel.cancel()
    worker.join(timeout=30)
    assert channel.get_reason() == rt.FinishReason.CANCELLED
    text = runtime.handle_request(request(rt, "Stop early")).output_texts[0]
    word = text.split()[3]
    req = request(rt, "Stop early")
    req.requests[0].stop_strings.append(word)  # a list read is a copy: changes nothing
    assert req.requests[0].stop_strings == []
    req.requests[0].stop_strings = [word]  # the element itself is a reference
    resp = runtime.handle_request(req)
    assert resp.finish_reasons[0] == rt.FinishReason.STOP_WORDS
    assert resp.output_texts[0] == text[:text.find(word)]


def test_too_long_prompt_raises(rt: ModuleType, runtime: object,
                                capfd: pytest.CaptureFixture) -> None:
    """setUpForPrefillExecution (llmInferenceRuntime.cpp:1717-1723) returns false; the
    binding's ELLM_CHECK throws (edgellm_pybind.cpp:131)."""
    with pytest.raises(RuntimeError, match=r"/experimental/pybind/edgellm_pybind.cpp:131: "
                       "Failed to handle generation request"):
        runtime.handle_request(request(rt, "word " * 400))
    assert f"exceeds the max supported input length ({MAX_INPUT}) of the LLM Engine." in \
        capfd.readouterr().err


def test_generation_is_clamped_to_the_kv_cache(rt: ModuleType, runtime: object,
                                               capfd: pytest.CaptureFixture) -> None:
    """max_generate_length is cut to what the KV cache holds (713-719); nothing left fails
    (720-724) and ends an attached channel with ERROR (streaming.cpp:428-497)."""
    resp = runtime.handle_request(request(rt, "Hi", max_len=100000))
    assert resp.finish_reasons[0] == rt.FinishReason.END_ID
    assert "Reduce max generation length to" in capfd.readouterr().err
    req = request(rt, "abcd" + " abcd" * (KV - 1), apply_chat_template=False)
    chunks, errors = stream(rt, runtime, req)
    assert errors and "Failed to handle generation request" in str(errors[0])
    assert "Insufficient KV cache capacity" in capfd.readouterr().err
    assert chunks and chunks[-1].reason == rt.FinishReason.ERROR


def test_concurrent_requests_are_detected(rt: ModuleType, runtime: object,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real runtime has no lock: two handle_request calls share one CUDA stream and KV
    cache (edgellm_pybind.cpp:105-133). The stand-in refuses the second loudly."""
    monkeypatch.setenv("FAKE_EDGELLM_TOKEN_DELAY", "0.01")
    req = request(rt, "first")
    channel = rt.StreamChannel.create()
    req.stream_channels = [channel]
    worker = threading.Thread(target=runtime.handle_request, args=(req,), daemon=True)
    worker.start()
    assert channel.wait_pop(timeout_ms=10000) is not None  # the first one is generating
    with pytest.raises(RuntimeError, match="fake: concurrent handle_request on one LLMRuntime"):
        runtime.handle_request(request(rt, "second"))
    channel.cancel()
    worker.join(timeout=30)
    assert runtime.handle_request(request(rt, "third")).output_texts[0]  # serialized: fine


def test_pybind_conversions(rt: ModuleType, runtime: object) -> None:
    """stl.h copies lists both ways; types are checked; FinishReason is not an int."""
    req = request(rt, "x")
    req.requests.append(rt.Request())
    assert len(req.requests) == 1
    with pytest.raises(TypeError, match="incompatible function arguments"):
        req.temperature = "0.7"
    with pytest.raises(TypeError):
        req.top_k = 1.5
    assert rt.FinishReason.END_ID != 1 and rt.FinishReason(1) == rt.FinishReason.END_ID
    fresh = rt.LLMGenerationRequest()  # value-initialized (llmRuntimeUtils.h:126-129)
    assert (fresh.temperature, fresh.top_p, fresh.top_k, fresh.max_generate_length) == \
        (0.0, 0.0, 0, 0)
    fresh.requests = [rt.Request([rt.create_text_message("user", "x")])]
    with pytest.raises(RuntimeError, match="Failed to handle generation request"):
        runtime.handle_request(fresh)  # max_generate_length 0: no room to generate


# ------------------------------------------------------------------ export

def test_export_layout(edge: dict[str, Path]) -> None:
    """<out>/llm/ (scripts/export.py:201; onnx/export.py:71-104; checkpoint_utils.py:45-51,
    326-662), world-readable whatever the caller's umask (export.py:2374-2380)."""
    onnx = edge["onnx"]
    assert {p.name for p in onnx.iterdir()} == {
        "model.onnx", "model.onnx.data", "config.json", "embedding.safetensors",
        "tokenizer.json", "tokenizer_config.json", "processed_chat_template.json"}
    config = json.loads((onnx / "config.json").read_text())
    assert list(config)[:4] == ["model", "spec_decode_type", "engine_role", "edgellm_version"]
    assert (config["model"], config["edgellm_version"], config["kv_cache_dtype"],
            config["head_dim"], config["eos_token_id"]) == ("qwen2", "0.9.1", "fp16", 16, [502])
    template = json.loads((onnx / "processed_chat_template.json").read_text())
    assert template["default_system_prompt"].startswith("You are Qwen")


def test_export_sets_umask_022(edge: dict[str, Path], tmp_path: Path) -> None:
    p = tool(edge["src"], "export", str(edge["model"]), str(tmp_path / "o"), umask=0o077)
    assert p.returncode == 0, out(p)
    assert (tmp_path / "o/llm").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "o/llm/model.onnx.data").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("model,env,rc,text", [
    ("Qwen/Qwen2.5-0.5B-Instruct", {"HF_HUB_OFFLINE": "1"}, 1,
     "LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder"),
    ("Qwen/Qwen2.5-0.5B-Instruct", {}, 1, "Please check your internet connection"),
    ("/no/such/dir", {}, 1, "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"),
])
def test_export_does_not_download(edge: dict[str, Path], tmp_path: Path, model: str,
                                  env: dict[str, str], rc: int, text: str) -> None:
    p = tool(edge["src"], "export", model, str(tmp_path / "o"), HF_HOME=str(tmp_path / "hf"),
             **env)
    assert p.returncode == rc and text in p.stderr, out(p)
    assert not (tmp_path / "o").exists()


def test_export_uses_a_cached_snapshot(edge: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "hf/hub/models--Qwen--tiny"
    shutil.copytree(edge["model"], repo / "snapshots/abc123")
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("abc123")
    p = tool(edge["src"], "export", "Qwen/tiny", str(tmp_path / "o"), HF_HOME=str(tmp_path / "hf"),
             HF_HUB_OFFLINE="1")
    assert p.returncode == 0, out(p)


@pytest.mark.parametrize("args,rc,text", [
    (["--externalize-weights", "bogus"], 2, "invalid choice: 'bogus'"),
    (["--eagle-base", "--mtp"], 2, "--eagle-base and --mtp cannot be enabled together"),
    (["--num-decoder-layer", "0"], 2, "--num-decoder-layer must be >= 1"),
    (["--dtype", "int8"], 1, "Unknown dtype 'int8'"),
])
def test_export_refuses_bad_options(edge: dict[str, Path], tmp_path: Path, args: list[str],
                                    rc: int, text: str) -> None:
    p = tool(edge["src"], "export", str(edge["model"]), str(tmp_path / "o"), *args)
    assert p.returncode == rc and text in p.stderr, out(p)


def test_export_of_a_checkpoint_without_weights(edge: dict[str, Path], tmp_path: Path) -> None:
    model = Path(shutil.copytree(edge["model"], tmp_path / "m"))
    (model / "model.safetensors").unlink()
    p = tool(edge["src"], "export", str(model), str(tmp_path / "o"))
    assert p.returncode == 1
    assert "[LLM] Failed to load checkpoint" in p.stderr and "No checkpoint files found" in p.stderr


def test_int4_external_weights_reach_the_runtime(rt: ModuleType, edge: dict[str, Path],
                                                 tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--externalize-weights int4_ffn (quick-start-guide.md:173-177) on an AWQ checkpoint:
    the manifest in config.json, the file copied by llm_build, loaded by the runtime."""
    awq = make_checkpoint(tmp_path / "awq", quant="awq")
    p = tool(edge["src"], "export", str(awq), str(tmp_path / "o"), "--externalize-weights",
             "int4_ffn")
    assert p.returncode == 0, out(p)
    config = json.loads((tmp_path / "o/llm/config.json").read_text())
    assert config["external_weight_files"][0]["file"] == "external_int4_ffn_weights.safetensors"
    p = build(edge["checkout"], tmp_path / "o/llm", tmp_path / "e")
    assert p.returncode == 0, out(p)
    monkeypatch.setenv("EDGELLM_PLUGIN_PATH", str(edge["checkout"] / PLUGIN))
    runtime = rt.LLMRuntime(str(tmp_path / "e"), "", {})
    assert runtime.handle_request(request(rt, "int4")).output_texts[0]
    (tmp_path / "e/external_int4_ffn_weights.safetensors").unlink()
    with pytest.raises(RuntimeError, match="Failed to load external weight file"):
        rt.LLMRuntime(str(tmp_path / "e"), "", {})


# ------------------------------------------------------------------ quantize

def quantize(edge: dict[str, Path], tmp_path: Path, *args: str, **env: str
             ) -> subprocess.CompletedProcess[str]:
    return tool(edge["src"], "quantize", "llm", "--model_dir", str(edge["model"]),
                "--output_dir", str(tmp_path / "q"), *args, **env)


def test_quantize_refuses_without_a_gpu(edge: dict[str, Path], tmp_path: Path) -> None:
    """--device cuda (quantize.py:93) on a host without an NVIDIA driver: torch's error."""
    p = quantize(edge, tmp_path, "--quantization", "int4_awq")
    assert p.returncode == 1
    assert p.stderr.rstrip().endswith(
        "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an "
        "NVIDIA GPU and installed a driver from http://www.nvidia.com/Download/index.aspx")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("args,env,rc,text", [
    (["--quantization", "int4_gptq"], {}, 2, "invalid choice: 'int4_gptq'"),  # no GPTQ method
    (["--dtype", "bf16"], {}, 2, "invalid choice: 'bf16'"),
    (["--quantization", "int4_awq"], {"FAKE_EDGELLM_GPUS": "1"}, 1,
     "ConnectionError: Couldn't reach 'cnn_dailymail' on the Hub"),  # the default dataset
    (["--text_dataset", "mine"], {"FAKE_EDGELLM_GPUS": "1"}, 1,
     "Unknown text calibration dataset 'mine'. Registered text datasets: cnn_dailymail, "
     "wikitext."),
])
def test_quantize_refusals(edge: dict[str, Path], tmp_path: Path, args: list[str],
                           env: dict[str, str], rc: int, text: str) -> None:
    p = quantize(edge, tmp_path, *args, **env)
    assert p.returncode == rc and text in p.stderr, out(p)


@pytest.mark.parametrize("method,algo,onnx_quant,orin_builds", [
    ("int4_awq", "W4A16_AWQ", "int4_awq_modelopt", True),
    ("fp8", "FP8", "fp8", False),  # Orin: FP16, INT8, INT4 only (installation.md:184-185)
])
def test_quantize_then_export_then_build(edge: dict[str, Path], tmp_path: Path, method: str,
                                         algo: str, onnx_quant: str, orin_builds: bool) -> None:
    calib = tmp_path / "cnn.jsonl"
    calib.write_text('{"article": "The edge device answered."}\n')
    p = quantize(edge, tmp_path, "--quantization", method, FAKE_EDGELLM_GPUS="1",
                 EDGELLM_QUANT_DATASET_CNN_DAILYMAIL=str(calib))
    assert p.returncode == 0, out(p)
    q = tmp_path / "q"
    assert json.loads((q / "hf_quant_config.json").read_text())["quantization"]["quant_algo"] \
        == algo
    qc = json.loads((q / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["quant_algo"], qc["producer"]["name"]) == \
        ("modelopt", algo, "modelopt")
    p = tool(edge["src"], "export", str(q), str(tmp_path / "o"))
    assert p.returncode == 0, out(p)
    header = json.loads((tmp_path / "o/llm/model.onnx").read_bytes().split(b"\n")[1])
    assert header["quantization"] == onnx_quant
    p = build(edge["checkout"], tmp_path / "o/llm", tmp_path / "e")
    assert (p.returncode == 0) == orin_builds, out(p)
    if not orin_builds:
        assert "Networks with FP8 precision require hardware with FP8 support." in p.stderr
        p = build(edge["checkout"], tmp_path / "o/llm", tmp_path / "e", FAKE_EDGELLM_GPU_SM="8.9")
        assert p.returncode == 0, out(p)
