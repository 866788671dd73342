#!/usr/bin/env python3
# Test fake of TensorRT-LLM 0.12's examples/qwen/convert_checkpoint.py, shipped under its
# real name in the stand-in checkout (tests/fakes/jetson/fake_trtllm_wheel.py
# make_examples) and in install_fake_trtllm's direct install. The v0.12.0-jetson branch is
# not in the stored copies; the source is NVIDIA/TensorRT-LLM main at be9cd719
# (0.12.0.dev2024080600, 2024-08-07; mirror laipaang/TensorRT-LLM), lines of that file:
#   imports      tensorrt_llm (7-13): without the wheel (or without JetPack's tensorrt) the
#                script fails there, before parsing anything
#   banner       the import prints "[TensorRT-LLM] TensorRT-LLM version: 0.12.0", then
#                main prints the bare version (281)
#   options      16-157: names, types, defaults, choices (--weight_only_precision
#                int8|int4|int4_gptq, nargs="?"; --dtype float32|bfloat16|float16;
#                --model_dir required). Not in 0.12: --dataset-cache-dir (removed on main
#                2024-07-23, bca9a33b): argparse refuses it (exit 2)
#   moe sizes    284-293: "moe_tp_size * moe_ep_size must equal to tp_size"
#   output dir   created before the conversion (297-298), so it exists after a failure
#   quantization args_to_quant_config (160-191): W8A16 / W4A16 / SmoothQuant variants /
#                INT8 KV cache / W4A16_GPTQ (group_size, has_zero_point)
#   calibration  --smoothquant or --int8_kv_cache calibrate on --calib_dataset (default
#                ccdv/cnn_dailymail from the Hub, 219-234): offline that is datasets'
#                ConnectionError (datasets/load.py, not read here: "Couldn't reach
#                '<name>' on the Hub (<exception>)")
#   GPTQ         int4_gptq loads the checkpoint's qweight tensors (use_hf_gptq_checkpoint,
#                215-216): a plain checkpoint fails with the KeyError of the missing
#                tensor, and a GPTQ one without int4_gptq with the missing fp16 weight
#                (models/qwen/convert.py, not read)
#   HF checks    config.json / weights / model_type: transformers' and
#                models/qwen/config.py's errors (not read; their usual texts)
#   output       OUTPUT_DIR/config.json and rank<N>.safetensors per tensor/pipeline rank
#                (save_checkpoint, 254), "Total time of converting checkpoints" (305). The
#                rank files are sparse safetensors files holding one uint8 tensor, as
#                large as the real weights would be.
"""Convert a Qwen Hugging Face checkpoint to a TensorRT-LLM checkpoint (test fake)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import tensorrt_llm

QWEN_TYPES = ("qwen", "qwen2", "qwen2_moe", "qwen2_vl")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def parse_arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", type=str, default=None, required=True)
    p.add_argument("--tp_size", type=int, default=1, help="N-way tensor parallelism size")
    p.add_argument("--pp_size", type=int, default=1, help="N-way pipeline parallelism size")
    p.add_argument("--dtype", type=str, default="float16",
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--use_weight_only", default=False, action="store_true",
                   help="Quantize weights for the various GEMMs to INT4/INT8.")
    p.add_argument("--disable_weight_only_quant_plugin", default=False, action="store_true")
    p.add_argument("--weight_only_precision", const="int8", type=str, nargs="?",
                   default="int8", choices=["int8", "int4", "int4_gptq"])
    p.add_argument("--calib_dataset", type=str, default="ccdv/cnn_dailymail")
    p.add_argument("--smoothquant", "-sq", type=float, default=None)
    p.add_argument("--per_channel", action="store_true", default=False)
    p.add_argument("--per_token", action="store_true", default=False)
    p.add_argument("--int8_kv_cache", default=False, action="store_true")
    p.add_argument("--per_group", default=False, action="store_true")
    p.add_argument("--group_size", type=int, default=128,
                   help="Group size used in GPTQ quantization.")
    p.add_argument("--load_model_on_cpu", action="store_true")
    p.add_argument("--use_parallel_embedding", action="store_true", default=False)
    p.add_argument("--embedding_sharding_dim", type=int, default=0, choices=[0, 1])
    p.add_argument("--use_embedding_sharing", action="store_true", default=False)
    p.add_argument("--output_dir", type=str, default="tllm_checkpoint")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--moe_tp_size", type=int, default=-1)
    p.add_argument("--moe_ep_size", type=int, default=-1)
    return p.parse_args()


def fail(exc: str, msg: str, where: str = "transformers/configuration_utils.py") -> None:
    print("Traceback (most recent call last):", file=sys.stderr)
    print(f'  File "{__file__}", line 1, in <module>', file=sys.stderr)
    print(f'  File "/usr/local/lib/python3.10/dist-packages/{where}", in <module>',
          file=sys.stderr)
    print(f"{exc}: {msg}", file=sys.stderr)
    sys.exit(1)


def hf_config(model_dir: str) -> dict:
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        fail("OSError", f"{model_dir} does not appear to have a file named config.json. "
             f"Checkout 'https://huggingface.co/{model_dir}/tree/None' for available files.")
    config = json.loads((d / "config.json").read_text())
    if not any(d.glob("*.safetensors")) and not any(d.glob("pytorch_model*.bin")):
        fail("OSError", f"Error no file named pytorch_model.bin, model.safetensors, "
             f"tf_model.h5, model.ckpt.index or flax_model.msgpack found in directory "
             f"{model_dir}.", "transformers/modeling_utils.py")
    return config


def linear_params(c: dict) -> tuple[int, int]:
    """(parameters in the decoder's GEMMs, parameters elsewhere) of a Qwen2 model."""
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    hd = h // heads
    gemm = layers * (h * (h + 2 * kv * hd) + h * h + 3 * h * inter)
    other = 2 * c["vocab_size"] * h + layers * (2 * h + h + 2 * kv * hd) + h
    return gemm, other


def rank_bytes(c: dict, dtype: str, algo: str | None, group: int, tp: int, pp: int) -> int:
    gemm, other = linear_params(c)
    out_dims = c["num_hidden_layers"] * (3 * c["hidden_size"] + 3 * c["intermediate_size"])
    if algo == "W8A16":
        q = gemm + out_dims * 2
    elif algo == "W4A16":
        q = gemm // 2 + out_dims * 2
    elif algo in ("W4A16_GPTQ", "W4A16_AWQ", "W4A8_AWQ"):
        q = gemm // 2 + (gemm // group) * 4
    elif algo and algo.startswith("W8A8"):
        q = gemm + out_dims * 4
    elif algo == "FP8":
        q = gemm + 1024
    else:
        q = gemm * DTYPE_BYTES[dtype]
    return (q + other * DTYPE_BYTES[dtype]) // (tp * pp)


def write_rank(path: Path, size: int) -> None:
    """A safetensors file of SIZE bytes: one uint8 tensor standing in for the weights."""
    header = b""
    for _ in range(2):  # the header length is part of the data size
        data = max(size - 8 - len(header), 0)
        header = json.dumps({"__metadata__": {"format": "pt"},
                             "transformer.weights_placeholder": {
                                 "dtype": "U8", "shape": [data],
                                 "data_offsets": [0, data]}}).encode()
        header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + max(size - 8 - len(header), 0))


