#!/usr/bin/env python3
# Test fake of TensorRT Edge-LLM 0.9.1's build/examples/llm/llm_build (the ONNX-to-engine
# builder), shipped under that name in the fake runtime tarball
# (tests/fakes/edgellm/fake_edgellm_runtime.py). Source: TensorRT-Edge-LLM 0.9.1 (7f061f2),
# fork whitesscott/TensorRT-Edge-LLM; lines of examples/llm/llm_build.cpp (llm_build.cpp),
# cpp/builder/llmBuilder.cpp (llmBuilder.cpp), llmBuilder.h, builderUtils.cpp,
# cpp/common/fileUtils.cpp, cpp/common/version.cpp:
#   loader       a build for another CUDA/TensorRT major than the device's: ld.so's
#                "error while loading shared libraries", exit 127 (glibc's text)
#   options      getopt_long(argc, argv, "", buildOptions) over llm_build.cpp:103-117:
#                --opt value and --opt=value, unique prefixes (glibc), --eagleDraft and
#                --eagleBase aliases (112, 114); glibc's own messages for an unknown
#                option, an ambiguous prefix, a missing or unwanted argument; then
#                "Invalid Argument ? is (null)." (187), "Unable to parse builder args." and
#                the usage (196-201), exit 1; no argument at all: the same (196)
#   numbers      std::stoi (150-183): leading blanks and sign, digits up to the first
#                non-digit; none: uncaught std::invalid_argument, out of int range:
#                std::out_of_range; libstdc++'s terminate message, then SIGABRT
#   defaults     llm_build.cpp:49-64 (maxInputLen 1024, maxKVCacheCapacity 4096,
#                maxBatchSize 4, maxLoraRank 0, tree sizes 60)
#   --help       usage on stderr, exit 0 (124, 202-206)
#   config       <onnxDir>/config.json unreadable: "config.json not found in onnx
#                directory: DIR", exit 1 (217-224)
#   build        llmBuilder.cpp:166-322 in order: TRT version and __LUNOWUD (42-87,
#                168-177); plugin (trtUtils.h:60-92, not fatal); parseConfig (324-487:
#                version check, spec_decode_type/engine_role, required fields: a missing
#                one is an uncaught nlohmann type_error, abort); TensorRT builder (no CUDA
#                device: TensorRT's warning, "Failed to create TensorRT builder",
#                builderUtils.cpp:219-239); model.onnx or, with --maxLoraRank > 0,
#                lora_model.onnx (195-213; without the plugin TensorRT's ONNX parser
#                cannot create AttentionPlugin); optimization profiles (489-675,
#                1117-1139, builderUtils.cpp:56-96: min <= opt <= max, so maxInputLen < 2
#                or a batch < 1 fails); the engine directory, created
#                (std::filesystem::create_directories: throws, uncaught, abort, 242-251);
#                llm.engine / spec_base.engine / spec_draft.engine (253-273); config.json /
#                base_config.json / draft_config.json = the ONNX config plus
#                "builder_config" (llmBuilder.h:51-70) and num_deepstack_features, keys
#                sorted as nlohmann::json dumps them (1325-1440); tokenizer_config.json,
#                tokenizer.json, processed_chat_template.json (1442-1479: a missing one
#                fails the build AFTER the engine and config.json are written);
#                embedding.safetensors (1536-1658); external weight files (1660-1698):
#                each entry's "file" is joined to the ONNX and engine directories with no
#                check at all, so "../x" or "/abs" reads and writes outside them, exactly
#                as std::filesystem::path::operator/ does
#   copies       file_io::copyFile (fileUtils.cpp:29-62): a missing source is logged at
#                INFO and fails; same file: skipped; symlinks followed
#   TensorRT     an FP8/FP4 network on a GPU below compute 8.9 fails to build (Orin is
#                8.7; installation.md:184-185). TensorRT's texts are UNVERIFIED (closed
#                source; see fake_edgellm_common.py)
#   output       llm.engine is ENGINE_MAGIC + a JSON line (the ONNX's sha256, the
#                checkpoint and quantization the fake export recorded, the limits, the
#                TensorRT version and compute capability it was built with), sparse up
#                to the ONNX weights' size
"""llm_build: build a TensorRT Edge-LLM engine from an exported ONNX directory (test fake)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import fake_edgellm_common as c

HELP, ONNX_DIR, ENGINE_DIR, MAX_INPUT_LEN, MAX_KV, DEBUG, MAX_BATCH, MAX_LORA, SPEC_DRAFT, \
    SPEC_BASE, MAX_VERIFY, MAX_DRAFT, PROFILING = range(701, 714)  # llm_build.cpp:32-47
# buildOptions, llm_build.cpp:103-117: (name, takes an argument, id)
LONG_OPTIONS = [("help", False, HELP), ("onnxDir", True, ONNX_DIR),
                ("engineDir", True, ENGINE_DIR), ("maxInputLen", True, MAX_INPUT_LEN),
                ("maxKVCacheCapacity", True, MAX_KV), ("debug", False, DEBUG),
                ("maxBatchSize", True, MAX_BATCH), ("maxLoraRank", True, MAX_LORA),
                ("specDraft", False, SPEC_DRAFT), ("eagleDraft", False, SPEC_DRAFT),
                ("specBase", False, SPEC_BASE), ("eagleBase", False, SPEC_BASE),
                ("maxVerifyTreeSize", True, MAX_VERIFY), ("maxDraftTreeSize", True, MAX_DRAFT),
                ("profilingDetailed", False, PROFILING)]
INT_FIELDS = {MAX_INPUT_LEN: "maxInputLen", MAX_KV: "maxKVCacheCapacity",
              MAX_BATCH: "maxBatchSize", MAX_LORA: "maxLoraRank",
              MAX_VERIFY: "maxVerifyTreeSize", MAX_DRAFT: "maxDraftTreeSize"}
FLAGS = {DEBUG: "debug", SPEC_DRAFT: "specDraft", SPEC_BASE: "specBase",
         PROFILING: "profilingDetailed"}
DEFAULTS = {"help": False, "onnxDir": "", "engineDir": "", "maxInputLen": 1024,  # 49-64
            "maxKVCacheCapacity": 4096, "debug": False, "maxBatchSize": 4, "maxLoraRank": 0,
            "specDraft": False, "specBase": False, "maxVerifyTreeSize": 60,
            "maxDraftTreeSize": 60, "profilingDetailed": False}
USAGE = """Usage: {prog} [--help] --onnxDir <dir> --engineDir <dir> [--maxInputLen <int>] \
[--maxKVCacheCapacity <int>] [--maxBatchSize <int>] [--debug] [--maxLoraRank <int>]\
[--specDraft] [--specBase] [--maxVerifyTreeSize <int>] [--maxDraftTreeSize <int>] \
[--profilingDetailed]
Options:
  --help                    Display this help message
  --onnxDir                 Provide the input ONNX directory path. Required.{sp}
  --engineDir               Provide the output TensorRT engine directory path. Required.{sp}
  --maxInputLen             Provide the maximum input length for the model. Default = 1024
  --maxKVCacheCapacity      Provide the maximum KV cache capacity (sequence length). Default = 4096
  --maxBatchSize            Provide the maximum batch_size for builder. Default = 4
  --debug                   Use debug mode, which outputs more logs.
  --maxLoraRank             Maximum LoRA rank for dynamic LoRA adaptation. Default = 0 (no LoRA)
  --specDraft               Build as speculative decoding draft model (EAGLE/MTP/DFlash)
  --specBase                Build as speculative decoding base model (EAGLE/MTP/DFlash)
  --maxVerifyTreeSize       Maximum input_ids tokens for base model verification. Default = 60
  --maxDraftTreeSize        Maximum input_ids tokens for draft model generation. Default = 60
  --profilingDetailed       Enable detailed profiling verbosity to include ONNX op names in \
