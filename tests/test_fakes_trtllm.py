"""The TensorRT-LLM 0.12 stand-ins (tests/fakes/jetson) against the real 0.12 parsers.

Each row of the tables is a command line and what the real tool does with it, cited
from NVIDIA/TensorRT-LLM at be9cd719 (0.12.0.dev2024080600, the last 0.12 snapshot of
main; the v0.12.0-jetson branch itself is not stored). The accepted rows include the
lines the builder renders (builder/engines/trtllm recipe()), so a rendered flag the real
0.12 parser would refuse fails here. Then the stand-in wheel as a user installs it: pip,
offline, from a wheelhouse, into a venv; and the checkout's examples, which need it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.jetson.fake_trtllm import install_fake_trtllm
from fakes.jetson.fake_trtllm_wheel import (
    TOP,
    make_examples,
    make_wheel,
    make_wheelhouse,
    write_tensorrt,
)
from stand_ins import device_of

from builder.engines.trtllm import ENGINE
from builder.profiles import ProfileStore

QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "torch_dtype": "bfloat16",
            "tie_word_embeddings": True}
GPTQ = {"quantization_config": {"bits": 4, "group_size": 128, "quant_method": "gptq"}}
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "HOME": str(cwd), **env})


@pytest.fixture(scope="module")
def trt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The direct install, Qwen2.5-0.5B directories (plain, GPTQ), a local calibration
    set, and an int8 weight-only checkpoint."""
    base = tmp_path_factory.mktemp("trtllm")
    paths = install_fake_trtllm(base / "trtllm")
    for name, config in (("model", QWEN_05B), ("gptq", {**QWEN_05B, **GPTQ})):
        d = base / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        (d / "model.safetensors").write_bytes(b"\0" * 8)
        (d / "tokenizer.json").write_text("{}")
        paths[name] = d
    calib = base / "calib"
    calib.mkdir()
    (calib / "train.jsonl").write_text('{"text": "The capital of France is Paris."}\n')
    paths["calib"] = calib
    paths["ckpt"] = base / "ckpt"
    p = tool(paths, "convert_checkpoint", "--model_dir", str(paths["model"]), "--output_dir",
             str(paths["ckpt"]), "--use_weight_only", "--weight_only_precision", "int8")
    assert p.returncode == 0, p.stderr
    return paths


def tool(trt: dict[str, Path], name: str, *args: str, **env: str
         ) -> subprocess.CompletedProcess[str]:
    return run([str(trt["python"]), str(trt[name]), *args], trt["root"], **env)


def rendered(quant: str, build_jobs: int | None = None) -> list[list[str]]:
    """The steps the builder renders for the orin-nano-8gb profile with QUANT."""
    p = ProfileStore().load("orin-nano-8gb").concrete()
    t = p.engine.tensorrt_llm.model_copy(update={"calibration_dir": "CALIB"})
    p = p.model_copy(update={
        "model": p.model.model_copy(update={"quant": quant}),
        "engine": p.engine.model_copy(update={"tensorrt_llm": t, "build_jobs": build_jobs})})
    return ENGINE.recipe(p, device_of(p, "orin-nano-8gb").platform).steps


def substitute(argv: list[str], trt: dict[str, Path], out: Path, model: str) -> list[str]:
    places = {"MODEL": str(trt[model]), "CHECKPOINT": str(out), "ENGINE": str(out),
              "CALIB": str(trt["calib"])}
    return [places.get(a, a) for a in argv]


# ------------------------------------------------------------------ convert_checkpoint.py

@pytest.mark.parametrize("quant,model", [("int4_gptq", "gptq"), ("int8_wo", "model"),
                                         ("fp16", "model")])
