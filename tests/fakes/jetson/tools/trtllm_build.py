#!/usr/bin/env python3
# Test fake of TensorRT-LLM 0.12's trtllm-build: the console script
# `trtllm-build = tensorrt_llm.commands.build:main` (setup.py:121-123). It ships as
# tensorrt_llm/commands/build.py in the stand-in wheel (tests/fakes/jetson/
# fake_trtllm_wheel.py), and as bin/trtllm-build in install_fake_trtllm's direct install.
#
# Source: the v0.12.0-jetson branch is not in the stored copies (only its
# README4Jetson.md is, NVIDIA/TensorRT-LLM 20a7cec9). The closest stored source is
# NVIDIA/TensorRT-LLM main at be9cd719 (2024-08-07, version 0.12.0.dev2024080600, the
# last 0.12 development snapshot before v0.12.0 was branched), read from the mirror
# laipaang/TensorRT-LLM. Line numbers below are of that commit:
# tensorrt_llm/commands/build.py (build.py), tensorrt_llm/plugin/plugin.py (plugin.py),
# tensorrt_llm/builder.py, tensorrt_llm/_common.py, tensorrt_llm/logger.py.
#   options      build.py:37-246 (names, types, defaults; --max_seq_len with its alias
#                --max_decoder_seq_len; --cp_size/--tp_size/--pp_size, accepted and only
#                passed on, 108-110, 415-417; --use_fused_mlp is a store_true flag,
#                119-127; --log_level has no choices, 56); plugin options plugin.py:
#                273-330 over the PluginConfig fields 136-172: a plugin takes a dtype or
#                "disable" (62-69: gemm_plugin also "fp8", gemm_swiglu_plugin only "fp8"),
#                a feature "enable"/"disable", --tokens_per_block an int.
#   not in 0.12  --max_output_len (removed on main 2024-07-16, 2d234357), --monitor_memory
#                (added 2024-10-15), --kv_cache_type, --fast_build, --use_fused_mlp
#                enable|disable (a plugin option from 2024-08-20): argparse refuses them
#                (exit 2, "unrecognized arguments").
#   in 0.12      --fp8_rowwise_gemm_plugin (plugin.py:279, added 2024-07-23, bca9a33b).
#   failures     --log_level outside logger.py:130-137: KeyError at set_level (123);
#                gather_context_logits with --max_draft_len > 0: RuntimeError
#                (build.py:255-259); no --checkpoint_dir nor --model_config:
#                AttributeError on None.lower() (build.py:429-430); no config.json:
#                FileNotFoundError (437); --multiple_profiles enable with
#                --opt_num_tokens: RuntimeError (440-443); an architecture not in
#                MODEL_MAP: AssertionError (build.py:302-303). A missing rank file and
#                the KeyError of a Hugging Face config.json come from
#                PretrainedConfig/from_checkpoint (models/modeling_utils.py, not read).
#   --workers    capped to the GPU count, never refused: min(torch.cuda.device_count(),
#                args.workers) (build.py:410); 1 builds in this process, more in a
#                process pool (370-390); 0 (or no GPU) makes ProcessPoolExecutor raise
#                "ValueError: max_workers must be greater than 0". GPUs:
#                FAKE_TRTLLM_GPUS (default 1: an Orin has one).
#   limits       max_seq_len deduced from max_position_embeddings when not given, a
#                max_input_len above it clipped (builder.py:727-757); max_num_tokens
#                clipped to max_seq_len * max_batch_size (_common.py:240-246).
#   output       the [TRT-LLM] log lines ("Set <plugin> to <value>." plugin.py:100, "Total
#                time of building all engines" build.py:500); OUTPUT_DIR/config.json
#                (version, pretrained_config, build_config; builder.py:630) and
#                rank<N>.engine (639), a sparse file as large as the weights plus the
#                engine's own overhead.
# The real module imports torch and tensorrt_llm (build.py:25-34); this one imports
# tensorrt_llm (which needs `tensorrt`, JetPack's, and prints the version banner).
"""trtllm-build: build TensorRT engines from a TensorRT-LLM checkpoint (test fake)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import tensorrt_llm  # noqa: F401  (the real module imports it too: tensorrt, the banner)
from tensorrt_llm.version import __version__ as VERSION

MODEL_MAP = {"Qwen2ForCausalLM", "QWenForCausalLM", "QWenLMHeadModel", "Qwen2MoeForCausalLM",
             "LlamaForCausalLM", "MistralForCausalLM", "GPTForCausalLM", "PhiForCausalLM",
             "Phi3ForCausalLM", "GemmaForCausalLM", "MixtralForCausalLM"}
SEVERITY = {"internal_error": "F", "error": "E", "warning": "W", "info": "I", "verbose": "V",
            "debug": "V"}  # logger.py:130-137
ORDER = list(SEVERITY)
DTYPES = ["auto", "float16", "float32", "bfloat16", "int32", None]  # plugin.py:62-64
DTYPES_OF = {"gemm_swiglu_plugin": ["fp8", None],  # plugin.py:65-69
             "gemm_plugin": ["auto", "float16", "float32", "bfloat16", "int32", "fp8", None]}
# PluginConfig fields on the command line (plugin.py:136-172 filtered by 273-300), in order:
# plugins default to a dtype or None ("disable"), features to True/False.
PLUGINS = {"bert_attention_plugin": "auto", "gpt_attention_plugin": "auto",
           "gemm_plugin": None, "gemm_swiglu_plugin": None, "fp8_rowwise_gemm_plugin": None,
           "nccl_plugin": "auto", "lookup_plugin": None, "lora_plugin": None,
           "moe_plugin": "auto", "mamba_conv1d_plugin": "auto"}
FEATURES = {"context_fmha": True, "bert_context_fmha_fp32_acc": False, "paged_kv_cache": True,
            "remove_input_padding": True, "reduce_fusion": False, "enable_xqa": True,
            "use_paged_context_fmha": False, "use_fp8_context_fmha": False,
            "multiple_profiles": False, "paged_state": True, "streamingllm": False}
ENGINE_OVERHEAD = 48 << 20  # kernels, tactics and the TensorRT runtime tables


class BuildError(Exception):
    def __init__(self, exc: str, msg: str) -> None:
        super().__init__(f"{exc}: {msg}")


class Logger:
    def __init__(self) -> None:
        self.level = ORDER.index("info")

    def set_level(self, level: str) -> None:
        if level not in SEVERITY:  # logger.py:123: severity_map[min_severity]
            raise BuildError("KeyError", repr(level))
        self.level = ORDER.index(level)

    def log(self, sev: str, msg: str) -> None:
        if ORDER.index(sev) <= self.level:
            stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
            print(f"[{stamp}] [TRT-LLM] [{SEVERITY[sev]}] {msg}", flush=True)


def parse_arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name in ("checkpoint_dir", "model_config", "build_config", "model_cls_file",
                 "model_cls_name", "input_timing_cache"):
        p.add_argument(f"--{name}", type=str, default=None)
    p.add_argument("--output_timing_cache", type=str, default="model.cache")
    p.add_argument("--log_level", type=str, default="info")
    p.add_argument("--profiling_verbosity", type=str, default="layer_names_only",
                   choices=["layer_names_only", "detailed", "none"])
    p.add_argument("--enable_debug_output", default=False, action="store_true")
    p.add_argument("--output_dir", type=str, default="engine_outputs")
    p.add_argument("--workers", type=int, default="1")
    p.add_argument("--max_batch_size", type=int, default=256)
    p.add_argument("--max_input_len", type=int, default=1024)
    p.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int,
                   default=None)
    p.add_argument("--max_beam_width", type=int, default=1)
    p.add_argument("--max_num_tokens", type=int, default=8192)
    p.add_argument("--opt_num_tokens", type=int, default=None)
    for name in ("cp_size", "tp_size", "pp_size"):
        p.add_argument(f"--{name}", type=int, default=1)
    p.add_argument("--max_prompt_embedding_table_size", "--max_multimodal_len", type=int,
                   default=0)
    p.add_argument("--use_fused_mlp", default=False, action="store_true")
    for name in ("gather_all_token_logits", "gather_context_logits",
                 "gather_generation_logits"):
        p.add_argument(f"--{name}", action="store_true", default=False)
    p.add_argument("--builder_opt", type=int, default=None)
    p.add_argument("--builder_force_num_profiles", type=int, default=None)
    p.add_argument("--logits_dtype", type=str, default=None, choices=["float16", "float32"])
    p.add_argument("--weight_sparsity", default=False, action="store_true")
    p.add_argument("--max_draft_len", type=int, default=0)
    p.add_argument("--lora_dir", type=str, default=None, nargs="+")
    p.add_argument("--lora_ckpt_source", type=str, default="hf", choices=["hf", "nemo"])
    p.add_argument("--lora_target_modules", nargs="+", default=None)
    p.add_argument("--max_lora_rank", type=int, default=64)
    p.add_argument("--auto_parallel", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--cluster_key", type=str, default=None)
    p.add_argument("--strip_plan", default=False, action="store_true")
    p.add_argument("--max_encoder_input_len", type=int, default=1024)
    p.add_argument("--visualize_network", default=False, action="store_true")
    p.add_argument("--dry_run", default=False, action="store_true")
    p.add_argument("--speculative_decoding_mode", default=None,
                   choices=["draft_tokens_external", "lookahead_decoding", "medusa",
                            "explicit_draft_tokens"])
    p.add_argument("--weight_streaming", default=False, action="store_true")
    g = p.add_argument_group("plugin_config")
    for name, default in PLUGINS.items():
        g.add_argument(f"--{name}", type=str, default=default or "disable",
                       choices=[x or "disable" for x in DTYPES_OF.get(name, DTYPES)])
    for name, on in FEATURES.items():
        g.add_argument(f"--{name}", type=str, default="enable" if on else "disable",
                       choices=["enable", "disable"])
        if name == "enable_xqa":  # tokens_per_block sits here among the fields
            g.add_argument("--tokens_per_block", type=int, default=64)
    return p


def load_config(args: argparse.Namespace, log: Logger) -> tuple[dict, Path | None]:
    source = args.checkpoint_dir if args.checkpoint_dir is not None else args.model_config
    if source is None:
        raise BuildError("AttributeError", "'NoneType' object has no attribute 'lower'")
    json_given = source.lower().endswith(".json")
    config_path = Path(source) if json_given else Path(source) / "config.json"
    if not config_path.is_file():
        raise BuildError("FileNotFoundError",
                         f"[Errno 2] No such file or directory: '{config_path}'")
    config = json.loads(config_path.read_text())
    for key in ("architecture", "dtype"):
        if key not in config:
            raise BuildError("KeyError", f"'{key}'")
    return config, None if json_given else Path(source)


def limits(args: argparse.Namespace, config: dict, plugin: dict, log: Logger) -> dict:
    """builder.py:_init_max_seq_len and _common.py:check_max_num_tokens."""
    max_seq_len = args.max_seq_len
    if max_seq_len is None:
        max_seq_len = config.get("max_position_embeddings") or 2048
        log.log("info", f"max_seq_len is not specified, using deduced value {max_seq_len}")
    max_input_len = args.max_input_len
    if max_input_len > max_seq_len:
        log.log("warning", f"max_input_len is {max_input_len} is larger than max_seq_len "
                f"{max_seq_len}, clipping it to max_seq_len")
        max_input_len = max_seq_len
    max_num_tokens = args.max_num_tokens
    if plugin["remove_input_padding"] and max_num_tokens > args.max_batch_size * max_seq_len:
        max_num_tokens = args.max_batch_size * max_seq_len
        log.log("warning", f"max_num_tokens ({max_num_tokens}) shouldn't be greater than "
                f"max_seq_len * max_batch_size ({max_num_tokens}), specifying to "
                f"max_seq_len * max_batch_size ({max_num_tokens}).")
    return {"max_input_len": max_input_len, "max_seq_len": max_seq_len,
            "max_num_tokens": max_num_tokens}


def build(args: argparse.Namespace, log: Logger) -> None:
    if args.gather_all_token_logits:
        args.gather_context_logits = args.gather_generation_logits = True
    if args.gather_context_logits and args.max_draft_len > 0:
        raise BuildError("RuntimeError", "Gather context logits is not support with draft "
                         "len > 0. If want to get the accepted tokens' logits from target "
                         "model, please just enable gather_generation_logits")
    log.set_level(args.log_level)
    tik = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = min(int(os.environ.get("FAKE_TRTLLM_GPUS", "1")), args.workers)
    config, ckpt_dir = load_config(args, log)
    if args.build_config is None and args.multiple_profiles == "enable" and \
            args.opt_num_tokens is not None:
        raise BuildError("RuntimeError", "multiple_profiles is enabled, while opt_num_tokens "
                         "is set. They are not supposed to be working in the same time for "
                         "now.")
    if workers != 1 and workers <= 0:
        raise BuildError("ValueError", "max_workers must be greater than 0")
    arch = config["architecture"]
    if arch not in MODEL_MAP:
        raise BuildError("AssertionError", f"Unsupported model architecture: {arch}")
    world = config.get("mapping", {}).get("world_size", 1)
    sizes = []
    for rank in range(world):
        f = ckpt_dir / f"rank{rank}.safetensors" if ckpt_dir else None
        if f is not None and not f.is_file():
            raise BuildError("FileNotFoundError", f"[Errno 2] No such file or directory: '{f}'")
        sizes.append(f.stat().st_size if f is not None else 0)
    plugin: dict = {}
    for name in PLUGINS:
        value = getattr(args, name)
        plugin[name] = None if value == "disable" else \
            (config["dtype"] if value == "auto" else value)
        log.log("info", f"Set {name} to {plugin[name]}.")
    for name in FEATURES:
        plugin[name] = getattr(args, name) == "enable"
        log.log("info", f"Set {name} to {plugin[name]}.")
    plugin["tokens_per_block"] = args.tokens_per_block
    build_config = {
        **limits(args, config, plugin, log), "opt_batch_size": None,
        "max_batch_size": args.max_batch_size, "max_beam_width": args.max_beam_width,
        "opt_num_tokens": args.opt_num_tokens,
        "max_prompt_embedding_table_size": args.max_prompt_embedding_table_size,
        "gather_context_logits": args.gather_context_logits,
        "gather_generation_logits": args.gather_generation_logits, "strongly_typed": True,
        "builder_opt": args.builder_opt, "force_num_profiles": args.builder_force_num_profiles,
        "weight_sparsity": args.weight_sparsity,
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
        "use_fused_mlp": args.use_fused_mlp,
    }
    if args.build_config is not None:
        build_config.update(json.loads(Path(args.build_config).read_text()))
    pretrained = dict(config)
    if args.logits_dtype:
        pretrained["logits_dtype"] = args.logits_dtype
    for rank in range(world):
        log.log("info", "Total optimization profiles added: 1")
        log.log("info", f"Build TensorRT engine Unnamed Network {rank}")
        print(f"[TensorRT-LLM][INFO] [MemUsageChange] Init CUDA: CPU +2, GPU +0, now: CPU "
              f"{180 + rank}, GPU 4091 (MiB)", flush=True)
        log.log("info", f"Total Weights Memory: {sizes[rank]} bytes")
        log.log("info", f"Total time of building Unnamed Network {rank}: 00:00:01")
        if args.dry_run:
            continue
        path = out / f"rank{rank}.engine"
        log.log("info", f"Serializing engine to {path}...")
        with path.open("wb") as f:
            f.write(b"\x00" * 16 + b"ftrt" + VERSION.encode())
            f.truncate(sizes[rank] + ENGINE_OVERHEAD)
        log.log("info", "Engine serialized. Total time: 00:00:00")
    (out / "config.json").write_text(json.dumps(
        {"version": VERSION, "pretrained_config": pretrained, "build_config": build_config},
        indent=4))
    t = time.strftime("%H:%M:%S", time.gmtime(time.time() - tik))
    log.log("info", f"Total time of building all engines: {t}")


def main() -> int:
    args = parse_arguments().parse_args()
    try:
        build(args, Logger())
    except BuildError as e:
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f'  File "{sys.argv[0]}", line 8, in <module>\n    sys.exit(main())',
              file=sys.stderr)
        print(f'  File "{__file__}", in main', file=sys.stderr)
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