layer info. Use for DLSim analysis.

"""  # printUsage, llm_build.cpp:66-99: the missing space after "<int>]" and the trailing
# blanks ({sp}) are the real one's
LOW_PRECISION = {"fp8": "FP8", "mxfp8": "FP8", "nvfp4": "FP4"}
INT_MIN, INT_MAX = -(1 << 31), (1 << 31) - 1


class Abort(Exception):
    """An uncaught C++ exception: std::terminate prints this and calls abort()."""

    def __init__(self, type_name: str, what: str) -> None:
        super().__init__(f"terminate called after throwing an instance of '{type_name}'\n"
                         f"  what():  {what}")


def where(line: int, func: str, file: str = "llmBuilder.cpp") -> str:
    return f"{file}:{line}:{func}"


# ------------------------------------------------------------------ command line

def stoi(text: str) -> int:
    """std::stoi (libstdc++: strtol, base 10)."""
    m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if not m:
        raise Abort("std::invalid_argument", "stoi")
    value = int(m.group(1))
    if not INT_MIN <= value <= INT_MAX:
        raise Abort("std::out_of_range", "stoi")
    return value


def getopt_long(argv: list[str]):
    """glibc getopt_long(argc, argv, "", LONG_OPTIONS, NULL): yields (id, optarg) and
    '?' after printing glibc's message. Non-options are skipped (permuted to the end)."""
    prog = argv[0]
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            return
        if not arg.startswith("-") or arg == "-":
            continue
        if not arg.startswith("--"):
            print(f"{prog}: invalid option -- '{arg[1]}'", file=sys.stderr)
            yield "?", None
            continue
        body = arg[2:]
        name, eq, value = body.partition("=")
        exact = [o for o in LONG_OPTIONS if o[0] == name]
        if exact:
            found = exact[0]
        else:
            matches = [o for o in LONG_OPTIONS if o[0].startswith(name)]
            if not matches:
                print(f"{prog}: unrecognized option '--{body}'", file=sys.stderr)
                yield "?", None
                continue
            found = matches[0]
            others = [o for o in matches[1:] if (o[1], o[2]) != (found[1], found[2])]
            if others:
                listed = " ".join(f"'--{o[0]}'" for o in [found, *others])
                print(f"{prog}: option '--{body}' is ambiguous; possibilities: {listed}",
                      file=sys.stderr)
                yield "?", None
                continue
        opt_name, takes_arg, opt_id = found
        if eq and not takes_arg:
            print(f"{prog}: option '--{opt_name}' doesn't allow an argument", file=sys.stderr)
            yield "?", None
            continue
        if takes_arg and not eq:
            if i >= len(argv):
                print(f"{prog}: option '--{opt_name}' requires an argument", file=sys.stderr)
                yield "?", None
                continue
            value = argv[i]
            i += 1
        yield opt_id, (value if takes_arg else None)


