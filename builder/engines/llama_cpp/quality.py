"""How close a GGUF quantization stays to the unquantized model, measured on this machine
with llama.cpp's own llama-perplexity (tools/perplexity/perplexity.cpp in the pinned
source), the way llama.cpp users check a quantization by hand:

1. the reference (the F16 GGUF the pipeline converts) reads a text in chunks of `ctx`
   tokens and `--kl-divergence-base FILE` saves its token distributions and the tokens
   (one cache entry per reference, text and settings);
2. each quantization reads the same text the same way into a file of its own, and
   `compare` gives what `--kl-divergence` would print against the first: the mean KL
   divergence of its distributions from the reference's, how often its most likely
   token is the reference's ("Same top p"), and its perplexity against the reference's
   (one cache entry per quantized file and reference: the model's quality, kept with
   it; `measure` says why it is computed here).

Only the second half of each chunk is scored (llama-perplexity's `first = n_ctx/2`), so a
scored token always has at least ctx/2 tokens of context.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...cache import Cache, Entry, sha256_file
from ...errors import BuilderError, display_path
from ...model.pipeline import Fetched
from ...progress import step
from ...run import run
from .settings import LlamaCppSettings

TOOL = "llama-perplexity"


@dataclass(frozen=True)
class Text:
    """What the reference and the quantizations read."""

    corpus: Path
    ctx: int  # tokens per chunk (-c)
    chunks: int  # chunks read (--chunks); fewer when the text is shorter

    def to_json(self) -> dict[str, Any]:
        return {"corpus": display_path(self.corpus), "ctx": self.ctx, "chunks": self.chunks}


def base_command(tool: Path, reference: Path, text: Text, out: Path, threads: int
                 ) -> list[str]:
    return [str(tool), "-m", str(reference), "-f", str(text.corpus), "-c", str(text.ctx),
            "--chunks", str(text.chunks), "-t", str(threads), "--kl-divergence-base",
            str(out)]


# --- llama-perplexity's logits file ---------------------------------------------------
# perplexity.cpp perplexity() with --kl-divergence-base FILE: "_logits_", n_ctx, n_vocab,
# n_chunk (int32), the n_chunk*n_ctx tokens (int32), then per chunk and per scored token
# (the n_ctx-1-n_ctx/2 after the first half) nv = 2*((n_vocab+1)/2)+4 uint16: the token's
# log-probabilities as (scale, min_log_prob) (two float32) and n_vocab steps of `scale`
# above min_log_prob, the smallest kept 16 below the largest (log_softmax, lines 79-107).

@dataclass(frozen=True)
class Logits:
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: Any  # int32 [n_chunk * n_ctx]
    rows: Any  # uint16 [n_chunk * scored, nv], memory-mapped

    @property
    def scored(self) -> int:
        return self.n_ctx - 1 - self.n_ctx // 2

    def targets(self) -> Any:
        """The token each row predicts (tokens[i+1] of the scored positions)."""
        import numpy as np

        first = self.n_ctx // 2
        t = self.tokens.reshape(self.n_chunk, self.n_ctx)
        return np.ascontiguousarray(t[:, first + 1:]).reshape(-1)

    def log_probs(self, lo: int, hi: int) -> Any:
        """Rows lo..hi as float32 log-probabilities [rows, n_vocab]."""
        import numpy as np

        r = np.asarray(self.rows[lo:hi])
        head = r[:, :4].copy().view(np.float32)  # (scale, min_log_prob) per row
        return (r[:, 4:4 + self.n_vocab].astype(np.float32) * head[:, :1] + head[:, 1:2])


def read_logits(path: Path) -> Logits:
    """The file at `path` (ValueError when it is not a whole one: llama-perplexity
    writes only its first 12 bytes when the text is shorter than two chunks, and exits
    0)."""
    import numpy as np

    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(8) != b"_logits_":
            raise ValueError(f"{path.name}: not a llama-perplexity logits file")
        head = np.fromfile(f, dtype="<i4", count=3).tolist()
    if len(head) < 3 or min(head) < 1:
        raise ValueError(f"{path.name} holds no scored tokens: the text is shorter than "
                         "two chunks")
    n_ctx, n_vocab, n_chunk = head
    offset = 8 + 12 + 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    scored = n_ctx - 1 - n_ctx // 2
    expected = offset + 2 * n_chunk * scored * nv
    if size != expected:
        raise ValueError(f"{path.name} is {size} bytes, not the {expected} its header "
                         "gives (cut short?)")
    tokens = np.fromfile(path, dtype="<i4", count=n_chunk * n_ctx, offset=20)
    rows = np.memmap(path, dtype="<u2", mode="r", offset=offset, shape=(n_chunk * scored, nv))
    return Logits(n_ctx, n_vocab, n_chunk, tokens, rows)


def compare(base: Logits, q: Logits, *, block: int = 64) -> dict[str, float]:
    """llama-perplexity --kl-divergence's statistics (kl_divergence(), log_softmax lines
    191-253: the KL divergence of q from base summed over base's tokens above e^-16,
    whether both put the same token first, the log ratio of their perplexities), from two
    logits files of the same tokens. llama-perplexity takes q's exact logits; its file
    keeps them to 16 bits and floors every token more than 16 nats below q's first at
    that floor, so where q puts a token the base finds likely further down than that (a
    badly broken quantization), the divergence here is a lower bound: still large."""
    import numpy as np

    if (base.n_ctx, base.n_vocab, base.n_chunk) != (q.n_ctx, q.n_vocab, q.n_chunk):
        raise ValueError(f"the logits differ in shape: context, vocabulary, chunks "
                         f"{(base.n_ctx, base.n_vocab, base.n_chunk)} vs "
                         f"{(q.n_ctx, q.n_vocab, q.n_chunk)}")
    if not np.array_equal(base.tokens, q.tokens):
        at = int(np.argmax(base.tokens != q.tokens))
        raise ValueError(f"the two models read different tokens from the text (the first "
                         f"at position {at}): their tokenizers differ")
    targets = base.targets()
    kld, same, nll_ratio = [], [], []
    for lo in range(0, len(targets), block):
        hi = min(lo + block, len(targets))
        b, m = base.log_probs(lo, hi), q.log_probs(lo, hi)
        keep = b > -16.0
        kld.append(np.where(keep, np.exp(b) * (b - m), 0.0).sum(axis=1))
        same.append(b.argmax(axis=1) == m.argmax(axis=1))
        rows = np.arange(hi - lo)
        tok = targets[lo:hi]
        nll_ratio.append(b[rows, tok] - m[rows, tok])  # ln PPL(Q)/PPL(base) per token
    k, s, r = (np.concatenate(x).astype(np.float64) for x in (kld, same, nll_ratio))
    n = len(k)

    def unc(x: Any) -> float:
        return float(x.std() / np.sqrt(n - 1)) if n > 1 else 0.0

    top1 = float(s.mean())
    return {"kld_mean": float(k.mean()), "kld_mean_uncertainty": unc(k),
            "kld_p99": float(np.percentile(k, 99.0)), "kld_max": float(k.max()),
            "top1_percent": 100 * top1,
            "top1_percent_uncertainty": 100 * float(np.sqrt(top1 * (1 - top1) / (n - 1)))
            if n > 1 else 0.0,
            "ppl_ratio": float(np.exp(r.mean())), "tokens": n, "chunks": base.n_chunk}


def save_logits(tool: Path, model: Path, text: Text, out: Path, threads: int,
                log_file: Path | None, what: str) -> None:
    with step(what) as line:
        run(base_command(tool, model, text, out, threads),
            what=f"{TOOL} --kl-divergence-base", log_file=log_file, on_line=line)


def base(reference: Path, reference_sha: str, tool: Path, tool_id: str, text: Text,
         cache: Cache, threads: int) -> Entry:
    """The reference's distributions over the text (a cache entry)."""
    inputs = {"op": "kld-base", "reference": reference_sha, "tool": tool_id,
              "corpus": sha256_file(text.corpus), "ctx": text.ctx, "chunks": text.chunks}

    def make(out: Path, log_file: Path) -> None:
        save_logits(tool, reference, text, out / "base.kld", threads, log_file,
                    f"the reference's token distributions ({TOOL}, {text.chunks} chunks of "
                    f"{text.ctx} tokens of {display_path(text.corpus)})")
        try:
            read_logits(out / "base.kld")
        except ValueError as e:
            raise BuilderError(f"{display_path(text.corpus)} with --ctx {text.ctx}: {e}; "
                               "lower --ctx or give a longer --corpus") from None

    return cache.get_or_build("quality", inputs, make,
                              label=f"reference distributions of {reference.name}")