def checkpoint_config(c: dict, args: argparse.Namespace, algo: str | None) -> dict:
    h, heads = c["hidden_size"], c["num_attention_heads"]
    gptq = algo == "W4A16_GPTQ"
    return {
        "architecture": (c.get("architectures") or ["Qwen2ForCausalLM"])[0],
        "dtype": args.dtype, "vocab_size": c["vocab_size"], "hidden_size": h,
        "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": heads,
        "num_key_value_heads": c.get("num_key_value_heads", heads), "head_size": h // heads,
        "hidden_act": c.get("hidden_act", "silu"), "intermediate_size": c["intermediate_size"],
        "norm_epsilon": c.get("rms_norm_eps", 1e-6), "position_embedding_type": "rope_gpt_neox",
        "max_position_embeddings": c.get("max_position_embeddings", 32768),
        "rotary_base": c.get("rope_theta", 1000000.0), "rotary_scaling": None,
        "logits_dtype": "float32", "qwen_type": c.get("model_type", "qwen2"),
        "mlp_bias": False, "attn_bias": True, "tie_word_embeddings": False,
        "use_parallel_embedding": args.use_parallel_embedding,
        "embedding_sharding_dim": args.embedding_sharding_dim,
        "share_embedding_table": args.use_embedding_sharing,
        "disable_weight_only_quant_plugin": args.disable_weight_only_quant_plugin,
        "mapping": {"world_size": args.tp_size * args.pp_size, "gpus_per_node": 8,
                    "tp_size": args.tp_size, "pp_size": args.pp_size,
                    "moe_tp_size": args.moe_tp_size, "moe_ep_size": args.moe_ep_size},
        "quantization": {"quant_algo": algo,
                         "kv_cache_quant_algo": "INT8" if args.int8_kv_cache else None,
                         "group_size": args.group_size, "smoothquant_val": 0.5,
                         "clamp_val": None, "has_zero_point": gptq,
                         "pre_quant_scale": False, "exclude_modules": None},
    }


