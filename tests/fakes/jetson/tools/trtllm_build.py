#!/usr/bin/env python3
# Test fake of TensorRT-LLM v0.12.0-jetson's trtllm-build console script
# (tensorrt_llm/commands/build.py), installed by tests/fakes/jetson/fake_trtllm.py as
# bin/trtllm-build. The argparse options of the 0.12 era (plugin options take a dtype or
# "disable", feature options "enable"/"disable"); the same failures on a missing or
# foreign checkpoint (no config.json, a Hugging Face config.json, missing rank files, an
# architecture it cannot build); the [TRT-LLM] log lines and the closing "Total time of
# building all engines"; OUTPUT_DIR/config.json (version, pretrained_config,
# build_config) and rank<N>.engine, a sparse file as large as the weights plus the
# engine's own overhead.
"""trtllm-build: build TensorRT engines from a TensorRT-LLM checkpoint (test fake)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

VERSION = "0.12.0"
MODEL_MAP = {"Qwen2ForCausalLM", "QWenForCausalLM", "QWenLMHeadModel", "Qwen2MoeForCausalLM",
             "LlamaForCausalLM", "MistralForCausalLM", "GPTForCausalLM", "PhiForCausalLM",
             "Phi3ForCausalLM", "GemmaForCausalLM", "MixtralForCausalLM"}
SEVERITY = ["internal_error", "error", "warning", "info", "verbose", "debug", "trace"]
PLUGIN_DTYPES = ["auto", "float16", "float32", "bfloat16", "int32", "disable"]
# name -> default (None: disabled). Plugins take a dtype; features enable/disable.
PLUGINS = {"bert_attention_plugin": "auto", "gpt_attention_plugin": "auto",
           "gemm_plugin": None, "gemm_swiglu_plugin": None, "fp8_rowwise_gemm_plugin": None,
           "lookup_plugin": None, "lora_plugin": None, "moe_plugin": "auto",
           "mamba_conv1d_plugin": "auto", "nccl_plugin": "auto"}
FEATURES = {"context_fmha": True, "bert_context_fmha_fp32_acc": False, "paged_kv_cache": True,
            "remove_input_padding": True, "reduce_fusion": False, "enable_xqa": True,
            "use_paged_context_fmha": False, "use_fp8_context_fmha": False,
            "multiple_profiles": False, "paged_state": True, "streamingllm": False,
            "use_fused_mlp": True}
ENGINE_OVERHEAD = 48 << 20  # kernels, tactics and the TensorRT runtime tables


class Logger:
    def __init__(self, level: str) -> None:
        self.level = SEVERITY.index(level)

    def log(self, sev: str, msg: str) -> None:
        if SEVERITY.index(sev) <= self.level:
            stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
            tag = {"error": "E", "warning": "W", "info": "I", "verbose": "V"}.get(sev, "D")
            print(f"[{stamp}] [TRT-LLM] [{tag}] {msg}", flush=True)


def parse_arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint_dir", type=str, default=None)
    p.add_argument("--model_config", type=str, default=None)
    p.add_argument("--build_config", type=str, default=None)
    p.add_argument("--model_cls_file", type=str, default=None)
    p.add_argument("--model_cls_name", type=str, default=None)
    p.add_argument("--output_dir", type=str, default="engine_outputs")
    p.add_argument("--max_batch_size", type=int, default=256)
    p.add_argument("--max_input_len", type=int, default=1024)
    p.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int,
                   default=None)
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--opt_num_tokens", type=int, default=None)
    p.add_argument("--max_encoder_input_len", type=int, default=1024)
    p.add_argument("--max_prompt_embedding_table_size", "--max_multimodal_len", type=int,
                   default=0)
    p.add_argument("--input_timing_cache", type=str, default=None)
    p.add_argument("--output_timing_cache", type=str, default="model.cache")
    p.add_argument("--profiling_verbosity", type=str, default="layer_names_only",
                   choices=["layer_names_only", "detailed", "none"])
    p.add_argument("--strip_plan", default=False, action="store_true")
    p.add_argument("--weight_sparsity", default=False, action="store_true")
    p.add_argument("--weight_streaming", default=False, action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log_level", type=str, default="info", choices=SEVERITY)
    p.add_argument("--enable_debug_output", default=False, action="store_true")
    p.add_argument("--visualize_network", default=False, action="store_true")
    p.add_argument("--dry_run", default=False, action="store_true")
    p.add_argument("--monitor_memory", default=False, action="store_true")
    g = p.add_argument_group("Logits arguments")
    g.add_argument("--logits_dtype", type=str, default=None, choices=["float16", "float32"])
    g.add_argument("--gather_context_logits", action="store_true", default=False)
    g.add_argument("--gather_generation_logits", action="store_true", default=False)
    g.add_argument("--gather_all_token_logits", action="store_true", default=False)
    g = p.add_argument_group("LoRA arguments")
    g.add_argument("--lora_dir", type=str, default=None, nargs="+")
    g.add_argument("--lora_ckpt_source", type=str, default="hf", choices=["hf", "nemo"])
    g.add_argument("--lora_target_modules", nargs="+", default=None)
    g.add_argument("--max_lora_rank", type=int, default=64)
    g = p.add_argument_group("Speculative decoding arguments")
    g.add_argument("--speculative_decoding_mode", default=None,
                   choices=["draft_tokens_external", "lookahead_decoding", "medusa",
                            "explicit_draft_tokens"])
    g.add_argument("--max_draft_len", type=int, default=0)
    g = p.add_argument_group("Auto parallel arguments")
    g.add_argument("--auto_parallel", type=int, default=1)
    g.add_argument("--gpus_per_node", type=int, default=8)
    g.add_argument("--cluster_key", type=str, default=None)
    g = p.add_argument_group("Plugin config arguments")
    for name, default in PLUGINS.items():
        g.add_argument(f"--{name}", type=str, default=default or "disable",
                       choices=PLUGIN_DTYPES)
    for name, default in FEATURES.items():
        g.add_argument(f"--{name}", type=str, default="enable" if default else "disable",
                       choices=["enable", "disable"])
    g.add_argument("--tokens_per_block", type=int, default=64)
    return p


def traceback(exc: str, msg: str) -> int:
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "/usr/local/bin/trtllm-build", line 8, in <module>', file=sys.stderr)
    print("    sys.exit(main())", file=sys.stderr)
    print('  File "/usr/local/lib/python3.10/dist-packages/tensorrt_llm/commands/build.py",'
          " in main", file=sys.stderr)
    print(f"{exc}: {msg}", file=sys.stderr)
    return 1


def main() -> int:
    print(f"[TensorRT-LLM] TensorRT-LLM version: {VERSION}", flush=True)
    args = parse_arguments().parse_args()
    log = Logger(args.log_level)
    if args.gather_all_token_logits:
        args.gather_context_logits = args.gather_generation_logits = True
    if args.gather_context_logits and args.max_draft_len > 0:
        return traceback("RuntimeError", "Gather context logits is not support with draft len "
                         "> 0. If want to get the accepted tokens' logits from target model, "
                         "please just enable gather_generation_logits")
    tik = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = args.checkpoint_dir if args.checkpoint_dir is not None else args.model_config
    if source is None:
        return traceback("AttributeError", "'NoneType' object has no attribute 'lower'")
    config_path = Path(source) if source.lower().endswith(".json") else \
        Path(source) / "config.json"
    ckpt_dir = None if source.lower().endswith(".json") else Path(source)
    if not config_path.is_file():
        return traceback("FileNotFoundError",
                         f"[Errno 2] No such file or directory: '{config_path}'")
    config = json.loads(config_path.read_text())
    for key in ("architecture", "dtype"):
        if key not in config:
            return traceback("KeyError", f"'{key}'")
    arch = config["architecture"]
    if arch not in MODEL_MAP:
        return traceback("AssertionError", f"Unsupported model architecture: {arch}")
    mapping = config.get("mapping", {})
    world = mapping.get("world_size", 1)
    sizes = []
    for rank in range(world):
        f = ckpt_dir / f"rank{rank}.safetensors" if ckpt_dir else None
        if f is not None and not f.is_file():
            return traceback("FileNotFoundError",
                             f"[Errno 2] No such file or directory: '{f}'")
        sizes.append(f.stat().st_size if f is not None else 0)
    plugin = {}
    for name in PLUGINS:
        value = getattr(args, name)
        plugin[name] = None if value == "disable" else \
            (config["dtype"] if value == "auto" else value)
        log.log("info", f"Set {name} to {plugin[name]}.")
    for name in FEATURES:
        plugin[name] = getattr(args, name) == "enable"
        log.log("info", f"Set {name} to {plugin[name]}.")
    plugin["tokens_per_block"] = args.tokens_per_block
    max_pos = config.get("max_position_embeddings", 2048)
    max_seq_len = args.max_seq_len
    if max_seq_len is None:
        max_seq_len = max_pos
        log.log("info", f"max_seq_len is not specified, using deduced value {max_seq_len}")
    max_input_len = args.max_input_len
    if max_input_len > max_seq_len:
        log.log("warning", f"max_input_len is {max_input_len} is larger than max_seq_len "
                f"{max_seq_len}, clipping it to max_seq_len")
        max_input_len = max_seq_len
    max_num_tokens = args.max_num_tokens
    if plugin["remove_input_padding"] and max_num_tokens > args.max_batch_size * max_seq_len:
        log.log("warning", f"max_num_tokens ({max_num_tokens}) shouldn't be greater than "
                f"max_seq_len * max_batch_size ({args.max_batch_size * max_seq_len}), "
                "specifying to max_seq_len * max_batch_size "
                f"({args.max_batch_size * max_seq_len}).")
        max_num_tokens = args.max_batch_size * max_seq_len
    build = {
        "max_input_len": max_input_len, "max_seq_len": max_seq_len, "opt_batch_size": None,
        "max_batch_size": args.max_batch_size, "max_beam_width": args.max_beam_width,
        "max_num_tokens": max_num_tokens, "opt_num_tokens": args.opt_num_tokens,
        "max_prompt_embedding_table_size": args.max_prompt_embedding_table_size,
        "gather_context_logits": args.gather_context_logits,
        "gather_generation_logits": args.gather_generation_logits, "strongly_typed": True,
        "force_num_profiles": None, "weight_sparsity": args.weight_sparsity,
        "profiling_verbosity": args.profiling_verbosity,
        "enable_debug_output": args.enable_debug_output, "max_draft_len": args.max_draft_len,
        "speculative_decoding_mode": 1, "use_refit": False,
        "input_timing_cache": args.input_timing_cache,
        "output_timing_cache": args.output_timing_cache,
        "lora_config": {"lora_dir": args.lora_dir or [], "lora_ckpt_source":
                        args.lora_ckpt_source, "max_lora_rank": args.max_lora_rank,
                        "lora_target_modules": args.lora_target_modules or []},
        "auto_parallel_config": {"world_size": args.auto_parallel,
                                 "gpus_per_node": args.gpus_per_node},
        "weight_streaming": args.weight_streaming, "plugin_config": plugin,
        "use_strip_plan": args.strip_plan, "max_encoder_input_len": args.max_encoder_input_len,
        "use_fused_mlp": plugin["use_fused_mlp"] and not (config.get("quantization") or {})
        .get("quant_algo"),
    }
    pretrained = dict(config)
    if args.logits_dtype:
        pretrained["logits_dtype"] = args.logits_dtype
    for rank in range(world):
        log.log("info", "Total optimization profiles added: 1")
        log.log("info", f"Build TensorRT engine Unnamed Network {rank}")
        print(f"[TensorRT-LLM][INFO] [MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU "
              f"{180 + rank}, GPU 4091 (MiB)", flush=True)
        engine_size = sizes[rank] + ENGINE_OVERHEAD
        log.log("info", f"Total Weights Memory: {sizes[rank]} bytes")
        log.log("info", f"Total time of building Unnamed Network {rank}: 00:00:01")
        if args.dry_run:
            continue
        path = out / f"rank{rank}.engine"
        log.log("info", f"Serializing engine to {path}...")
        with path.open("wb") as f:
            f.write(b"\x00" * 16 + b"ftrt" + VERSION.encode())
            f.truncate(engine_size)
        log.log("info", "Engine serialized. Total time: 00:00:00")
    (out / "config.json").write_text(json.dumps(
        {"version": VERSION, "pretrained_config": pretrained, "build_config": build},
        indent=4))
    t = time.strftime("%H:%M:%S", time.gmtime(time.time() - tik))
    log.log("info", f"Total time of building all engines: {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