def parse_args(argv: list[str]) -> dict | None:
    """parseLLMBuildArgs (llm_build.cpp:101-191): the arguments, or None when refused."""
    args = dict(DEFAULTS)
    for opt_id, optarg in getopt_long(argv):
        if opt_id == HELP:
            args["help"] = True
            return args
        if opt_id in (ONNX_DIR, ENGINE_DIR):
            args["onnxDir" if opt_id == ONNX_DIR else "engineDir"] = optarg
        elif opt_id in INT_FIELDS:
            args[INT_FIELDS[opt_id]] = stoi(optarg)
        elif opt_id in FLAGS:
            args[FLAGS[opt_id]] = True
        else:
            c.log("ERROR", "Invalid Argument ? is (null).", where(187, "parseLLMBuildArgs",
                                                                  "llm_build.cpp"))
            return None
    return args


# ------------------------------------------------------------------ build steps

def check_version(model_version: str) -> None:
    """version::checkVersion (version.cpp:73-119): logs only."""
    w = where(79, "checkVersion", "version.cpp")
    if not model_version:
        c.log("WARNING", f"Model does not have edgellm_version. Current runtime version: "
              f"{c.runtime_version()}", w)
    elif not re.fullmatch(r"\d+\.\d+\.\d+", model_version):
        c.log("ERROR", f"Invalid model version format: {model_version}. Expected "
              "major.minor.patch", where(87, "checkVersion", "version.cpp"))
    elif tuple(map(int, model_version.split(".")))[:2] < (0, 8):
        c.log("ERROR", f"ONNX model version {model_version} is no longer supported. Minimum "
              "supported version is 0.8.0 Please re-export your model with the latest "
              "tensorrt-edgellm.", where(94, "checkVersion", "version.cpp"))
    elif model_version != c.runtime_version():
        c.log("WARNING", f"Model version {model_version} does not match runtime version "
              f"{c.runtime_version()}. Consider re-exporting or re-building.",
              where(103, "checkVersion", "version.cpp"))