def quant_algo(args: argparse.Namespace) -> str | None:
    algo = None
    if args.use_weight_only:
        algo = {"int8": "W8A16", "int4": "W4A16"}.get(args.weight_only_precision)
    elif args.smoothquant:
        algo = {(True, True): "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
                (True, False): "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN",
                (False, True): "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
                (False, False): "W8A8_SQ_PER_TENSOR_PLUGIN"}[
                    (args.per_channel, args.per_token)]
    if args.weight_only_precision == "int4_gptq":
        algo = "W4A16_GPTQ"
    return algo


def main() -> int:
    print(tensorrt_llm.__version__)
    args = parse_arguments()
    if args.moe_tp_size == -1 and args.moe_ep_size == -1:
        args.moe_tp_size, args.moe_ep_size = args.tp_size, 1
    elif args.moe_tp_size == -1:
        args.moe_tp_size = args.tp_size // args.moe_ep_size
    elif args.moe_ep_size == -1:
        args.moe_ep_size = args.tp_size // args.moe_tp_size
    if args.moe_tp_size * args.moe_ep_size != args.tp_size:
        fail("AssertionError", "moe_tp_size * moe_ep_size must equal to tp_size")
    tik = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    config = hf_config(args.model_dir)
    qwen_type = config.get("model_type", "")
    if qwen_type not in QWEN_TYPES:
        fail("AssertionError", f"Unsupported Qwen type: {qwen_type}, only {QWEN_TYPES} are "
             "acceptable.", "tensorrt_llm/models/qwen/config.py")
    is_gptq = (config.get("quantization_config") or {}).get("quant_method") == "gptq"
    algo = quant_algo(args)
    if args.smoothquant is not None or args.int8_kv_cache:
        if not Path(args.calib_dataset).is_dir():
            if os.environ.get("HF_DATASETS_OFFLINE") == "1":
                fail("ConnectionError", "Couldn't reach the Hugging Face Hub for dataset "
                     f"'{args.calib_dataset}': Offline mode is enabled.", "datasets/load.py")
            fail("ConnectionError", f"Couldn't reach '{args.calib_dataset}' on the Hub "
                 "(ConnectionError)", "datasets/load.py")
    elif algo == "W4A16_GPTQ" and not is_gptq:
        fail("KeyError", "'model.layers.0.self_attn.q_proj.qweight'",
             "tensorrt_llm/models/qwen/convert.py")
    elif algo != "W4A16_GPTQ" and is_gptq:
        fail("KeyError", "'model.layers.0.self_attn.q_proj.weight'",
             "tensorrt_llm/models/qwen/convert.py")
    size = rank_bytes(config, args.dtype, algo, args.group_size, args.tp_size, args.pp_size)
    for rank in range(args.tp_size * args.pp_size):
        write_rank(Path(args.output_dir) / f"rank{rank}.safetensors", size)
    (Path(args.output_dir) / "config.json").write_text(
        json.dumps(checkpoint_config(config, args, algo), indent=4))
    t = time.strftime("%H:%M:%S", time.gmtime(time.time() - tik))
    print(f"Total time of converting checkpoints: {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
