#!/usr/bin/env python3
# Test fake of TensorRT Edge-LLM 0.9.1's build/examples/llm/llm_inference (the batch
# inference CLI), shipped under that name in the fake runtime tarball so the build tree has
# the real file names. The appliance does not run it (it serves through the pybind module).
# Source: TensorRT-Edge-LLM 0.9.1 (7f061f2), examples/llm/llm_inference.cpp:
#   loader   like llm_build (fake_edgellm_common.missing_shared_library)
#   --help   printUsage (141-186) on stderr, exit 0 (523-527)
#   else     NOT provided: this stand-in refuses with one line, exit 1 (the real one
#            reads --inputFile, input-format.md, and writes --outputFile)
"""llm_inference: batch inference from a JSON input file (test fake: usage only)."""

from __future__ import annotations

import sys

import fake_edgellm_common as c

USAGE = """Usage: {prog} [--help] [--engineDir=<path to engine directory>] \
[--multimodalEngineDir=<path to multimodal engine directory>] [--inputFile=<path to input \
file>] [--outputFile=<path to output file>] [--dumpProfile] [--profileOutputFile=<path to \
profile output file>] [--warmup=<number>] [--debug] [--dumpOutput] [--batchSize=<number>] \
[--maxGenerateLength=<number>] [--specDecode] [--specDraftTopK=<number>] \
[--specDraftStep=<number>] [--specVerifySize=<number>] [--dflashBlockSize=<number>]
Options:
  --help                    Display this help message
  --inputFile               Path to input JSON file with requests
  --engineDir               Path to engine directory
  --multimodalEngineDir     Path to multimodal engine directory (optional)
  --outputFile              Path to output JSON file (optional)
  --dumpProfile             Dump profiling summary to console
  --profileOutputFile       Path to profile JSON output file (optional)
  --warmup                  Number of warmup runs using the first request (default: 0)
  --debug                   Enable debug logging
  --dumpOutput              Dump inference output to console
  --batchSize               Override batch size from input file
  --maxGenerateLength       Override max generate length from input file
                            NOTE: For sampling parameters (temperature, top_p, top_k),
                            please specify them in the input JSON file instead of CLI
  --numLogprobs             Number of top log-probabilities to return per token \
(0 = disabled, max 50)
  --specDecode              Enable speculative decoding (EAGLE, MTP, or DFlash)
  --specDraftTopK           Number of tokens selected per drafting step (default: 10)
                            For DFlash: candidateTopK; 1 is linear, >1 enables branching DDTree
  --specDraftStep           Number of drafting steps to perform (default: 6)
                            DFlash requires this to be 1; use dflashBlockSize for proposal horizon
  --specVerifySize          Number of proposal tokens for base verification (default: 60)
  --dflashBlockSize         DFlash proposal block size; 0 means infer from engine config

Qwen3-Omni Audio Output Options:
  --enableAudioOutput       Enable audio output from Thinker hidden states
  --talkerEngineDir         Path to Talker engine directory
  --code2wavEngineDir       Path to Code2Wav engine directory (optional)
  --outputAudioDir          Directory to save generated audio (.wav) files
"""


def main(argv: list[str]) -> int:
    missing = c.missing_shared_library()
    if missing:
        print(f"{argv[0]}: error while loading shared libraries: {missing}: cannot open shared "
              "object file: No such file or directory", file=sys.stderr)
        return 127
    if "--help" in argv[1:]:
        sys.stderr.write(USAGE.format(prog=argv[0]))
        return 0
    print(f"{argv[0]}: fake: batch inference is not provided by this stand-in of "
          "llm_inference (the appliance serves through _edgellm_runtime)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