def measure(model: Path, model_sha: str, quant: str, base_entry: Entry, tool: Path,
            text: Text, cache: Cache, threads: int, *, of: dict[str, str]) -> dict[str, Any]:
    """The quality of `model` against the reference of `base_entry` (a cache entry: the
    model's quality, kept by its sha256). Its distributions are saved as the reference's
    were, then compared here (`compare`): llama-perplexity --kl-divergence prints the
    same statistics, but through an asynchronous logger the pinned release never flushes
    before it exits (common/log.cpp common_log_main(): "logs may be lost if not flushed
    before the program exits"), and its summary, printed last, was lost in 2 of 3 runs
    here; the logits file is written and closed before it exits. `of` names what was
    measured (the engine, the catalog model and where its weights came from), for
    `builder models list`."""
    # 2: the result names what was measured (of), which is part of the key so that the
    # same file measured as another model or from another origin is listed as that
    inputs = {"op": "kld", "base": base_entry.key, "model": model_sha, "compare": 2, "of": of}

    def make(out: Path, log_file: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="quality-", dir=cache.dir("tmp")) as tmp:
            mine = Path(tmp) / "model.kld"
            save_logits(tool, model, text, mine, threads, log_file,
                        f"{quant}: its token distributions ({TOOL})")
            try:
                found = compare(read_logits(base_entry.out / "base.kld"), read_logits(mine))
            except ValueError as e:
                raise BuilderError(f"{model.name} against the reference: {e}") from None
        (out / "quality.json").write_text(json.dumps(
            {"quant": quant, "model_sha256": model_sha, "reference": base_entry.key,
             "text": text.to_json(), **of, "bytes": model.stat().st_size, **found},
            indent=2) + "\n")

    entry = cache.get_or_build("quality", inputs, make, label=f"quality of {quant}")
    return json.loads((entry.out / "quality.json").read_text())


