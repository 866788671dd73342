#!/usr/bin/env python3
# Test fake of TensorRT-LLM v0.12.0-jetson examples/quantization/quantize.py (NVIDIA
# Model Optimizer), installed by tests/fakes/jetson/fake_trtllm.py under its real name.
# The 0.12 argparse options and --qformat choices; the Hugging Face directory checks; a
# quantization that calibrates (fp8, int8_sq, int4_awq, w4a8_awq, or any --kv_cache_dtype)
# loads --calib_dataset, and unless that is a local directory with data it fails the way
# it does offline (datasets cannot reach the Hub for cnn_dailymail). It writes a
# TensorRT-LLM checkpoint: OUTPUT_DIR/config.json and rank<N>.safetensors (sparse, with
# the size the quantized weights would have).
"""Quantize a Hugging Face model to a TensorRT-LLM checkpoint (test fake)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

VERSION = "0.12.0"
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
    p.add_argument("--dtype", type=str, default="auto",
                   choices=["auto", "float16", "bfloat16", "float32"])
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


def load_calib(dataset: str) -> None:
    print("Loading calibration dataset")
    d = Path(dataset)
    if d.is_dir():
        if any(p.suffix in DATA_SUFFIXES for p in d.rglob("*") if p.is_file()):
            return
        fail("FileNotFoundError", f"Unable to find '{dataset}' data files: no data files "
             "were found", "datasets/data_files.py")
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        fail("ConnectionError", f"Couldn't reach the Hugging Face Hub for dataset '{dataset}':"
             " Offline mode is enabled.", "datasets/load.py")
    fail("ConnectionError", f"Couldn't reach '{dataset}' on the Hub (ConnectionError)",
         "datasets/load.py")


def main() -> int:
    print(f"[TensorRT-LLM] TensorRT-LLM version: {VERSION}")
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
    dtype = args.dtype
    if dtype == "auto":
        dtype = {"bfloat16": "bfloat16"}.get(config.get("torch_dtype", ""), "float16")
    print(f"Initializing model from {args.model_dir}")
    if args.qformat in CALIBRATED or args.kv_cache_dtype:
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
