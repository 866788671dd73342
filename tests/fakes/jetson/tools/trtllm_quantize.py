#!/usr/bin/env python3
# Test fake of TensorRT-LLM 0.12's examples/quantization/quantize.py (NVIDIA Model
# Optimizer), shipped under its real name in the stand-in checkout
# (tests/fakes/jetson/fake_trtllm_wheel.py make_examples) and in install_fake_trtllm's
# direct install. The v0.12.0-jetson branch is not in the stored copies; the source is
# NVIDIA/TensorRT-LLM main at be9cd719 (0.12.0.dev2024080600, 2024-08-07; mirror
# laipaang/TensorRT-LLM): quantize.py and tensorrt_llm/quantization/quantize_by_modelopt.py
# (qbm below), lines of those files:
#   imports      tensorrt_llm.quantization (quantize.py:5-6): without the wheel (or
#                JetPack's tensorrt) it fails there; the import prints the version banner
#   options      quantize.py:11-104 (--qformat fp8|int8_sq|int4_awq|w4a8_awq|int8_wo|
#                int4_wo|full_prec, 53-61; --dtype without choices, default float16, 52;
#                --calib_dataset default cnn_dailymail, 30-36; --kv_cache_dtype int8|fp8)
#   no source    neither --model_dir nor --nemo_ckpt_path: ValueError (146-149)
#   dtype        get_model (qbm:166-175): fp16/float16, bf16/bfloat16, fp32/float32, else
#                NotImplementedError "Unknown dtype X"
#   flow         "Initializing model from" (qbm:167), "Initializing tokenizer from" (134);
#                full_prec/int8_wo/int4_wo without --kv_cache_dtype export unquantized
#                ("No quantization applied, export D model", 395-397); AWQ caps calib_size
#                at 32 (398-405); everything else calibrates (411-417)
#   calibration  get_calib_dataloader (qbm:211-235), "Loading calibration dataset": a
#                name containing "cnn_dailymail" is load_dataset(name, name="3.0.0") and
#                its "article" column, from the Hub unless NAME is a local directory; any
#                other local directory is load_dataset(dir, split="train") and its "text"
#                column; anything else: NotImplementedError "Unsupported dataset name or
#                local repo directory: X.". So int4_awq without --calib_dataset goes to the
#                Hub's cnn_dailymail, which fails offline with datasets' ConnectionError
#                (datasets/load.py dataset_module_factory, 2.14-2.16: "Couldn't reach
#                'cnn_dailymail' on the Hub (ConnectionError)"; with HF_DATASETS_OFFLINE=1
#                "Couldn't reach the Hugging Face Hub for dataset 'cnn_dailymail': Offline
#                mode is enabled."). A column the files lack: datasets' KeyError "Column C
#                not in the dataset. Current columns in the dataset: [...]" (checked on
#                .json/.jsonl files here).
#   HF checks    config.json / weights: transformers' errors (not read; their usual texts)
#   output       a TensorRT-LLM checkpoint, OUTPUT_DIR/config.json and rank<N>.safetensors
#                (sparse, the size the quantized weights would have), then "Quantized
#                model exported to D \nTotal time used T s." (qbm:552-554)
"""Quantize a Hugging Face model to a TensorRT-LLM checkpoint (test fake)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import tensorrt_llm  # noqa: F401  (the real one imports tensorrt_llm.quantization)

QFORMATS = ["fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "full_prec"]
ALGO = {"fp8": "FP8", "int8_sq": "W8A8_SQ_PER_CHANNEL", "int4_awq": "W4A16_AWQ",
        "w4a8_awq": "W4A8_AWQ", "int8_wo": "W8A16", "int4_wo": "W4A16", "full_prec": None}
CALIBRATED = {"fp8", "int8_sq", "int4_awq", "w4a8_awq"}
DATA_SUFFIXES = {".json", ".jsonl", ".parquet", ".arrow", ".csv", ".txt"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_dir", help="Specify where the HuggingFace model is", default=None)
    p.add_argument("--nemo_ckpt_path", help="Specify where the NeMo checkpoint is", default=None)
    p.add_argument("--decoder_type", type=str, default="gptnext", choices=["gptnext", "llama"])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--calib_dataset", type=str, default="cnn_dailymail")
    p.add_argument("--calib_tp_size", type=int, default=1)
    p.add_argument("--calib_pp_size", type=int, default=1)
    p.add_argument("--dtype", help="Model data type.", default="float16")
    p.add_argument("--qformat", help="Quantization format.", default="full_prec",
                   choices=QFORMATS)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--tokenizer_max_seq_length", type=int, default=2048)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--calib_size", type=int, default=512)
    p.add_argument("--calib_max_seq_length", type=int, default=512)
    p.add_argument("--output_dir", default="exported_model")
    p.add_argument("--tp_size", type=int, default=1)
    p.add_argument("--pp_size", type=int, default=1)
    p.add_argument("--awq_block_size", type=int, default=128)
    p.add_argument("--kv_cache_dtype", default=None, choices=["int8", "fp8", None])
    p.add_argument("--num_medusa_heads", type=int, default=4)
    p.add_argument("--num_medusa_layers", type=int, default=1)
    p.add_argument("--max_draft_len", type=int, default=63)
    p.add_argument("--medusa_hidden_act", type=str, default="silu")
    p.add_argument("--medusa_model_dir", type=str, default=None)
    p.add_argument("--quant_medusa_head", default=False, action="store_true")
    return p


def fail(exc: str, msg: str, where: str) -> None:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f'  File "{__file__}", line 1, in <module>', file=sys.stderr)
    print(f'  File "/usr/local/lib/python3.10/dist-packages/{where}", in <module>',
          file=sys.stderr)
    print(f"{exc}: {msg}", file=sys.stderr)
    sys.exit(1)


def rank_bytes(c: dict, dtype_bytes: int, algo: str | None, block: int, ranks: int) -> int:
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    hd = h // heads
    gemm = layers * (h * (h + 2 * kv * hd) + h * h + 3 * h * inter)
    other = 2 * c["vocab_size"] * h + layers * (3 * h + 2 * kv * hd) + h
    out_dims = layers * (3 * h + 3 * inter)
    q = {"W8A16": gemm + out_dims * 2, "W4A16": gemm // 2 + out_dims * 2,
         "W4A16_AWQ": gemm // 2 + (gemm // block) * 2 + layers * 4 * h * 2,
         "W4A8_AWQ": gemm // 2 + (gemm // block) * 2 + layers * 4 * h * 2,
         "W8A8_SQ_PER_CHANNEL": gemm + out_dims * 4, "FP8": gemm + 1024,
         None: gemm * dtype_bytes}[algo]
    return (q + other * dtype_bytes) // ranks


def write_rank(path: Path, size: int) -> None:
    header = b""
    for _ in range(2):
        data = max(size - 8 - len(header), 0)
        header = json.dumps({"__metadata__": {"format": "pt"},
                             "transformer.weights_placeholder": {
                                 "dtype": "U8", "shape": [data],
                                 "data_offsets": [0, data]}}).encode()
        header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + max(size - 8 - len(header), 0))


def first_record(d: Path) -> dict | None:
    for f in sorted(d.rglob("*")):
        if f.suffix in (".json", ".jsonl") and f.is_file():
            line = f.read_text().lstrip().splitlines()[:1]
            if line and line[0].startswith("{"):
                return json.loads(line[0] if f.suffix == ".jsonl" else f.read_text())
    return None


def load_calib(dataset: str) -> None:
    """qbm get_calib_dataloader: where the calibration text comes from, or how it fails."""
    print("Loading calibration dataset")
    d = Path(dataset)
    if "cnn_dailymail" in dataset or dataset == "pileval":
        column = "article" if dataset != "pileval" else "text"
        if not d.is_dir() or dataset == "pileval":
            where = "datasets/load.py"
            if os.environ.get("HF_DATASETS_OFFLINE") == "1":
                fail("ConnectionError", f"Couldn't reach the Hugging Face Hub for dataset "
                     f"'{dataset}': Offline mode is enabled.", where)
            fail("ConnectionError", f"Couldn't reach '{dataset}' on the Hub (ConnectionError)",
                 where)
    elif d.is_dir():
        column = "text"
        print(f"Recognized local dataset repo {dataset} for calibration; assuming the "
              "calibration data are in the train split and text column.")
    else:
        fail("NotImplementedError", "Unsupported dataset name or local repo directory: "
             f"{dataset}.", "tensorrt_llm/quantization/quantize_by_modelopt.py")
    if not any(p.suffix in DATA_SUFFIXES for p in d.rglob("*") if p.is_file()):
        fail("FileNotFoundError", f"Unable to find '{dataset}' data files: no data files "
             "were found", "datasets/data_files.py")
    record = first_record(d)
    if record is not None and column not in record:
        fail("KeyError", f'"Column {column} not in the dataset. Current columns in the '
             f'dataset: {list(record)}"', "datasets/arrow_dataset.py")


def main() -> int:
    args = parser().parse_args()
    if args.model_dir is None:
        if args.nemo_ckpt_path is None:
            fail("ValueError", "One of source checkpoint (model_dir, nemo_ckpt_path) must be "
                 "specified", "examples/quantization/quantize.py")
        fail("NotImplementedError", "NeMo checkpoints are not available in this test install",
             "tensorrt_llm/quantization/quantize_by_modelopt.py")
    tik = time.time()
    d = Path(args.model_dir)
    if not (d / "config.json").is_file():
        fail("OSError", f"{args.model_dir} does not appear to have a file named config.json. "
             f"Checkout 'https://huggingface.co/{args.model_dir}/tree/None' for available "
             "files.", "transformers/configuration_utils.py")
    if not any(d.glob("*.safetensors")) and not any(d.glob("pytorch_model*.bin")):
        fail("OSError", "Error no file named pytorch_model.bin, model.safetensors, tf_model.h5,"
             f" model.ckpt.index or flax_model.msgpack found in directory {args.model_dir}.",
             "transformers/modeling_utils.py")
    config = json.loads((d / "config.json").read_text())
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype,
                                                                          args.dtype)
    if dtype not in ("bfloat16", "float16", "float32"):
        fail("NotImplementedError", f"Unknown dtype {args.dtype}",
             "tensorrt_llm/quantization/quantize_by_modelopt.py")
    print(f"Initializing model from {args.model_dir}")
    print(f"Initializing tokenizer from {args.model_dir}")
    if args.qformat in CALIBRATED or args.kv_cache_dtype:
        if "awq" in args.qformat and args.calib_size > 32:
            print(f"AWQ calibration could take longer with calib_size = {args.calib_size}, "
                  "Using calib_size=32 instead")
        load_calib(args.calib_dataset)
        print("Starting quantization...")
        print(f"Quantization done. Total time used: {time.time() - tik:.2f} s.")
    else:
        print(f"No quantization applied, export {dtype} model")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    algo = ALGO[args.qformat]
    ranks = args.tp_size * args.pp_size
    h, heads = config["hidden_size"], config["num_attention_heads"]
    ckpt = {
        "producer": {"name": "modelopt", "version": "0.15.0"},
        "architecture": (config.get("architectures") or ["Qwen2ForCausalLM"])[0],
        "dtype": dtype, "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": config.get("num_key_value_heads", heads),
        "hidden_size": h, "norm_epsilon": config.get("rms_norm_eps", 1e-6),
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config.get("max_position_embeddings", 32768),
        "hidden_act": config.get("hidden_act", "silu"), "use_parallel_embedding": True,
        "embedding_sharding_dim": 0, "head_size": h // heads,
        "intermediate_size": config["intermediate_size"],
        "position_embedding_type": "rope_gpt_neox", "qwen_type": config.get("model_type"),
        "rotary_base": config.get("rope_theta", 1000000.0),
        "quantization": {"quant_algo": algo,
                         "kv_cache_quant_algo": {"int8": "INT8", "fp8": "FP8"}.get(
                             args.kv_cache_dtype or ""),
                         "group_size": args.awq_block_size, "has_zero_point": False,
                         "pre_quant_scale": algo in ("W4A16_AWQ", "W4A8_AWQ"),
                         "exclude_modules": ["lm_head"]},
        "mapping": {"world_size": ranks, "tp_size": args.tp_size, "pp_size": args.pp_size},
    }
    (out / "config.json").write_text(json.dumps(ckpt, indent=4))
    size = rank_bytes(config, 4 if dtype == "float32" else 2, algo, args.awq_block_size, ranks)
    for rank in range(ranks):
        write_rank(out / f"rank{rank}.safetensors", size)
    print(f"Quantized model exported to {args.output_dir} \n"
          f"Total time used {time.time() - tik:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