def number(config: dict, key: str) -> int:
    """mModelConfig[key].get<int32_t>(): a missing key reads as null and throws."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = {type(None): "null", str: "string", bool: "boolean", list: "array",
                dict: "object"}[type(value)]
        raise Abort("nlohmann::json_abi_v3_11_3::detail::type_error",
                    f"[json.exception.type_error.302] type must be number, but is {kind}")
    return int(value)


def parse_config(onnx_dir: Path, args: dict) -> dict | None:
    """LLMBuilder::parseConfig (llmBuilder.cpp:324-487)."""
    path = onnx_dir / "config.json"
    try:
        text = path.read_text()
    except OSError:
        c.log("ERROR", f"Failed to open config file: {path}",
              where(337, "loadJsonConfig", "builderUtils.cpp"))
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        c.log("ERROR", f"Failed to parse config file {path}: [json.exception.parse_error.101] "
              f"parse error at line {e.lineno}, column {e.colno}: syntax error while parsing "
              "value", where(349, "loadJsonConfig", "builderUtils.cpp"))
        return None
    check_version(config.get("edgellm_version", ""))
    spec = config.get("spec_decode_type", "none")
    role = config.get("engine_role", "llm")
    if spec not in ("none", "mtp", "eagle3", "dflash", "gemma4_mtp"):
        c.log("ERROR", f"Invalid spec_decode_type='{spec}'. Expected one of: none, mtp, eagle3, "
              "dflash, gemma4_mtp.", where(340, "parseConfig"))
        return None
    if role not in ("llm", "base", "draft"):
        c.log("ERROR", f"Invalid engine_role='{role}'. Expected one of: llm, base, draft.",
              where(346, "parseConfig"))
        return None
    if (role == "llm") != (spec == "none"):
        c.log("ERROR", f"Invalid config: engine_role='{role}' with spec_decode_type='{spec}'. "
              "LLM engines require spec_decode_type=none; speculative base/draft engines "
              "require a non-none spec_decode_type.", where(351, "parseConfig"))
        return None
    if (args["specDraft"] and role != "draft") or (args["specBase"] and role != "base") or \
            (not args["specDraft"] and not args["specBase"] and role != "llm"):
        c.log("ERROR", f"Build mode does not match config: engine_role='{role}' (use "
              "--specBase for base, --specDraft for draft, and neither flag for vanilla LLM).",
              where(360, "parseConfig"))
        return None
    for key in ("hidden_size", "num_key_value_heads", "num_attention_heads", "num_hidden_layers"):
        number(config, key)
    return config


def profiles_ok(config: dict, args: dict) -> bool:
    """setupLLMOptimizationProfiles, vanilla and spec-decode inputs (llmBuilder.cpp:489-696,
    1117-1139): every (min, opt, max) must satisfy min <= opt <= max per dimension."""
    b, length, kv = args["maxBatchSize"], args["maxInputLen"], args["maxKVCacheCapacity"]
    hidden = number(config, "hidden_size")
    head = int(config.get("head_dim") or hidden // number(config, "num_attention_heads"))
    kv_heads, layers = number(config, "num_key_value_heads"), number(config, "num_hidden_layers")
    rotary = int(head * float(config.get("partial_rotary_factor") or 1.0))
    profiles = [("context_lengths", [1], [b], [b]), ("context_lengths", [1], [b], [b]),
                ("kvcache_start_index", [0], [b], [b]), ("kvcache_start_index", [1], [b], [b])]
    for i in range(layers):
        shape = [b, 2, kv_heads, kv, head]
        profiles += [(f"past_key_values_{i}", [1, 2, kv_heads, 0, head], shape, shape)] * 2
    rope = [b, kv, rotary]
    profiles += [("rope_rotary_cos_sin", [1, kv, rotary], rope, rope)] * 2
    profiles.append(("inputs_embeds", [1, 1, hidden], [b, length // 2, hidden],
                     [b, length, hidden]))
    if args["specBase"] or args["specDraft"]:  # setupSpecDecodeProfiles, 677-696
        n = args["maxDraftTreeSize"] if args["specDraft"] else args["maxVerifyTreeSize"]
        profiles += [("inputs_embeds", [1, 1, hidden], [b, n // 2, hidden], [b, n, hidden]),
                     ("last_token_ids", [1, 1], [b, 1], [b, 1]),
                     ("last_token_ids", [1, 1], [b, n // 2], [b, n])]
    else:  # setupVanillaProfiles, 645-675
        profiles += [("inputs_embeds", [1, 1, hidden], [b, 1, hidden], [b, 1, hidden]),
                     ("last_token_ids", [1, 1], [b, 1], [b, 1]),
                     ("last_token_ids", [1, 1], [b, 1], [b, 1])]
    ok = True
    for name, lo, opt, hi in profiles:
        bad = next((i for i in range(len(lo)) if lo[i] > opt[i] or opt[i] > hi[i]), None)
        if bad is not None:
            c.log("ERROR", f"Condition min <= opt <= max violated at dimension index {bad}, "
                  f"min = {lo[bad]}, opt = {opt[bad]}, max = {hi[bad]}",
                  where(69, "checkOptimizationProfileDims", "builderUtils.cpp"))
            c.log("INFO", f"setOptimizationProfile: {name} is not valid",
                  where(90, "setOptimizationProfile", "builderUtils.cpp"))
            ok = False
    if not ok:
        c.log("ERROR", "Failed to setup optimization profiles", where(565,
                                                                      "setupLLMOptimizationProfiles"))
    return ok


def parse_onnx(onnx_file: Path, plugin_loaded: bool) -> dict | None:
    """parseOnnxModel (builderUtils.cpp:266-292) over the fake ONNX format."""
    header = c.read_tagged(onnx_file, c.ONNX_MAGIC) if onnx_file.is_file() else None
    failure = None
    if header is None:
        failure = [f"Failed to parse ONNX model from file: {onnx_file}!"]
    elif not (onnx_file.parent / header["external_data"]).is_file():
        failure = [f"Failed to open file: {onnx_file.parent / header['external_data']}"]
    elif not plugin_loaded:
        failure = [*c.missing_plugin_messages(),
                   "ModelImporter.cpp:954: ERROR: onnxOpCheckers.cpp:781 In function "
                   "checkFallbackPluginImporter:\n[6] creator && \"Plugin not found, are the "
                   "plugin name, version, and namespace correct?\""]
    if failure:
        for msg in failure:
            c.log("ERROR", msg, "TensorRT")
        c.log("ERROR", f"Failed to parse ONNX file: {onnx_file}",
              where(286, "parseOnnxModel", "builderUtils.cpp"))
        return None
    return header


def copy_file(src: Path, dst: Path) -> bool:
    """file_io::copyFile (fileUtils.cpp:29-62)."""
    w = "fileUtils.cpp:{}:copyFile"
    if not src.exists():
        c.log("INFO", f"Failed to open file for reading: {src}", w.format(36))
        return False
    try:
        if dst.exists() and os.path.samefile(src, dst):
            c.log("INFO", "Source and target file path are same, skip copying.", w.format(42))
            return True
        if src.is_dir():  # std::filesystem::copy of a directory, no recursive option
            dst.mkdir(exist_ok=True)
            for entry in src.iterdir():
                if entry.is_file():
                    shutil.copyfile(entry, dst / entry.name)
        else:
            shutil.copyfile(src, dst)
            shutil.copymode(src, dst)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        c.log("ERROR", f"Error copying {src} to {dst} - filesystem error: cannot copy: "
              f"{reason} [{src}] [{dst}]", w.format(54))
        return False
    c.log("INFO", f"Successfully copied {src} to {dst}", w.format(48))
    return True


def builder_config(args: dict) -> dict:
    """LLMBuilderConfig::toJson (llmBuilder.h:51-70)."""
    out = {"max_input_len": args["maxInputLen"], "spec_draft": args["specDraft"],
           "spec_base": args["specBase"], "max_batch_size": args["maxBatchSize"],
           "max_lora_rank": args["maxLoraRank"],
           "max_kv_cache_capacity": args["maxKVCacheCapacity"]}
    if args["specBase"]:
        out["max_verify_tree_size"] = args["maxVerifyTreeSize"]
    if args["specDraft"]:
        out["max_draft_tree_size"] = args["maxDraftTreeSize"]
    return out


def external_name(name: str, args: dict) -> str:
    return "draft_" + name if args["specDraft"] else name  # externalWeightDstName, 1315-1322


def copy_outputs(onnx_dir: Path, engine_dir: Path, config: dict, args: dict) -> bool:
    """copyConfig .. copyExternalWeightFiles (llmBuilder.cpp:290-321, 1325-1698)."""
    name = {True: "draft_config.json"}.get(args["specDraft"]) or \
        ("base_config.json" if args["specBase"] else "config.json")
    out = dict(config)
    out["builder_config"] = builder_config(args)
    files = out.get("external_weight_files")
    if isinstance(files, list):
        out["external_weight_files"] = [
            {**e, "file": external_name(e["file"], args)}
            if isinstance(e, dict) and isinstance(e.get("file"), str) else e for e in files]
    out["num_deepstack_features"] = 0
    target = engine_dir / name
    try:
        target.write_text(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False))
    except OSError:
        c.log("ERROR", f"Failed to open target config file: {target}", where(1432, "copyConfig"))
        return False
    c.log("INFO", f"Copied config.json with builder config to {target}", where(1438, "copyConfig"))
    if not args["specDraft"] and not config.get("use_embeddings_input", False):
        ok = True
        for fname in ("tokenizer_config.json", "tokenizer.json", "processed_chat_template.json"):
            if copy_file(onnx_dir / fname, engine_dir / fname):
                c.log("INFO", f"Copied tokenizer file: {fname}", where(1469, "copyTokenizerFiles"))
            else:
                c.log("WARNING", f"Failed to copy tokenizer file {fname}",
                      where(1473, "copyTokenizerFiles"))
                ok = False
        if not ok:
            return False
    if config.get("spec_decode_type") == "eagle3" and config.get("engine_role") == "draft" and \
            not copy_file(onnx_dir / "d2t.safetensors", engine_dir / "d2t.safetensors"):
        c.log("WARNING", f"Failed to copy d2t.safetensors to {engine_dir / 'd2t.safetensors'}",
              where(1495, "copyEagleFiles"))
        return False
    if int(config.get("reduced_vocab_size", 0) or 0) > 0:
        vocab_map = "draft_vocab_map.safetensors" if args["specDraft"] else "vocab_map.safetensors"
        if not copy_file(onnx_dir / vocab_map, engine_dir / vocab_map):
            c.log("ERROR", f"{vocab_map} not found in {onnx_dir} but reduced_vocab_size > 0; the "
                  "sidecar is required for the runtime to remap reduced->full vocabulary IDs.",
                  where(1524, "copyVocabMappingFiles"))
            return False
    if not args["specDraft"]:
        src, dst = onnx_dir / "embedding.safetensors", engine_dir / "embedding.safetensors"
        if not copy_file(src, dst):
            c.log("ERROR", f"Failed to copy embedding.safetensors from {src} to {dst}",
                  where(1636, "copyEmbeddingFile"))
            return False
        c.log("INFO", f"Copied embedding.safetensors to {dst}", where(1632, "copyEmbeddingFile"))
    files = config.get("external_weight_files", [])
    if not isinstance(files, list):
        c.log("ERROR", "external_weight_files must be an array when present in config.json",
              where(1665, "copyExternalWeightFiles"))
        return False
    ok = True
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)):
            c.log("ERROR", f"Malformed external weight file entry: {json.dumps(entry)}",
                  where(1678, "copyExternalWeightFiles"))
            return False
        filename = entry["file"]
        dst_name = external_name(filename, args)
        # NO containment check, as in llmBuilder.cpp:1681-1684: "../x" and "/abs" escape
        src, dst = onnx_dir / filename, engine_dir / dst_name
        if copy_file(src, dst):
            c.log("INFO", f"Copied external weight file: {filename} -> {dst_name}",
                  where(1688, "copyExternalWeightFiles"))
        else:
            c.log("ERROR", f"Failed to copy external weight file {filename} from {src} to {dst}",
                  where(1692, "copyExternalWeightFiles"))
            ok = False
    return ok


def lunowud(max_batch: int) -> str:
    """applyMyelinCompileWorkarounds (llmBuilder.cpp:59-84), for the build's TensorRT."""
    major, minor = (int(x) for x in c.build_info()["FAKE_TENSORRT_VERSION"].split(".")[:2])
    flags = os.environ.get("__LUNOWUD", "")

    def add(flag: str) -> None:
        nonlocal flags
        if flag not in flags:
            flags = f"{flags} {flag}" if flags else flag
    if major == 10 and minor in (13, 14):
        add("-peep:match_dual_gemm=off")
    if major >= 11 or (major == 10 and minor >= 15):
        for flag in ("-mlir:autotune:num_threads=1", "-mlir:collective:fp4=off",
                     "-cask_fusion:async_policy=1"):
            add(flag)
        if max_batch == 1:
            add("-peep:fc_h_fusion=off")
    return flags