def of_quants(s: LlamaCppSettings, fetched: Fetched, quants: list[str], text: Text,
              cache: Cache, *, of: dict[str, str], source_base: Path | None, threads: int
              ) -> list[dict[str, Any]]:
    """Each of `quants` made from the checkpoint (the pipeline's own cache entries) and
    measured against its F16 conversion; `of`: the engine and catalog model measured."""
    from . import build as build_mod
    from . import source as sources
    from .convert import convert, output_sha, quantize

    if fetched.kind != "hf":
        raise BuilderError(f"{fetched.origin}: quality is measured against the unquantized "
                           "model; give its Hugging Face checkpoint (the profile's "
                           "model.source, --model-file DIR or --synthetic), not a "
                           f"{fetched.kind.upper()} file")
    if not text.corpus.is_file():
        raise BuilderError(f"{display_path(text.corpus)}: no such text (Debian's base-files "
                           "ships it); give another English text with --corpus FILE")
    src = sources.llama_cpp(s.source, cache, base_dir=source_base)
    ref, ref_sha = output_sha(convert(fetched, src, cache))
    tools = build_mod.host_tools(s, cache, base_dir=source_base)
    tool = tools.tool(TOOL)
    if not tool.is_file():
        raise BuilderError(f"{display_path(tool)}: the llama.cpp build has no {TOOL}; "
                           "rebuild it with `builder engine build`")
    reference = base(ref, ref_sha, tool, tools.entry.key, text, cache, threads)
    out = []
    for quant in quants:
        path, sha = (ref, ref_sha) if quant == "F16" else output_sha(quantize(
            ref, ref_sha, quant, tools.tool("llama-quantize"), tools.entry.key, cache))
        out.append(measure(path, sha, quant, reference, tool, text, cache, threads,
                           of={**of, "origin": fetched.origin}))
    return out
