# Test fake of TensorRT Edge-LLM 0.9.1's `tensorrt-edgellm-quantize`
# (tensorrt_edgellm.scripts.quantize:main, pyproject.toml:54-60), shipped as
# tensorrt_edgellm/scripts/quantize.py in the fake source tarball. Stdlib only. Source:
# TensorRT-Edge-LLM 0.9.1 (7f061f2); lines of tensorrt_edgellm/scripts/quantize.py unless
# named; quantization/quantize.py (qz), quantization/datasets/__init__.py and builtin.py (ds):
#   options      the subcommands and options of 48-165: llm (--model_dir, required),
#                draft, qwen3-omni; --quantization {fp8,int4_awq,nvfp4,mxfp8,int8_sq},
#                --lm_head_quantization {fp8,int4_awq,nvfp4,mxfp8}, --dtype fp16 only,
#                --device (default cuda), the dataset names (defaults ds:53-55)
#   load         _load_model (qz:187-273): the tokenizer, the model (transformers'
#                OSError texts, UNVERIFIED for transformers 5.9), then .to(device): without
#                an NVIDIA driver torch raises "Found no NVIDIA driver on your system..."
#                (c10/cuda/CUDAFunctions.cpp, stored copy), a missing ordinal "CUDA error:
#                invalid device ordinal". The fake host has no GPU unless FAKE_EDGELLM_GPUS
#                >= 1 (default 0, unlike the device fakes: a build host usually has none).
#                --device cpu is accepted (UNVERIFIED that ModelOpt calibrates every method
#                on a CPU)
#   already      a checkpoint with a quantization config: "Model already quantized —
#                skipping." (qz:686-687), exported as it is
#   calibration  qz:800-812 and ds: the text dataset by name (unknown: the
#                UnknownCalibrationDataset message), EDGELLM_QUANT_DATASET_<NAME> for a local
#                JSON/JSONL file or directory (ds:167-239), else the Hub: the fake is
#                offline, so datasets' ConnectionError (text UNVERIFIED for datasets 4.8.5)
#   output       a unified HF checkpoint (ModelOpt export_hf_checkpoint, qz:834-845): config.json
#                with "quantization_config" as ModelOpt converts hf_quant_config
#                (NVIDIA/Model-Optimizer modelopt/torch/export/convert_hf_config.py, stored
#                copy 0030d2b3), hf_quant_config.json (producer modelopt 0.44.0, the pin of
#                pyproject.toml:35-46), model.safetensors with the quantized tensor layout the
#                export's loader reads (weight + weight_scale, ..., config.py:1601-1661),
#                tokenizer files; "Saved to DIR (total Ts)" (qz:873)
# NOT provided (exit 2, one line): draft, qwen3-omni, --visual/--audio/--cp_quantization.
# The real one needs torch, transformers, nvidia-modelopt, datasets; this one nothing.
"""tensorrt-edgellm-quantize: quantize a checkpoint with ModelOpt (test fake)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tensorrt_edgellm import _fake_checkpoint as ck

DEFAULT_TEXT_DATASET, DEFAULT_IMAGE_DATASET, DEFAULT_AUDIO_DATASET = \
    "cnn_dailymail", "mmmu", "librispeech"
# ds builtin.py:24-80: name -> (Hub id, text column); image/audio names for the help only
TEXT_DATASETS = {"cnn_dailymail": ("cnn_dailymail", "article"),
                 "wikitext": ("Salesforce/wikitext", "text")}
AVAILABLE = {"text": sorted(TEXT_DATASETS), "image": ["mmmu"], "audio": ["librispeech"]}
# ModelOpt's quant_algo for each method (quantization_configs.py; convert_hf_config.py)
ALGO = {"fp8": "FP8", "int4_awq": "W4A16_AWQ", "nvfp4": "NVFP4", "mxfp8": "MXFP8",
        "int8_sq": "W8A8_SQ_PER_CHANNEL"}
MODELOPT = {"name": "modelopt", "version": "0.44.0"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json",
                   "chat_template.jinja", "preprocessor_config.json", "processor_config.json")
NO_DRIVER = ("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU "
             "and installed a driver from http://www.nvidia.com/Download/index.aspx")


class Uncaught(Exception):
    def __init__(self, exc: str, msg: str, where: str) -> None:
        super().__init__(f"{exc}: {msg}")
        self.where = where


def _add_common_args(parser: argparse.ArgumentParser) -> None:
    """quantize.py:48-116."""
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quantization", default=None,
                        choices=["fp8", "int4_awq", "nvfp4", "mxfp8", "int8_sq"],
                        help="Backbone quantization method.")
    parser.add_argument("--lm_head_quantization", default=None,
                        choices=["fp8", "int4_awq", "nvfp4", "mxfp8"],
                        help="LM-head quantization method.")
    for name in ("visual", "audio", "cp"):
        parser.add_argument(f"--{name}_quantization", default=None, choices=["fp8"])
    parser.add_argument("--kv_cache_quantization", default=None, choices=["fp8"])
    parser.add_argument("--dtype", default="fp16", choices=["fp16"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--text_dataset", default=DEFAULT_TEXT_DATASET,
                        help=f"Registered text calibration dataset name. Default: "
                        f"{DEFAULT_TEXT_DATASET}. Available: {', '.join(AVAILABLE['text'])}.")
    parser.add_argument("--image_dataset", default=DEFAULT_IMAGE_DATASET,
                        help=f"Default: {DEFAULT_IMAGE_DATASET}. Available: "
                        f"{', '.join(AVAILABLE['image'])}.")
    parser.add_argument("--audio_dataset", default=DEFAULT_AUDIO_DATASET,
                        help=f"Default: {DEFAULT_AUDIO_DATASET}. Available: "
                        f"{', '.join(AVAILABLE['audio'])}.")
    parser.add_argument("--num_samples", type=int, default=512)


def build_parser() -> argparse.ArgumentParser:
    """quantize.py:119-165."""
    parser = argparse.ArgumentParser(description="TensorRT Edge-LLM standalone quantization")
    sub = parser.add_subparsers(dest="command", required=True)
    llm = sub.add_parser("llm", help="Quantize an LLM")
    llm.add_argument("--model_dir", required=True)
    _add_common_args(llm)
    draft = sub.add_parser("draft", help="Quantize an Eagle3 or DFlash draft model")
    draft.add_argument("--base_model_dir", required=True)
    draft.add_argument("--draft_model_dir", required=True)
    _add_common_args(draft)
    omni = sub.add_parser("qwen3-omni", help="Qwen3-Omni-MoE joint Thinker+Talker NVFP4 "
                          "quantization")
    omni.add_argument("--model_dir", required=True)
    omni.add_argument("--output_dir", required=True)
    omni.add_argument("--lm_head_quantization", default=None, choices=["fp8", "nvfp4"])
    omni.add_argument("--kv_cache_quantization", default=None, choices=["fp8"])
    omni.add_argument("--dtype", default="fp16", choices=["fp16"])
    omni.add_argument("--device", default="cuda")
    omni.add_argument("--dataset", default="cnn_dailymail")
    omni.add_argument("--num_samples", type=int, default=64)
    omni.add_argument("--max_length", type=int, default=64)
    omni.add_argument("--talker_num_audio", type=int, default=150)
    omni.add_argument("--talker_num_image", type=int, default=150)
    omni.add_argument("--talker_num_text", type=int, default=200)
    omni.add_argument("--talker_accept_hidden_layer", type=int, default=None,
                      help="Override talker_config.accept_hidden_layer.")
    omni.add_argument("--keep_full_export", action="store_true",
                      help="Keep the intermediate full-model export directory.")
    return parser


# ------------------------------------------------------------------ steps

def load_model(model: str, device: str) -> Path:
    """_load_model (qz:187-273) as far as a host without torch's work goes."""
    tf = "transformers/utils/hub.py"
    if os.path.isdir(model):
        model_dir = Path(model)
    else:
        try:
            model_dir = ck.snapshot(model)
        except ck.HubError as e:
            if "HFValidationError" in str(e):
                raise Uncaught("OSError", f"Incorrect path_or_model_id: '{model}'. Please provide "
                               "either the path to a local folder or the repo_id of a model on "
                               "the Hub.", tf) from None
            raise Uncaught("OSError", "We couldn't connect to 'https://huggingface.co' to load "
                           "the files, and couldn't find them in the cached files.\nCheck your "
                           "internet connection or see how to run the library in offline mode at "
                           "'https://huggingface.co/docs/transformers/installation#offline-mode'.",
                           tf) from None
    if not any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                   "tokenizer.model", "vocab.json")):
        raise Uncaught("OSError", f"Can't load tokenizer for '{model}'. If you were trying to "
                       "load it from 'https://huggingface.co/models', make sure you don't have a "
                       f"local directory with the same name. Otherwise, make sure '{model}' is "
                       "the correct path to a directory containing all relevant files for a "
                       "tokenizer.", "transformers/tokenization_utils_base.py")
    if not (model_dir / "config.json").exists():
        raise Uncaught("OSError", f"{model} does not appear to have a file named config.json. "
                       f"Checkout 'https://huggingface.co/{model}/tree/None' for available files.",
                       "transformers/configuration_utils.py")
    try:
        ck.weight_files(model_dir)
    except FileNotFoundError:
        raise Uncaught("OSError", f"Error no file named model.safetensors, or pytorch_model.bin, "
                       f"found in directory {model}.", "transformers/modeling_utils.py") from None
    gpus = int(os.environ.get("FAKE_EDGELLM_GPUS", "0"))
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if gpus < 1:
            raise Uncaught("RuntimeError", NO_DRIVER, "torch/cuda/__init__.py")
        if index >= gpus:
            raise Uncaught("RuntimeError", "CUDA error: invalid device ordinal\nCUDA kernel "
                           "errors might be asynchronously reported at some other API call, so "
                           "the stacktrace below might be incorrect.\nFor debugging consider "
                           "passing CUDA_LAUNCH_BLOCKING=1", "torch/nn/modules/module.py")
    elif device != "cpu":
        raise Uncaught("RuntimeError", "Expected one of cpu, cuda, ipu, xpu, mkldnn, opengl, "
                       "opencl, ideep, hip, ve, fpga, maia, xla, lazy, vulkan, mps, meta, hpu, "
                       f"mtia, privateuseone device type at start of device string: {device}",
                       "torch/nn/modules/module.py")
    return model_dir


