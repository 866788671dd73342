"""The build host's part of Edge-LLM: a checkpoint exported to the ONNX directory a
release carries, with Edge-LLM's own Python tools (TensorRT-Edge-LLM 0.9.1).

- The tools: the `tensorrt-edgellm` package of the pinned source release
  (engine.tensorrt_edge_llm.source, sha256-checked), pip-installed with its `tools`
  extra (ModelOpt, datasets: what quantization needs) into a venv of the artifact cache,
  keyed by the archive's sha256 and the host's Python.
- The steps (export_steps): `tensorrt-edgellm-quantize llm` where the profile asks for
  a precision the checkpoint is not in (int4_awq, int8_sq from fp16; it calibrates on a
  CUDA GPU: scripts/quantize.py:93 `--device cuda`, ModelOpt), then
  `tensorrt-edgellm-export`, which runs on the CPU (scripts/export.py:866-868
  `device="cpu"`). A pre-quantized checkpoint (Qwen's -AWQ, -GPTQ-Int4) skips the
  quantization: Edge-LLM loads it as it is (docs/.../features/quantization.md:153).
- The product: `<out>/llm/` (model.onnx and its data, the runtime config.json,
  embedding.safetensors, the tokenizer and processed_chat_template.json), cached by
  every input, or an ONNX directory exported elsewhere (`--model-file`), checked like
  the device checks it before llm_build.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ...cache import pinned_sha256, sha256_file
from ...errors import BuilderError, display_path
from ...run import ToolError, run

if TYPE_CHECKING:
    from ...cache import Cache
    from ...model.pipeline import Fetched, ModelArtifact
    from ...schema import Profile
    from . import TensorRtEdgeLlm

WHERE = "engine.tensorrt_edge_llm"
# where tensorrt-edgellm-quantize reads its calibration text instead of the Hub's
# cnn_dailymail (tensorrt_edgellm/quantization/datasets/__init__.py:167-180, 0.9.1)
DATASET_ENV = "EDGELLM_QUANT_DATASET_CNN_DAILYMAIL"


def checkpoint_method(model_dir: Path) -> str | None:
    """How a Hugging Face checkpoint is quantized (its quantization_config.quant_method:
    "awq", "gptq"), None for an unquantized one."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    q = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    method = q.get("quant_method") if isinstance(q, dict) else None
    return str(method).lower() if method else None


def needs_quantize(quant: str, method: str | None, origin: str) -> bool:
    """Whether the checkpoint must go through tensorrt-edgellm-quantize for `quant`;
    raises where no tool makes it from this checkpoint."""
    from . import NEEDS_GPU, PREQUANTIZED

    if method is None:
        if quant == "int4_gptq":
            raise BuilderError(f"{origin}: model.quant int4_gptq takes a GPTQ-Int4 checkpoint "
                               "(model.source.hf_repo: Qwen/<model>-GPTQ-Int4); Edge-LLM "
                               "loads GPTQ models, it does not make them")
        return quant in NEEDS_GPU
    if PREQUANTIZED.get(quant) == method:
        return False
    raise BuilderError(f"{origin}: the checkpoint is {method}-quantized, model.quant is "
                       f"{quant}; give an unquantized checkpoint or set model.quant to match")


def export_steps(p: Profile, quantize: bool | None) -> list[list[str]]:
    """The host commands (MODEL, QUANTIZED and ONNX stand for their directories).
    quantize None: as the profile's quantization implies for an fp16 checkpoint."""
    from . import NEEDS_GPU

    t = p.engine.tensorrt_edge_llm
    quant = p.model.quant
    if quantize is None:
        quantize = quant in NEEDS_GPU
    steps = []
    if quantize:
        steps.append(["tensorrt-edgellm-quantize", "llm", "--model_dir", "MODEL",
                      "--output_dir", "QUANTIZED", "--quantization", quant,
                      "--dtype", "fp16", "--device", "cuda"])
    steps.append(["tensorrt-edgellm-export", "QUANTIZED" if quantize else "MODEL", "ONNX",
                  *(["--externalize-weights", *t.externalize_weights]
                    if t.externalize_weights else [])])
    return steps


def tools(p: Profile, cache: Cache, base_dir: Path | None) -> tuple[Path, str]:
    """The bin/ directory of a venv with the pinned release's tensorrt-edgellm package,
    and the sha256 of the source archive it came from."""
    t = p.engine.tensorrt_edge_llm
    if not t.source.path:
        raise BuilderError(f"{WHERE}.source.path: name GitHub's archive of TensorRT "
                           f"Edge-LLM {t.version} (and its sha256) to export the model "
                           "here, or pass the exported ONNX directory with --model-file")
    src = Path(t.source.path).expanduser()
    if not src.is_absolute() and base_dir is not None:
        src = base_dir / src
    sha = pinned_sha256(src, t.source.sha256, f"{WHERE}.source")

    def make(out: Path, log_file: Path) -> None:
        venv = out / "venv"
        run([sys.executable, "-m", "venv", venv], what="creating the Edge-LLM tools' venv",
            log_file=log_file)
        run([venv / "bin/python", "-m", "pip", "install", "--disable-pip-version-check",
             f"tensorrt-edgellm[tools] @ {src.resolve().as_uri()}"],
            what=f"installing tensorrt-edgellm {t.version} ({src.name})", log_file=log_file)

    entry = cache.get_or_build("edgellm-tools", {"source": sha, "version": t.version,
                                                 "python": sys.version.split()[0]},
                               make, label=f"Edge-LLM {t.version} host tools")
    return entry.out / "venv/bin", sha


