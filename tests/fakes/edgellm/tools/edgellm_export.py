# Test fake of TensorRT Edge-LLM 0.9.1's `tensorrt-edgellm-export`
# (tensorrt_edgellm.scripts.export:main, pyproject.toml:54-60), shipped as
# tensorrt_edgellm/scripts/export.py in the fake source tarball
# (tests/fakes/edgellm/fake_edgellm_source.py). Stdlib only; CPU only, as the real export
# (scripts/export.py:866-868; docs/source/user_guide/examples/moe.md:18-20). Source:
# TensorRT-Edge-LLM 0.9.1 (7f061f2); lines of tensorrt_edgellm/scripts/export.py unless named:
#   umask        main() sets 022 first (2374-2380)
#   options      the argparse parser of 2382-2570, every option with its default, choices
#                and aliases (--externalize-weights choices: external_weights.py:24-35)
#   checks       the p.error() combinations of 2585-2648 (exit 2); --dtype not in
#                _dtype_from_str's table: "Unknown dtype ..." exit 1 (567-580)
#   model        a local directory, else the Hub (_resolve_model_dir, 242-255): offline the
#                fake finds only a cached snapshot, else raises what huggingface_hub raises
#                (edgellm_checkpoint.snapshot); config.json missing: "config.json not found in
#                DIR", exit 1 (264-270)
#   layout       <output_dir>/llm/ (_DEFAULT_LAYOUT "thinker": "llm", 201-211)
#   LLM          _export_llm (791-925): "[LLM] Loading checkpoint from", a checkpoint without
#                weight files fails as the loader does (checkpoint/loader.py:315-318:
#                "[LLM] Failed to load checkpoint", exit 1); export_onnx
#                (onnx/export.py:71-126): model.onnx + model.onnx.data
#                (location=basename+".data", 696-708); the runtime config.json
#                (checkpoint/checkpoint_utils.py:326-662: build_runtime_llm_config_dict,
#                written with json.dump(indent=2), 809-812), eos_token_id from config.json or
#                generation_config.json (786-807), embedding.safetensors ("embedding" in
#                fp16; --fp8-embedding: F8_E4M3 + "embedding_scale", block 128,
#                embedding_quantization.py:27-47), the tokenizer files present in the
#                checkpoint (RUNTIME_TOKENIZER_FILENAMES, 45-51, copied with copy2),
#                processed_chat_template.json (copied, else chat_template.py:352-690, else the
#                fallback of 271-300); --externalize-weights (external_weights.py:397-482:
#                int4_ffn only for INT4 checkpoints, lm_head refused when quantized, 78-107;
#                the manifest {"file", "kind", "tensors"} patched into config.json, 59-71)
#   summary      "Export complete" and the sizes (2830-2857)
# Precision is not a config.json field: it lives in the ONNX graph (the runtime config has
# only kv_cache_dtype). The fake records it in model.onnx's header instead.
# What the fake does NOT provide (it says so and exits 2): visual/audio/talker/code2wav/
# action components, --eagle-base, --mtp*, --dflash-*, --reduced-vocab-dir, --tp-size > 1,
# model types other than the text LLMs in TEXT_MODEL_TYPES. The chat template is extracted
# only from ChatML templates (Qwen); any other falls back as the real one does when Jinja
# extraction fails. model.onnx is ONNX_MAGIC + a JSON line (checkpoint sha256, quantization,
# kv cache dtype, external data name); model.onnx.data a JSON line then zeros (sparse) up to
# the checkpoint's weight bytes. The real package needs torch, transformers, onnx, ...
# (pyproject.toml:24-32); this one needs nothing.
"""tensorrt-edgellm-export: export a checkpoint to ONNX for TensorRT Edge-LLM (test fake)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from tensorrt_edgellm import _fake_checkpoint as ck
from tensorrt_edgellm._version import __version__

logging.basicConfig(level=logging.INFO,
                    format="%(asctime)s  %(levelname)-8s  %(name)s: %(message)s",
                    datefmt="%H:%M:%S")
logger = logging.getLogger("tensorrt_edgellm.scripts.export")
util_logger = logging.getLogger("tensorrt_edgellm.checkpoint.checkpoint_utils")

ONNX_MAGIC = b"FAKE ONNX model\n"
ONNX_DATA_MAGIC = b"FAKE ONNX external data\n"
EXTERNAL_WEIGHT_CHOICES = ("int4_ffn", "int4_moe", "nvfp4_moe", "lm_head", "all")
DTYPES = ("float16", "fp16", "bfloat16", "bf16", "float32", "fp32")
TEXT_MODEL_TYPES = ("qwen2", "qwen3", "llama", "mistral")
RUNTIME_TOKENIZER_FILENAMES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                               "special_tokens_map.json", "processed_chat_template.json")
VALID_COMPONENTS = {"thinker", "mtp_draft", "talker", "code_predictor", "visual", "audio",
                    "code2wav", "action"}
FP8_EMBEDDING_BLOCK_SIZE = 128


def build_parser() -> argparse.ArgumentParser:
    """scripts/export.py:2382-2570."""
    p = argparse.ArgumentParser(
        prog="tensorrt-edgellm-export",
        description=("Export ALL components of a multimodal checkpoint to ONNX "
                     "(LLM + optional visual/audio encoder) in one command."))
    p.add_argument("model", help="Local checkpoint directory or Hugging Face model ID.")
    p.add_argument("output_dir", help="Root output directory. Sub-dirs llm/, visual/, audio/ "
                   "are created as needed.")
    p.add_argument("--dtype", default="float16",
                   help="Weight dtype for visual/audio models (default: float16).")
    for name, what in (("llm", "Skip LLM backbone export (export only visual/audio encoders)."),
                       ("visual", "Skip visual encoder export."),
                       ("audio", "Skip audio encoder export."),
                       ("code2wav", "Skip Code2Wav vocoder export.")):
        p.add_argument(f"--skip-{name}", action="store_true", help=what)
    p.add_argument("--components", default="", help="Comma-separated allow-list of components.")
    p.add_argument("--eagle-base", action="store_true", help="Export as EAGLE3 base model.")
    p.add_argument("--fp8-embedding", "--fp8_embedding", dest="fp8_embedding",
                   action="store_true", help="Write embedding.safetensors in FP8 E4M3.")
    p.add_argument("--reduced-vocab-dir", "--reduced_vocab_dir", dest="reduced_vocab_dir",
                   default="", help="Directory containing vocab_map.safetensors.")
    p.add_argument("--draft-reduced-vocab-dir", dest="draft_reduced_vocab_dir", default="",
                   metavar="DIR", help="vocab_map.safetensors for the DFlash draft model.")
    p.add_argument("--mtp", action="store_true", help="Export MTP components.")
    p.add_argument("--mtp-draft-dir", "--mtp_draft_dir", dest="mtp_draft_dir", default="",
                   help="Path to a paired MTP draft checkpoint.")
    p.add_argument("--mtpDraftModelDir", dest="mtp_draft_dir", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    p.add_argument("--gemma4-mtp-assistant-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--dflash-base", action="store_true", help="Export as DFlash base model.")
    p.add_argument("--dflash-tree-base", action="store_true",
                   help="Export DFlash base with DDTree hybrid state metadata inputs.")
    p.add_argument("--dflash-draft", action="store_true", help="Export DFlash draft model.")
    p.add_argument("--dflash-draft-dir", default="",
                   help="Path to the DFlash draft checkpoint directory.")
    p.add_argument("--externalize-weights", nargs="+", choices=EXTERNAL_WEIGHT_CHOICES,
                   default=[], metavar="WEIGHT_TYPE",
                   help="Expose selected model weights as ONNX inputs and write them to "
                   "safetensors external weight files. Values: int4_ffn, int4_moe, nvfp4_moe, "
                   "lm_head, all.")
    p.add_argument("--max-kv-cache-capacity", type=int, default=4096,
                   help="Max KV cache capacity for action expert (Alpamayo). Default: 4096.")
    p.add_argument("--skip-action", action="store_true",
                   help="Skip action expert export (Alpamayo).")
    p.add_argument("--tp-size", "--tp_size", dest="tp_size", type=int, default=1,
                   help="Tensor-parallel world size (default: 1 = single device).")
    p.add_argument("--talker-sidecar-from", "--talker_sidecar_from", dest="talker_sidecar_from",
                   default="", help="HF root checkpoint of the Qwen3-Omni Talker sidecars.")
    p.add_argument("--num-decoder-layer", "--num_decoder_layer", dest="num_decoder_layer",
                   type=int, default=None,
                   help="Accuracy-debugging only: export only the first N decoder layers.")
    return p


def resolve_model_dir(model: str) -> Path:
    """_resolve_model_dir (242-255)."""
    if os.path.isdir(model):
        return Path(model)
    logger.info("Downloading %s from Hugging Face Hub ...", model)
    try:
        return ck.snapshot(model)
    except ck.HubError as e:
        print("Traceback (most recent call last):", file=sys.stderr)
        print(f'  File "{__file__}", in _resolve_model_dir\n    return snapshot_download(model)',
              file=sys.stderr)
        print(e, file=sys.stderr)
        sys.exit(1)


def load_config(model_dir: Path) -> dict:
    """_load_config (264-270)."""
    path = model_dir / "config.json"
    if not path.exists():
        logger.error("config.json not found in %s", model_dir)
        sys.exit(1)
    return json.loads(path.read_text())


def not_provided(what: str) -> None:
    logger.error("fake: %s is not provided by this stand-in of tensorrt-edgellm-export", what)
    sys.exit(2)


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace, config: dict) -> None:
    """The p.error() checks of 2585-2648 that apply without Gemma4/TTS checkpoints."""
    text_cfg = next((config[k] for k in ("text_config", "llm_config", "language_config")
                     if isinstance(config.get(k), dict) and config[k].get("hidden_size")),
                    config)
    has_mtp = text_cfg.get("mtp_num_hidden_layers") is not None
    mtp_dir = args.mtp_draft_dir or args.gemma4_mtp_assistant_dir
    if args.eagle_base and args.mtp:
        p.error("--eagle-base and --mtp cannot be enabled together")
    if args.mtp_draft_dir and args.gemma4_mtp_assistant_dir:
        p.error("Use only one MTP draft checkpoint directory option")
    if mtp_dir and args.eagle_base:
        p.error("--mtp-draft-dir cannot be combined with --eagle-base")
    if mtp_dir and (args.dflash_base or args.dflash_draft):
        p.error("--mtp-draft-dir cannot be combined with DFlash export")
    if args.dflash_tree_base:
        args.dflash_base = True
    if args.dflash_base and (args.eagle_base or args.mtp):
        p.error("--dflash-base cannot be combined with --eagle-base or --mtp")
    if args.dflash_draft and (args.eagle_base or args.mtp):
        p.error("--dflash-draft cannot be combined with --eagle-base or --mtp")
    if args.dflash_draft and not args.dflash_draft_dir:
        p.error("--dflash-draft requires --dflash-draft-dir")
    if args.mtp and args.skip_llm:
        p.error("--mtp requires LLM export; remove --skip-llm")
    if mtp_dir and args.skip_llm:
        p.error("--mtp-draft-dir requires LLM export; remove --skip-llm")
    if args.dflash_base and args.skip_llm:
        p.error("--dflash-base requires LLM export; remove --skip-llm")
    if mtp_dir and not args.mtp:
        p.error("--mtp-draft-dir requires --mtp")
    if args.mtp and mtp_dir:
        p.error("--mtp-draft-dir is currently only supported for Gemma4 MTP")
    if args.mtp and not has_mtp:
        p.error("--mtp was requested, but the checkpoint does not expose MTP weights/config")
    if args.num_decoder_layer is not None:
        if args.num_decoder_layer < 1:
            p.error("--num-decoder-layer must be >= 1")
        if args.eagle_base or args.mtp or args.dflash_base or args.dflash_draft:
            p.error("--num-decoder-layer cannot be combined with --eagle-base / --mtp / "
                    "--dflash-base / --dflash-draft")
    requested = {c.strip() for c in args.components.split(",") if c.strip()}
    unknown = requested - VALID_COMPONENTS
    if unknown:
        p.error(f"--components contains unknown values {sorted(unknown)}; valid choices: "
                f"{sorted(VALID_COMPONENTS)}")


# ------------------------------------------------------------------ runtime artifacts

def runtime_config(config: dict, quant: tuple[str, str | None], layers: int | None) -> dict:
    """build_runtime_llm_config_dict (checkpoint_utils.py:326-662) for a text LLM."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    rope_scaling = config.get("rope_scaling")
    if isinstance(rope_scaling, dict) and "type" not in rope_scaling and \
            "rope_type" in rope_scaling:
        rope_scaling = {**rope_scaling, "type": rope_scaling["rope_type"]}
    theta = config.get("rope_theta")
    if theta is None:
        theta = next((d["rope_theta"] for d in (config.get("rope_scaling"),
                                                config.get("rope_parameters"))
                      if isinstance(d, dict) and d.get("rope_theta") is not None), 10000.0)
    return {"model": config.get("model_type", "unknown"), "spec_decode_type": "none",
            "engine_role": "llm", "edgellm_version": __version__,
            "vocab_size": config["vocab_size"], "hidden_size": hidden,
            "intermediate_size": config.get("intermediate_size", 0),
            "num_hidden_layers": layers or config["num_hidden_layers"],
            "num_attention_heads": heads,
            "num_key_value_heads": config.get("num_key_value_heads", heads),
            "head_dim": config.get("head_dim", hidden // heads),
            "max_position_embeddings": config.get("max_position_embeddings", 4096),
            "rope_theta": float(theta), "rope_scaling": rope_scaling,
            "partial_rotary_factor": float(config.get("partial_rotary_factor", 1.0)),
            "num_deepstack_features": 0, "use_vision_bidirectional_attention": False,
            "ple_enabled": False, "num_ple_inputs": 0, "ple_hidden_size": 0,
            "kv_cache_dtype": "fp8" if quant[1] == "fp8" else "fp16"}


def chat_template_data(model_dir: Path) -> dict | None:
    """process_chat_template (chat_template.py:352-690) for ChatML templates; None when no
    template is found; raises ValueError when extraction fails."""
    template = None
    tc = model_dir / "tokenizer_config.json"
    if tc.exists():
        template = json.loads(tc.read_text()).get("chat_template")
    if not template and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text()
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not template:
        return None
    if "<|im_start|>" not in template:
        raise ValueError("fake: only ChatML (<|im_start|>) templates are extracted by this "
                         "stand-in")
    roles = {r: {"prefix": f"<|im_start|>{r}\n", "suffix": "<|im_end|>\n"}
             for r in ("system", "user", "assistant")}
    data = {"model_path": str(model_dir), "roles": roles, "content_types": {},
            "generation_prompt": "<|im_start|>assistant\n", "default_system_prompt": ""}
    m = re.search(r"<\|im_start\|>system\\n([^'\"{}]+?)<\|im_end\|>", template)
    if m:
        data["default_system_prompt"] = m.group(1)
    if "enable_thinking" in template and "<think>" in template:  # Qwen3
        data["generation_prompt"] = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        data["generation_prompt_thinking"] = "<|im_start|>assistant\n"
    return data


def write_chat_template(model_dir: Path, out: Path, model_type: str) -> None:
    """write_runtime_artifacts' template step (checkpoint_utils.py:919-925)."""
    dst = out / "processed_chat_template.json"
    if dst.exists():
        return
    chat_logger = logging.getLogger("tensorrt_edgellm.chat_template")
    try:
        data = chat_template_data(model_dir)
    except ValueError as e:
        chat_logger.warning("Jinja template extraction failed for %s (%s); trying hardcoded "
                            "fallback", model_dir, e)
        chat_logger.warning("No hardcoded template for model_type=%r; chat template skipped",
                            model_type)
        data = None
    else:
        if data is None:
            chat_logger.debug("No chat template found in %s; skipping", model_dir)
        else:
            dst.write_text(json.dumps(data, indent=2))
            chat_logger.info("Chat template saved to %s", dst)
            return
    fallback = {"model_path": str(model_dir),
                "roles": {"system": {"prefix": "", "suffix": "\n"},
                          "user": {"prefix": "User: ", "suffix": "\n"},
                          "assistant": {"prefix": "Assistant: ", "suffix": "\n"}},
                "content_types": {}, "generation_prompt": "Assistant: ",
                "default_system_prompt": ""}
    dst.write_text(json.dumps(fallback, indent=2))
    chat_logger.info("Wrote fallback processed_chat_template.json")


def external_weights(kinds: list[str], quant: str, config: dict, weights: dict,
                     out: Path, layers: int) -> list[dict]:
    """externalize_model_weights (external_weights.py:397-482)."""
    wlog = logging.getLogger("tensorrt_edgellm.external_weights")
    manifest = []
    hidden, inter = config["hidden_size"], config.get("intermediate_size", 0)
    for kind in kinds:
        if kind == "int4_ffn":
            if quant not in ck.INT4_TYPES:
                wlog.warning("External int4_ffn weights requested, but no dense FFN "
                             "Int4GroupwiseGemmPlugin initializers were found")
                continue
            tensors = {}
            for i in range(layers):
                for proj, shape in (("gate_proj", [inter, hidden // 2]),
                                    ("up_proj", [inter, hidden // 2]),
                                    ("down_proj", [hidden, inter // 2])):
                    tensors[f"model.layers.{i}.mlp.{proj}.qweight"] = ("U8", shape)
            name, manifest_kind = "external_int4_ffn_weights.safetensors", "int4_ffn_weights"
        elif kind == "lm_head":
            if "lm_head.weight" not in weights:
                wlog.warning("External lm_head weight requested, but no unique LM-head "
                             "initializer was found")
                continue
            tensors = {"lm_head.weight": ("F16", weights["lm_head.weight"]["shape"])}
            name, manifest_kind = "external_lm_head_weight.safetensors", "lm_head_weight"
        else:
            what = "Int4MoePlugin qweight" if kind == "int4_moe" else "NVFP4 MoE plugin initializer"
            wlog.warning("External %s weights requested, but no %s %s were found", kind, what,
                         "initializers" if kind == "int4_moe" else "inputs")
            continue
        ck.write_safetensors(out / name, tensors)
        manifest.append({"file": name, "kind": manifest_kind, "tensors": list(tensors)})
        wlog.info("Externalized %d tensor(s) to %s", len(tensors), out / name)
    return manifest


def export_llm(model_dir: Path, out: Path, args: argparse.Namespace, config: dict) -> None:
    """_export_llm (791-925) and export_onnx (onnx/export.py:71-126)."""
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    logger.info("[LLM] Loading checkpoint from %s", model_dir)
    try:
        weights = ck.tensors(model_dir)
        quant = ck.parse_quant(model_dir, config)
        digest, files = ck.checkpoint_sha256(model_dir)
        embed = next((v for k, v in weights.items() if k.endswith("embed_tokens.weight")), None)
        if embed is None:
            raise KeyError("model.embed_tokens.weight")
    except (OSError, ValueError, KeyError) as exc:
        logger.error("[LLM] Failed to load checkpoint", exc_info=exc)
        raise SystemExit(1) from exc
    kinds = ["int4_ffn", "int4_moe", "nvfp4_moe", "lm_head"] if "all" in \
        args.externalize_weights else list(dict.fromkeys(args.externalize_weights))
    logger.info("[LLM] Exporting to %s", onnx_path)
    try:
        lm_head_quantized = any(k.startswith("lm_head.") and k != "lm_head.weight"
                                for k in weights)
        if "lm_head" in kinds and lm_head_quantized:
            raise ValueError(f"--externalize-weights lm_head requires an fp16 LM head, but the "
                             f"checkpoint at {str(model_dir)!r} has lm_head quantized as "
                             f"{quant[0]!r}. Re-quantize without --lm_head_quantization, or omit "
                             "'lm_head' from --externalize-weights.")
        layers = args.num_decoder_layer or config["num_hidden_layers"]
        size = sum(ck.tensor_bytes(v) for k, v in weights.items() if "embed_tokens" not in k)
        header = {"producer": f"tensorrt-edgellm {__version__} (fake)",
                  "checkpoint_sha256": digest, "checkpoint_files": files,
                  "quantization": quant[0], "kv_cache_quant": quant[1],
                  "model_type": config.get("model_type"), "num_hidden_layers": layers,
                  "external_data": "model.onnx.data"}
        data = out / "model.onnx.data"
        with open(data, "wb") as f:
            f.write(ONNX_DATA_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
            f.truncate(max(size, f.tell()))
        onnx_path.write_bytes(ONNX_MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n")
        cfg = runtime_config(config, quant, args.num_decoder_layer)
        eos = config.get("eos_token_id")
        if eos is None and (model_dir / "generation_config.json").exists():
            eos = json.loads((model_dir / "generation_config.json").read_text()).get(
                "eos_token_id")
        if isinstance(eos, list):
            cfg["eos_token_id"] = [int(x) for x in eos]
        elif isinstance(eos, int):
            cfg["eos_token_id"] = [eos]
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
        util_logger.info("Wrote %s to %s", "config.json", out)
        vocab, hidden = embed["shape"]
        if args.fp8_embedding:
            if hidden % FP8_EMBEDDING_BLOCK_SIZE:
                raise ValueError(f"Hidden size {hidden} must be divisible by block size "
                                 f"{FP8_EMBEDDING_BLOCK_SIZE}")
            ck.write_safetensors(out / "embedding.safetensors", {
                "embedding": ("F8_E4M3", [vocab, hidden]),
                "embedding_scale": ("F32", [vocab, hidden // FP8_EMBEDDING_BLOCK_SIZE])})
            util_logger.info("Wrote FP8 embedding.safetensors (%s)", [vocab, hidden])
        else:
            ck.write_safetensors(out / "embedding.safetensors",
                                 {"embedding": ("F16", [vocab, hidden])})
            util_logger.info("Wrote embedding.safetensors (%s)", [vocab, hidden])
        for fname in RUNTIME_TOKENIZER_FILENAMES:
            if (model_dir / fname).exists():
                shutil.copy2(model_dir / fname, out / fname)
                util_logger.info("Copied %s", fname)
        write_chat_template(model_dir, out, config.get("model_type", ""))
        manifest = external_weights(kinds, quant[0], config, weights, out, layers)
        if manifest:
            cfg["external_weight_files"] = manifest
            (out / "config.json").write_text(json.dumps(cfg, indent=2))
            logging.getLogger("tensorrt_edgellm.external_weights").info(
                "Patched config.json with %d external weight file(s)", len(manifest))
    except (OSError, ValueError, RuntimeError) as exc:
        logger.error("[LLM] ONNX export failed", exc_info=exc)
        raise SystemExit(1) from exc
    logger.info("[LLM] Done: %s", onnx_path)


def main() -> None:
    os.umask(0o022)  # 2374-2380
    p = build_parser()
    args = p.parse_args()
    model_dir = resolve_model_dir(args.model)
    config = load_config(model_dir)
    model_type = config.get("model_type", "unknown")
    if args.dtype not in DTYPES:
        logger.error("Unknown dtype %r. Choose from: %s", args.dtype, ", ".join(DTYPES))
        sys.exit(1)
    check_args(p, args, config)
    for flag, given in (("--eagle-base", args.eagle_base), ("--mtp", args.mtp),
                        ("--dflash-base", args.dflash_base), ("--dflash-draft", args.dflash_draft),
                        ("--reduced-vocab-dir", args.reduced_vocab_dir),
                        ("--tp-size > 1", args.tp_size > 1)):
        if given:
            not_provided(flag)
    if model_type not in TEXT_MODEL_TYPES:
        not_provided(f"model_type {model_type!r} (only {', '.join(TEXT_MODEL_TYPES)})")
    requested = {c.strip() for c in args.components.split(",") if c.strip()}
    llm = not args.skip_llm and (not requested or "thinker" in requested)
    logger.info("=" * 60)
    logger.info("Model type    : %s", model_type)
    logger.info("Checkpoint    : %s", model_dir)
    logger.info("Output dir    : %s", args.output_dir)
    logger.info("  %-15s: %s", "thinker", "yes" if llm else "no")
    logger.info("FP8 embedding : %s", "yes" if args.fp8_embedding else "no")
    logger.info("External weights: %s", ", ".join(args.externalize_weights) or "no")
    logger.info("TP size       : %d", args.tp_size)
    logger.info("=" * 60)
    llm_dir = Path(args.output_dir) / "llm"
    if llm:
        export_llm(model_dir, llm_dir, args, config)
    print()
    print("=" * 60)
    print("Export complete")
    print(f"  output dir: {args.output_dir}")
    if llm_dir.is_dir():
        onnx = llm_dir / "model.onnx"
        mb = onnx.stat().st_size / 1e6 if onnx.exists() else 0
        print(f"  {'thinker':15s}: {onnx}  ({mb:.1f} MB)")
        for sidecar in ("embedding.safetensors", "external_int4_ffn_weights.safetensors",
                        "external_lm_head_weight.safetensors"):
            if (llm_dir / sidecar).exists():
                print(f"                   + {sidecar}  "
                      f"({(llm_dir / sidecar).stat().st_size / 1e6:.1f} MB)")
    print("=" * 60)


if __name__ == "__main__":
    main()