def test_convert_accepts_the_builders_lines(trt: dict[str, Path], tmp_path: Path,
                                            quant: str, model: str) -> None:
    """examples/qwen/convert_checkpoint.py:16-157 (options), 185-189 (int4_gptq)."""
    convert, _ = rendered(quant)
    assert convert[:2] == ["python3", "examples/qwen/convert_checkpoint.py"]
    p = tool(trt, "convert_checkpoint", *substitute(convert[2:], trt, tmp_path / "c", model))
    assert p.returncode == 0, p.stderr
    algo = json.loads((tmp_path / "c/config.json").read_text())["quantization"]["quant_algo"]
    assert algo == {"int4_gptq": "W4A16_GPTQ", "int8_wo": "W8A16", "fp16": None}[quant]


@pytest.mark.parametrize("args,rc,text", [
    # choices of --weight_only_precision (convert_checkpoint.py:45-55)
    (["--use_weight_only", "--weight_only_precision", "int4_awq"], 2, "invalid choice"),
    # --dtype float32|bfloat16|float16 (27-30)
    (["--dtype", "auto"], 2, "invalid choice: 'auto'"),
    # removed from main on 2024-07-23 (bca9a33b), before 0.12 was branched
    (["--dataset-cache-dir", "/tmp"], 2, "unrecognized arguments: --dataset-cache-dir"),
    # 292-293
    (["--moe_tp_size", "2"], 1, "moe_tp_size * moe_ep_size must equal to tp_size"),
    # --int8_kv_cache calibrates on the Hub's ccdv/cnn_dailymail (56-62, 219-234)
    (["--int8_kv_cache"], 1, "Couldn't reach 'ccdv/cnn_dailymail' on the Hub"),
], ids=["awq-choice", "dtype", "later-flag", "moe", "calibration"])
def test_convert_refuses(trt: dict[str, Path], tmp_path: Path, args: list[str], rc: int,
                         text: str) -> None:
    p = tool(trt, "convert_checkpoint", "--model_dir", str(trt["model"]), "--output_dir",
             str(tmp_path / "c"), *args)
    assert (p.returncode, text in p.stderr) == (rc, True), p.stderr
    assert not (tmp_path / "c/config.json").exists()


# ------------------------------------------------------------------ quantize.py