def _digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (a calibration set)."""
    from ...model.pipeline import tree_digest

    if path.is_file():
        return sha256_file(path)
    return tree_digest({str(f.relative_to(path)): sha256_file(f)
                        for f in sorted(path.rglob("*")) if f.is_file()})


def onnx_model(engine: TensorRtEdgeLlm, p: Profile, fetched: Fetched, cache: Cache, *,
               source_base: Path | None = None) -> ModelArtifact:
    from ...device.edgellm import onnx_problems
    from ...model.pipeline import ModelArtifact, tree_digest

    quant = p.model.quant
    if fetched.kind == "onnx":
        problems = onnx_problems(fetched.path)
        if problems:
            raise BuilderError(f"{fetched.origin}: {problems[0].split(': ', 1)[-1]}")
        cfg = json.loads((fetched.path / "config.json").read_text())
        # the release carries only the files the fetch hashed (pipeline.ONNX_PATTERNS)
        outside = [e["file"] for e in cfg.get("external_weight_files", [])
                   if e["file"] not in fetched.files]
        if outside:
            raise BuilderError(f"{fetched.origin}: external weight file {outside[0]} is not "
                               "a .safetensors or .onnx.data file the release carries")
        version = p.engine.tensorrt_edge_llm.version
        if cfg.get("edgellm_version") != version:
            raise BuilderError(f"{fetched.origin}: exported by Edge-LLM "
                               f"{cfg.get('edgellm_version') or 'of an unknown version'} "
                               f"(config.json edgellm_version), the profile runs {version}; "
                               "export it with that release's tensorrt-edgellm-export")
        return ModelArtifact(fetched.path, tree_digest(fetched.files), quant, "onnx",
                             files=fetched.files)
    if fetched.kind != "hf":
        raise BuilderError(f"{fetched.origin}: TensorRT Edge-LLM exports a Hugging Face "
                           "checkpoint directory (or takes an ONNX directory exported by "
                           "tensorrt-edgellm-export), not a GGUF file")
    quantize = needs_quantize(quant, checkpoint_method(fetched.path), fetched.origin)
    steps = export_steps(p, quantize)
    t = p.engine.tensorrt_edge_llm
    calibration = None
    if quantize and not t.calibration:
        raise BuilderError(
            f"{WHERE}.calibration: model.quant {quant} from an unquantized checkpoint is "
            "calibrated by tensorrt-edgellm-quantize on text, which the build takes from "
            "nowhere but a local set: name a JSON/JSONL file of {\"article\": text} rows "
            "(or a datasets directory), or use Qwen's pre-quantized -AWQ checkpoint "
            "(model.source.hf_repo), which needs none")
    if quantize:
        calibration = Path(t.calibration).expanduser()
        if not calibration.is_absolute() and source_base is not None:
            calibration = source_base / calibration
        if not calibration.exists():
            raise BuilderError(f"{WHERE}.calibration: {display_path(calibration)} does not "
                               "exist")
    bin_dir, tools_sha = tools(p, cache, source_base)

    def make(out: Path, log_file: Path) -> None:
        places = {"MODEL": str(fetched.path), "QUANTIZED": str(out / "quantized"),
                  "ONNX": str(out / "onnx")}
        env = {DATASET_ENV: str(calibration)} if calibration else {}
        env["HF_HUB_OFFLINE"] = "1"  # the checkpoint is local; nothing comes from the Hub
        for argv in steps:
            # the console script run by the venv's Python: its #! names the directory
            # the venv was made in, which the cache renamed
            cmd = [str(bin_dir / "python"), str(bin_dir / argv[0]),
                   *(places.get(a, a) for a in argv[1:])]
            try:
                run(cmd, what=argv[0], env=env, log_file=log_file)
            except ToolError as e:
                if argv[0] != "tensorrt-edgellm-quantize":
                    raise
                elsewhere = "; ".join(shlex.join(s) for s in export_steps(p, True))
                raise BuilderError(
                    f"model.quant {quant}: tensorrt-edgellm-quantize failed ({e}); it "
                    "calibrates on a CUDA GPU: on a machine with one run "
                    f"`{elsewhere}` (MODEL: the checkpoint) and pass ONNX/llm with "
                    "--model-file") from None
        if not (out / "onnx/llm/model.onnx").is_file():
            raise BuilderError(f"tensorrt-edgellm-export wrote no llm/model.onnx; see "
                               f"{display_path(log_file)}")
        problems = onnx_problems(out / "onnx/llm")
        if problems:
            raise BuilderError(f"tensorrt-edgellm-export: {problems[0]}")
        shutil.rmtree(out / "quantized", ignore_errors=True)

    key = {"model": fetched.files, "quant": quant, "steps": steps, "version": t.version,
           "tools": tools_sha, "calibration": _digest(calibration) if calibration else None}
    entry = cache.get_or_build("edgellm-onnx", key, make,
                               label=f"Edge-LLM ONNX export ({quant})")
    llm = entry.out / "onnx/llm"
    files = {str(f.relative_to(llm)): sha256_file(f)
             for f in sorted(llm.rglob("*")) if f.is_file()}
    return ModelArtifact(llm, tree_digest(files), quant, "onnx", files=files)