def calibration_texts(name: str, num_samples: int) -> int:
    """resolve_dataset + load_hf_split (ds:122-239): how many documents the local copy has."""
    if name not in TEXT_DATASETS:
        raise Uncaught("tensorrt_edgellm.quantization.datasets.UnknownCalibrationDataset",
                       f"Unknown text calibration dataset {name!r}. Registered text datasets: "
                       f"{', '.join(AVAILABLE['text'])}. To calibrate on a custom dataset, write "
                       "a text generator and register it with @register('text', ...). See the "
                       "customization guide (docs/source/developer_guide/customization/"
                       "calibration-datasets.md) and copy the template at tensorrt_edgellm/"
                       "quantization/datasets/custom_dataset_template.py.",
                       "tensorrt_edgellm/quantization/datasets/__init__.py")
    print(f"Text calibration dataset: {name}")
    hub_id, column = TEXT_DATASETS[name]
    local = os.environ.get("EDGELLM_QUANT_DATASET_" + name.upper().replace("-", "_")
                           .replace("/", "_")) or None
    if local is None:
        raise Uncaught("ConnectionError", f"Couldn't reach '{hub_id}' on the Hub "
                       "(LocalEntryNotFoundError)", "datasets/load.py")
    path = Path(local)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")
                       and p.name not in ("dataset_dict.json", "state.json", "dataset_info.json"))
    elif path.is_file():
        files = [path]
    else:
        raise Uncaught("FileNotFoundError", f"Local dataset override {local!r} is neither a file "
                       "nor a directory.", "tensorrt_edgellm/quantization/datasets/__init__.py")
    rows = []
    for f in files:
        text = f.read_text()
        if f.suffix == ".jsonl":
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            rows += data if isinstance(data, list) else [data]
    docs = [r[column] for r in rows if isinstance(r, dict) and r.get(column)]
    if not docs:
        raise Uncaught("ValueError", f"fake: the calibration dataset {local!r} has no "
                       f"{column!r} text", "tensorrt_edgellm/quantization/quantize.py")
    return min(len(docs), num_samples)