def test_quantize_accepts_the_builders_awq_line_with_a_local_calibration_set(
        trt: dict[str, Path], tmp_path: Path) -> None:
    """quantize.py:11-104; quantize_by_modelopt.py:225-231 (a local directory: its train
    split's "text" column) and 398-405 (AWQ calibrates on 32 samples)."""
    quantize, _ = rendered("int4_awq")
    assert quantize[:2] == ["python3", "examples/quantization/quantize.py"]
    assert "--calib_dataset" in quantize
    p = tool(trt, "quantize", *substitute(quantize[2:], trt, tmp_path / "q", "model"))
    assert p.returncode == 0, p.stderr
    assert "Recognized local dataset repo" in p.stdout
    config = json.loads((tmp_path / "q/config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W4A16_AWQ"


@pytest.mark.parametrize("args,env,rc,text", [
    # --calib_dataset defaults to the Hub's cnn_dailymail (quantize.py:30-36;
    # quantize_by_modelopt.py:223-225), unreachable from a device (datasets/load.py)
    ([], {}, 1, "ConnectionError: Couldn't reach 'cnn_dailymail' on the Hub (ConnectionError)"),
    ([], {"HF_DATASETS_OFFLINE": "1"}, 1, "ConnectionError: Couldn't reach the Hugging Face "
     "Hub for dataset 'cnn_dailymail': Offline mode is enabled."),
    # neither a known name nor a directory (quantize_by_modelopt.py:233-235)
    (["--calib_dataset", "my-calibration"], {}, 1,
     "Unsupported dataset name or local repo directory: my-calibration."),
    # --qformat choices (quantize.py:53-61): no nvfp4 in 0.12
    (["--qformat", "nvfp4"], {}, 2, "invalid choice: 'nvfp4'"),
    # --dtype has no choices; get_model refuses others (quantize_by_modelopt.py:168-175)
    (["--dtype", "float64"], {}, 1, "NotImplementedError: Unknown dtype float64"),
], ids=["hub", "hub-offline-mode", "unknown-name", "qformat", "dtype"])
def test_quantize_awq_refuses(trt: dict[str, Path], tmp_path: Path, args: list[str],
                              env: dict[str, str], rc: int, text: str) -> None:
    p = tool(trt, "quantize", "--model_dir", str(trt["model"]), "--qformat", "int4_awq",
             "--output_dir", str(tmp_path / "q"), *args, **env)
    assert (p.returncode, text in p.stderr) == (rc, True), p.stderr
    assert not (tmp_path / "q").exists()


def test_quantize_reads_the_text_column_of_a_local_set(trt: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """A directory not named cnn_dailymail is read for its "text" column
    (quantize_by_modelopt.py:226-232): CNN/DailyMail's own files ("article") fail."""
    calib = tmp_path / "news"
    calib.mkdir()
    (calib / "train.jsonl").write_text('{"article": "x", "highlights": "y"}\n')
    p = tool(trt, "quantize", "--model_dir", str(trt["model"]), "--qformat", "int4_awq",
             "--calib_dataset", str(calib), "--output_dir", str(tmp_path / "q"))
    assert p.returncode == 1 and "Column text not in the dataset" in p.stderr


# ------------------------------------------------------------------ trtllm-build

@pytest.mark.parametrize("build_jobs", [None, 2])
def test_trtllm_build_accepts_the_builders_line(trt: dict[str, Path], tmp_path: Path,
                                                build_jobs: int | None) -> None:
    """tensorrt_llm/commands/build.py:37-246, plugin.py:302-330 (--gemm_plugin float16).
    engine.build_jobs renders no --workers: build.py:410 caps it at the GPU count and it
    only builds ranks side by side (350-393), one GPU and one rank on an Orin."""
    _, build = rendered("int8_wo", build_jobs)
    assert build[0] == "trtllm-build"
    assert "--workers" not in build
    argv = substitute(build[1:], trt, tmp_path / "e", "model")
    argv[argv.index("--checkpoint_dir") + 1] = str(trt["ckpt"])
    p = run([str(trt["trtllm_build"]), *argv], trt["root"])
    assert p.returncode == 0, p.stderr
    config = json.loads((tmp_path / "e/config.json").read_text())
    assert config["build_config"]["plugin_config"]["gemm_plugin"] == "float16"
    assert (tmp_path / "e/rank0.engine").is_file()


TRTLLM_BUILD = [
    # 0.12 has these (build.py:108-110 --tp_size; plugin.py:65-69 gemm_plugin fp8;
    # plugin.py:279 --fp8_rowwise_gemm_plugin, added 2024-07-23; build.py:119-127
    # --use_fused_mlp as a flag; build.py:410 --workers capped to the one GPU)
    (["--tp_size", "1"], 0, ""),
    (["--gemm_plugin", "fp8"], 0, ""),
    (["--fp8_rowwise_gemm_plugin", "float16"], 0, ""),
    (["--use_fused_mlp"], 0, ""),
    (["--workers", "8"], 0, ""),
    (["--max_seq_len", "4096", "--max_input_len", "8192"], 0,
     "max_input_len is 8192 is larger than max_seq_len 4096, clipping it to max_seq_len"),
    # not in 0.12: --max_output_len removed 2024-07-16 (2d234357); --monitor_memory
    # (2024-10-15), --kv_cache_type and --use_fused_mlp enable|disable (2024-08-20) later
    (["--max_output_len", "512"], 2, "unrecognized arguments: --max_output_len 512"),
    (["--monitor_memory"], 2, "unrecognized arguments: --monitor_memory"),
    (["--kv_cache_type", "paged"], 2, "unrecognized arguments: --kv_cache_type paged"),
    (["--use_fused_mlp", "enable"], 2, "unrecognized arguments: enable"),
    (["--speculative_decoding_mode", "eagle"], 2, "invalid choice: 'eagle'"),
    # plugin dtypes (plugin.py:62-69)
    (["--gemm_plugin", "fp16"], 2, "invalid choice: 'fp16'"),
    (["--gemm_swiglu_plugin", "float16"], 2, "invalid choice: 'float16'"),
    # failures after parsing
    (["--workers", "0"], 1, "ValueError: max_workers must be greater than 0"),
    (["--log_level", "trace"], 1, "KeyError: 'trace'"),  # logger.py:123, 130-137
    (["--gather_context_logits", "--max_draft_len", "2"], 1,
     "Gather context logits is not support with draft len > 0"),  # build.py:255-259
    (["--multiple_profiles", "enable", "--opt_num_tokens", "8"], 1,
     "multiple_profiles is enabled, while opt_num_tokens is set"),  # build.py:440-443
]


@pytest.mark.parametrize("args,rc,text", TRTLLM_BUILD,
                         ids=[" ".join(a) for a, _, _ in TRTLLM_BUILD])
def test_trtllm_build_parses_like_012(trt: dict[str, Path], tmp_path: Path, args: list[str],
                                      rc: int, text: str) -> None:
    p = run([str(trt["trtllm_build"]), "--checkpoint_dir", str(trt["ckpt"]), "--output_dir",
             str(tmp_path / "e"), *args], trt["root"])
    assert p.returncode == rc, p.stdout + p.stderr
    assert text in p.stdout + p.stderr
    assert (tmp_path / "e/rank0.engine").exists() == (rc == 0)


def test_trtllm_build_needs_a_gpu(trt: dict[str, Path], tmp_path: Path) -> None:
    """min(torch.cuda.device_count(), workers) is 0 without a GPU (build.py:410), and a
    pool of no workers fails (build.py:377)."""
    p = run([str(trt["trtllm_build"]), "--checkpoint_dir", str(trt["ckpt"]), "--output_dir",
             str(tmp_path / "e")], trt["root"], FAKE_TRTLLM_GPUS="0")
    assert p.returncode == 1 and "max_workers must be greater than 0" in p.stderr


# ------------------------------------------------------------------ the wheel, with pip

@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("dist")
    return {"wheel": make_wheel(base / "dist", python_tag=PY_TAG, platform=PLATFORM),
            "house": make_wheelhouse(base / "wheelhouse"),
            "examples": make_examples(base / "src"), "base": base}


@pytest.fixture(scope="module")
def installed(dist: dict[str, Path]) -> Path:
    """A venv with the wheel installed by pip, offline, from the wheelhouse only."""
    env = dist["base"] / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    p = run([str(env / "bin/python"), "-m", "pip", "install", "--no-index", "--find-links",
             str(dist["house"]), str(dist["wheel"])], dist["base"], PIP_NO_CACHE_DIR="1")
    assert p.returncode == 0, p.stdout + p.stderr
    return env


@contextlib.contextmanager
def jetpack_tensorrt(env: Path) -> Iterator[None]:
    """The venv sees a `tensorrt` module, as JetPack's python3-libnvinfer provides one."""
    site = run([str(env / "bin/python"), "-c", "import sysconfig; "
                "print(sysconfig.get_path('purelib'))"], env).stdout.strip()
    tensorrt = write_tensorrt(Path(site))
    try:
        yield
    finally:
        shutil.rmtree(tensorrt)


def test_the_wheel_is_named_and_recorded_like_nvidias(dist: dict[str, Path],
                                                      tmp_path: Path) -> None:
    assert make_wheel(tmp_path).name == "tensorrt_llm-0.12.0-cp310-cp310-linux_aarch64.whl"
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = z.namelist()
        info = "tensorrt_llm-0.12.0.dist-info"
        assert "tensorrt_llm/commands/build.py" in names
        assert z.read(f"{info}/entry_points.txt").decode().splitlines()[1] == \
            "trtllm-build = tensorrt_llm.commands.build:main"
        assert f"Tag: {PY_TAG}-{PY_TAG}-{PLATFORM}" in z.read(f"{info}/WHEEL").decode()
        for line in z.read(f"{info}/RECORD").decode().splitlines():
            path, digest, size = line.rsplit(",", 2)
            if path == f"{info}/RECORD":
                continue
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={want.decode()}", len(data))
    assert make_wheel(tmp_path / "again", PY_TAG, PLATFORM).read_bytes() == \
        dist["wheel"].read_bytes()  # reproducible: the same inputs, the same bytes


def test_pip_installs_it_offline_and_trtllm_build_needs_jetpacks_tensorrt(
        installed: Path) -> None:
    """The console script pip writes runs the package, whose import needs `tensorrt`
    (tensorrt_llm/__init__.py:32, functional.py:25): JetPack's, not a pip package."""
    p = run([str(installed / "bin/trtllm-build"), "--help"], installed)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'tensorrt'"
    with jetpack_tensorrt(installed):
        p = run([str(installed / "bin/trtllm-build"), "--help"], installed)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("[TensorRT-LLM] TensorRT-LLM version: 0.12.0\n")
        assert "--gemm_plugin {auto,float16,float32,bfloat16,int32,fp8,disable}" in p.stdout
        p = run([str(installed / "bin/python"), "-c", "import strenum, janus"], installed)
        assert p.returncode == 0, p.stderr  # the dependencies came from the wheelhouse


def test_pip_without_the_wheelhouse_cannot_resolve_the_dependencies(
        dist: dict[str, Path], installed: Path, tmp_path: Path) -> None:
    """Offline, the wheel alone does not install (--target: resolved afresh, ignoring
    what the venv already has)."""
    p = run([str(installed / "bin/python"), "-m", "pip", "install", "--no-index", "--target",
             str(tmp_path / "t"), str(dist["wheel"])], tmp_path, PIP_NO_CACHE_DIR="1")
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == "ERROR: No matching distribution found for StrEnum"


# ------------------------------------------------------------------ the checkout

def test_the_checkout_is_githubs_archive_and_its_examples_need_the_wheel(
        dist: dict[str, Path], installed: Path, tmp_path: Path) -> None:
    assert dist["examples"].name == "TensorRT-LLM-0.12.0-jetson.tar.gz"
    with tarfile.open(dist["examples"]) as tar:
        members = tar.getmembers()
        assert tar.pax_headers["comment"]  # git archive names the commit
    assert {m.name.split("/")[0] for m in members} == {TOP}
    assert {(m.uid, m.gid, m.uname) for m in members} == {(0, 0, "root")}
    checkout = tmp_path / "TensorRT-LLM"
    checkout.mkdir()
    subprocess.run(["tar", "-xzf", str(dist["examples"]), "-C", str(checkout),
                    "--strip-components=1"], check=True)
    for script in ("examples/qwen/convert_checkpoint.py", "examples/quantization/quantize.py",
                   "examples/apps/openai_server.py"):
        p = run([sys.executable, script, "--help"], checkout)
        assert p.returncode == 1, script  # this Python has no tensorrt_llm
        assert p.stderr.strip().endswith("ModuleNotFoundError: No module named 'tensorrt_llm'")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN_05B))
    (model / "model.safetensors").write_bytes(b"\0" * 8)
    with jetpack_tensorrt(installed):
        p = run([str(installed / "bin/python"), "examples/qwen/convert_checkpoint.py",
                 "--model_dir", str(model), "--output_dir", str(tmp_path / "c")], checkout)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[:2] == ["[TensorRT-LLM] TensorRT-LLM version: 0.12.0",
                                         "0.12.0"]