def build(args: dict) -> bool:
    """LLMBuilder::build (llmBuilder.cpp:166-322)."""
    onnx_dir, engine_dir = Path(args["onnxDir"]), Path(args["engineDir"])
    dev = c.device()
    c.log("INFO", f"Using TRT_VERSION={c.build_info()['FAKE_TENSORRT_VERSION']}",
          where(170, "build"))
    flags = lunowud(args["maxBatchSize"])
    if flags:
        os.environ["__LUNOWUD"] = flags
        c.log("INFO", f"Using __LUNOWUD={flags}", where(175, "build"))
    plugin_loaded = c.load_plugin()
    config = parse_config(onnx_dir, args)
    if config is None:
        return False
    if int(dev["gpus"]) < 1:  # nvinfer1::createInferBuilder returns null
        c.log("WARNING", c.cuda_init_failure(), "TensorRT")
        c.log("ERROR", "Failed to create TensorRT builder",
              where(225, "createBuilderAndNetwork", "builderUtils.cpp"))
        return False
    if args["maxLoraRank"] > 0:
        onnx_file = onnx_dir / "lora_model.onnx"
        c.log("INFO", f"Parsing LoRA-enabled ONNX model: {onnx_file}", where(200, "build"))
    else:
        onnx_file = onnx_dir / "model.onnx"
        c.log("INFO", f"Parsing ONNX model: {onnx_file}", where(205, "build"))
    onnx = parse_onnx(onnx_file, plugin_loaded)
    if onnx is None:
        return False
    if args["profilingDetailed"]:
        c.log("INFO", "Profiling verbosity set to DETAILED", where(231, "build"))
    if not profiles_ok(config, args):
        return False
    if not engine_dir.exists():
        try:
            engine_dir.mkdir(parents=True)
        except OSError as e:
            raise Abort("std::filesystem::__cxx11::filesystem_error",
                        f"filesystem error: cannot create directories: {os.strerror(e.errno)} "
                        f"[{engine_dir}]") from None
        c.log("INFO", f"Created directory {engine_dir} for saving LLM engine.", where(250, "build"))
    engine_name = "spec_draft.engine" if args["specDraft"] else \
        "spec_base.engine" if args["specBase"] else "llm.engine"
    precision = LOW_PRECISION.get(onnx.get("quantization", "fp16")) or \
        ("FP8" if config.get("kv_cache_dtype") == "fp8" else None)
    if precision and tuple(int(x) for x in str(dev["sm"]).split(".")) < (8, 9):
        c.log("ERROR", f"IBuilder::buildSerializedNetwork: Error Code 9: API Usage Error "
              f"(Networks with {precision} precision require hardware with {precision} "
              "support.)", "TensorRT")
        c.log("ERROR", "Failed to build serialized engine",
              where(307, "buildAndSerializeEngine", "builderUtils.cpp"))
        return False
    engine_file = engine_dir / engine_name
    data_file = onnx_file.parent / onnx["external_data"]
    header = {"edgellm_version": c.build_info()["CMAKE_PROJECT_VERSION"],
              "tensorrt_version": dev["tensorrt"], "compute_capability": dev["sm"],
              "onnx_file": onnx_file.name, "onnx_sha256": c.sha256_file(onnx_file),
              "onnx_data_sha256": c.sha256_file(data_file),
              "checkpoint_sha256": onnx.get("checkpoint_sha256"),
              "quantization": onnx.get("quantization"), "model": config.get("model"),
              "plugins": c.PLUGIN_OPS, **builder_config(args)}
    try:
        c.write_tagged(engine_file, c.ENGINE_MAGIC, header, data_file.stat().st_size + (1 << 20))
    except OSError:
        c.log("ERROR", f"Failed to open file for writing: {engine_file}",
              where(315, "buildAndSerializeEngine", "builderUtils.cpp"))
        return False
    c.log("INFO", f"Engine saved to {engine_file}", where(328, "buildAndSerializeEngine",
                                                         "builderUtils.cpp"))
    return copy_outputs(onnx_dir, engine_dir, config, args)


def main(argv: list[str]) -> int:
    missing = c.missing_shared_library()
    if missing:
        print(f"{argv[0]}: error while loading shared libraries: {missing}: cannot open shared "
              "object file: No such file or directory", file=sys.stderr)
        return 127
    args = parse_args(argv) if len(argv) >= 2 else None
    if args is None:
        c.log("ERROR", "Unable to parse builder args.", where(198, "main", "llm_build.cpp"))
        sys.stderr.write(USAGE.format(prog=argv[0], sp=" "))
        return 1
    if args["help"]:
        sys.stderr.write(USAGE.format(prog=argv[0], sp=" "))
        return 0
    c.set_debug(args["debug"])
    try:
        with open(args["onnxDir"] + "/config.json"):
            pass
    except OSError:
        c.log("ERROR", f"config.json not found in onnx directory: {args['onnxDir']}",
              where(222, "main", "llm_build.cpp"))
        return 1
    if not build(args):
        c.log("ERROR", "Failed to build LLM engine.", where(243, "main", "llm_build.cpp"))
        return 1
    c.log("INFO", "LLM engine built successfully.", where(247, "main", "llm_build.cpp"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Abort as e:
        sys.stdout.flush()
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        os.abort()