def quantized_tensors(weights: dict, algo: str | None, lm_head_algo: str | None) -> dict:
    """The tensors ModelOpt's unified checkpoint holds for ALGO (fake layout: the names the
    export's loader looks for, config.py:1601-1661)."""
    out = {}
    for name, spec in weights.items():
        shape = spec["shape"]
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        linear = module and len(shape) == 2 and (module.endswith("_proj") or module == "lm_head")
        use = lm_head_algo if module == "lm_head" else algo
        if not linear or use is None:
            out[name] = ("F16" if spec["dtype"] in ("BF16", "F32") else spec["dtype"], shape)
            continue
        rows, cols = shape
        if use == "FP8":
            out |= {name: ("F8_E4M3", shape), f"{module}.weight_scale": ("F32", []),
                    f"{module}.input_scale": ("F32", [])}
        elif use == "W4A16_AWQ":
            out |= {name: ("U8", [rows, cols // 2]),
                    f"{module}.weight_scale": ("F16", [rows, max(cols // 128, 1)]),
                    f"{module}.pre_quant_scale": ("F16", [cols])}
        elif use == "NVFP4":
            out |= {name: ("U8", [rows, cols // 2]),
                    f"{module}.weight_scale": ("F8_E4M3", [rows, max(cols // 16, 1)]),
                    f"{module}.weight_scale_2": ("F32", []), f"{module}.input_scale": ("F32", [])}
        elif use == "MXFP8":
            out |= {name: ("F8_E4M3", shape),
                    f"{module}.weight_scale": ("U8", [rows, max(cols // 32, 1)])}
        else:  # W8A8_SQ_PER_CHANNEL
            out |= {name: ("I8", shape), f"{module}.weight_scale": ("F16", [rows]),
                    f"{module}.input_scale": ("F16", []),
                    f"{module}.pre_quant_scale": ("F16", [cols])}
    return out


def convert_hf_quant_config(hq: dict) -> dict:
    """ModelOpt convert_hf_quant_config_format (convert_hf_config.py, stored copy)."""
    q = hq["quantization"]
    algo, out = q.get("quant_algo"), {}
    groups = {"FP8": {"input_activations": {"dynamic": False, "num_bits": 8, "type": "float"},
                      "weights": {"dynamic": False, "num_bits": 8, "type": "float"},
                      "targets": ["Linear"]},
              "NVFP4": {"input_activations": {"dynamic": False, "num_bits": 4, "type": "float",
                                              "group_size": q.get("group_size", 16)},
                        "weights": {"dynamic": False, "num_bits": 4, "type": "float",
                                    "group_size": q.get("group_size", 16)},
                        "targets": ["Linear"]}}
    if algo in groups:
        out["config_groups"] = {"group_0": groups[algo]}
    out["ignore"] = q.get("exclude_modules") or []
    if algo:
        out["quant_algo"] = algo
    if q.get("kv_cache_quant_algo") == "FP8":
        out["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
    out["producer"] = hq["producer"]
    out["quant_method"] = "modelopt"
    return out


def quantize_and_export(args: argparse.Namespace) -> None:
    """quantize_and_export (qz:618-874), text LLMs."""
    t0 = time.time()
    model_dir = load_model(args.model_dir, args.device)
    config = json.loads((model_dir / "config.json").read_text())
    weights = ck.tensors(model_dir)
    already = "quantization_config" in config or (model_dir / "hf_quant_config.json").exists()
    out = Path(args.output_dir)
    hq = None
    if already:
        print("Model already quantized — skipping.")
        tensors = {k: (v["dtype"], v["shape"]) for k, v in weights.items()}
    else:
        n = calibration_texts(args.text_dataset, args.num_samples)
        algo, lm_algo = ALGO.get(args.quantization or ""), ALGO.get(args.lm_head_quantization or "")
        tensors = quantized_tensors(weights, algo, lm_algo)
        if algo or args.kv_cache_quantization:
            q = {"quant_algo": algo, "kv_cache_quant_algo":
                 "FP8" if args.kv_cache_quantization == "fp8" else None}
            if algo == "W4A16_AWQ":
                q |= {"group_size": 128, "has_zero_point": False, "pre_quant_scale": True}
            elif algo in ("NVFP4", "MXFP8"):
                q["group_size"] = 16 if algo == "NVFP4" else 32
            q["exclude_modules"] = [] if lm_algo else ["lm_head"]
            hq = {"producer": MODELOPT, "quantization": q}
        print(f"Calibrated on {n} sample(s).")
    print(f"Quantization: {time.time() - t0:.1f}s")
    out.mkdir(parents=True, exist_ok=True)
    digest, _ = ck.checkpoint_sha256(model_dir)
    new_config = dict(config)
    if hq is not None:
        new_config["quantization_config"] = convert_hf_quant_config(hq)
        (out / "hf_quant_config.json").write_text(json.dumps(hq, indent=4))
    elif already and (model_dir / "hf_quant_config.json").exists():
        shutil.copy2(model_dir / "hf_quant_config.json", out / "hf_quant_config.json")
    (out / "config.json").write_text(json.dumps(new_config, indent=2))
    ck.write_safetensors(out / "model.safetensors", tensors,
                         {"format": "pt", "fake_source_checkpoint_sha256": digest})
    for fname in TOKENIZER_FILES:
        if (model_dir / fname).exists():
            shutil.copy2(model_dir / fname, out / fname)
    print(f"Saved to {out} (total {time.time() - t0:.1f}s)")


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.command != "llm":
        print(f"fake: `tensorrt-edgellm-quantize {args.command}` is not provided by this "
              "stand-in", file=sys.stderr)
        sys.exit(2)
    for name in ("visual", "audio", "cp"):
        if getattr(args, f"{name}_quantization"):
            print(f"fake: --{name}_quantization is not provided by this stand-in",
                  file=sys.stderr)
            sys.exit(2)
    try:
        quantize_and_export(args)
    except Uncaught as e:
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f'  File "{__file__}", in main\n    quantize_and_export(', file=sys.stderr)
        print(f'  File ".../{e.where}", in <module>', file=sys.stderr)
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
