"""`builder model quality`: each quantization's distance from the unquantized model,
measured with llama.cpp's own llama-perplexity (--kl-divergence-base, --kl-divergence),
cached with the quantized file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from builder.engines.llama_cpp import quality
from builder.errors import display_path

# llama-perplexity --kl-divergence's own summary lines (kl_divergence()'s LOG lines),
# which the measurement here is held to
_NUM = r"([-+0-9.eE]+|nan|inf)"
_LINES = {
    "kld_mean": rf"^Mean\s+KLD:\s+{_NUM}\s+±\s+{_NUM}",
    "kld_p99": rf"^99\.0%\s+KLD:\s+{_NUM}",
    "top1_percent": rf"^Same top p:\s+{_NUM}\s+±\s+{_NUM}\s+%",
    "ppl_ratio": rf"^Mean PPL\(Q\)/PPL\(base\)\s+:\s+{_NUM}\s+±\s+{_NUM}",
}


def read_summary(text: str) -> dict[str, float]:
    """The summary in llama-perplexity --kl-divergence's output (ValueError when it has
    none)."""
    out: dict[str, float] = {}
    for key, pattern in _LINES.items():
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise ValueError(f"no {key} line")
        out[key] = float(m.group(1))
        if key in ("kld_mean", "top1_percent"):
            out[f"{key}_uncertainty"] = float(m.group(2))
    return out

# llama-perplexity's summary of a --kl-divergence run (pinned llama.cpp,
# tools/perplexity/perplexity.cpp kl_divergence()), as it printed it for the tiny random
# model's Q4_K_M against its F16 (2 chunks of 128 tokens of GPL-3)
SAMPLE = """====== Perplexity statistics ======
Mean PPL(Q)                   : 826.654493 ±  32.593454
Mean PPL(base)                : 826.858241 ±  32.547671
Cor(ln(PPL(Q)), ln(PPL(base))):  99.99%
Mean ln(PPL(Q)/PPL(base))     :  -0.000246 ±   0.000578
Mean PPL(Q)/PPL(base)         :   0.999754 ±   0.000578
Mean PPL(Q)-PPL(base)         :  -0.203747 ±   0.476792

====== KL divergence statistics ======
Mean    KLD:   0.000017 ±   0.000000
Maximum KLD:   0.000030
99.9%   KLD:   0.000029
99.0%   KLD:   0.000025
95.0%   KLD:   0.000021
90.0%   KLD:   0.000021
Median  KLD:   0.000018
10.0%   KLD:   0.000013
 5.0%   KLD:   0.000012
 1.0%   KLD:   0.000011
 0.1%   KLD:   0.000009
Minimum KLD:   0.000009

====== Token probability statistics ======
Mean    Δp:  0.000 ± 0.000 %
Maximum Δp:  0.003%
99.9%   Δp:  0.003%
99.0%   Δp:  0.003%
95.0%   Δp:  0.001%
90.0%   Δp:  0.001%
75.0%   Δp:  0.000%
Median  Δp:  0.000%
25.0%   Δp: -0.000%
10.0%   Δp: -0.001%
 5.0%   Δp: -0.001%
 1.0%   Δp: -0.001%
 0.1%   Δp: -0.002%
Minimum Δp: -0.002%
RMS Δp    :  0.001 ± 0.000 %
Same top p: 99.206 ± 0.794 %
"""


def test_the_summary_llama_perplexity_prints_is_read() -> None:
    r = read_summary(SAMPLE)
    assert r["kld_mean"] == 0.000017 and r["kld_mean_uncertainty"] == 0.0
    assert r["kld_p99"] == 0.000025
    assert r["top1_percent"] == 99.206 and r["top1_percent_uncertainty"] == 0.794
    assert r["ppl_ratio"] == 0.999754


def test_a_run_that_printed_no_summary_has_none() -> None:
    # kl_divergence() logs an error and returns (exit status 0) on a mismatched base file
    out = ("kl_divergence: model.kld has been computed with 256, while the current context "
           "is 128. Increase it with -c and retry\n")
    with pytest.raises(ValueError, match="kld_mean"):
        read_summary(out)


def _logits_file(path: Path, tokens: list[int], log_probs: list[list[float]],
                 n_ctx: int) -> None:
    """A logits file as perplexity.cpp writes one (one chunk), from exact log-probs."""
    import numpy as np

    n_vocab = len(log_probs[0])
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = []
    for lp in log_probs:
        lp = np.asarray(lp, dtype=np.float32)
        top = lp.max()
        low = max(lp.min(), top - 16)
        scale = (top - low) / 65535
        row = np.zeros(nv, dtype="<u2")
        row[:4] = np.array([scale, low], dtype="<f4").view("<u2")
        if scale:  # all equal: every step 0 (log_softmax's memset)
            row[4:4 + n_vocab] = np.where(lp > low, np.rint((lp - low) / scale), 0)
        rows.append(row)
    with path.open("wb") as f:
        f.write(b"_logits_")
        np.array([n_ctx, n_vocab, 1], dtype="<i4").tofile(f)
        np.array(tokens, dtype="<i4").tofile(f)
        np.stack(rows).tofile(f)


def test_the_statistics_are_llama_perplexitys_from_its_logits_files(tmp_path: Path) -> None:
    """KL divergence, top token and perplexity ratio from two logits files, by hand."""
    import math

    n_ctx = 6  # scored: positions 3 and 4 (n_ctx - 1 - n_ctx/2 = 2), predicting 4 and 5
    tokens = [0, 1, 2, 3, 0, 1]
    p = [[math.log(0.7), math.log(0.2), math.log(0.1)],
         [math.log(0.25), math.log(0.25), math.log(0.5)]]
    q = [[math.log(0.6), math.log(0.3), math.log(0.1)],
         [math.log(0.3), math.log(0.4), math.log(0.3)]]
    _logits_file(tmp_path / "p.kld", tokens, p, n_ctx)
    _logits_file(tmp_path / "q.kld", tokens, q, n_ctx)
    r = quality.compare(quality.read_logits(tmp_path / "p.kld"),
                        quality.read_logits(tmp_path / "q.kld"))
    kl = [sum(math.exp(a) * (a - b) for a, b in zip(pp, qq, strict=True))
          for pp, qq in zip(p, q, strict=True)]
    assert r["kld_mean"] == pytest.approx(sum(kl) / 2, abs=1e-4)
    assert r["top1_percent"] == 50.0  # same first token at the first position only
    # tokens 0 and 1 are predicted: ln PPL(Q)/PPL(base) = mean(ln p - ln q)
    ratio = math.exp(((p[0][0] - q[0][0]) + (p[1][1] - q[1][1])) / 2)
    assert r["ppl_ratio"] == pytest.approx(ratio, rel=1e-3)
    assert r["tokens"] == 2 and r["chunks"] == 1
    # the same text read through another tokenizer is not a comparison
    _logits_file(tmp_path / "other.kld", [0, 1, 2, 3, 0, 2], q, n_ctx)
    with pytest.raises(ValueError, match=r"first at position 5.*tokenizers differ"):
        quality.compare(quality.read_logits(tmp_path / "p.kld"),
                        quality.read_logits(tmp_path / "other.kld"))


def test_a_token_pushed_beyond_the_files_floor_gives_a_lower_bound(tmp_path: Path) -> None:
    """The quantized side's file floors its log-probs 16 nats below its first: a token
    the base finds likely and q puts 30 nats down counts as if at the floor (still a
    large divergence, as documented)."""
    import math

    n_ctx = 4  # one scored position, predicting token 3
    p = [[math.log(0.5), math.log(0.5), -40.0]]
    q = [[0.0, -30.0, -40.0]]  # q puts token 1 (p = 0.5) 30 nats down
    _logits_file(tmp_path / "p.kld", [0, 1, 2, 1], p, n_ctx)
    _logits_file(tmp_path / "q.kld", [0, 1, 2, 1], q, n_ctx)
    r = quality.compare(quality.read_logits(tmp_path / "p.kld"),
                        quality.read_logits(tmp_path / "q.kld"))
    exact = 0.5 * (math.log(0.5) - 0.0) + 0.5 * (math.log(0.5) + 30.0)
    floored = 0.5 * (math.log(0.5) - 0.0) + 0.5 * (math.log(0.5) + 16.0)
    assert r["kld_mean"] == pytest.approx(floored, abs=1e-3) and r["kld_mean"] < exact
    assert r["kld_mean"] > 7  # still far above any bar a profile would set


@pytest.mark.parametrize(("cut", "says"), [(12, "no scored tokens"), (-10, "cut short")])
def test_a_logits_file_that_is_not_whole_is_refused(tmp_path: Path, cut: int,
                                                    says: str) -> None:
    import math

    _logits_file(tmp_path / "p.kld", [0, 1, 2, 1], [[math.log(0.5), math.log(0.5)]], 4)
    data = (tmp_path / "p.kld").read_bytes()
    # llama-perplexity writes the magic and n_ctx only when the text is too short
    (tmp_path / "p.kld").write_bytes(data[:cut])
    with pytest.raises(ValueError, match=says):
        quality.read_logits(tmp_path / "p.kld")


def test_the_reference_command_line_is_llama_perplexitys() -> None:
    text = quality.Text(Path("/usr/share/common-licenses/GPL-3"), ctx=256, chunks=4)
    assert quality.base_command(Path("/bin/llama-perplexity"), Path("f16.gguf"), text,
                                Path("b.kld"), 2) == [
        "/bin/llama-perplexity", "-m", "f16.gguf", "-f", "/usr/share/common-licenses/GPL-3",
        "-c", "256", "--chunks", "4", "-t", "2", "--kl-divergence-base", "b.kld"]


# --- bad input ----------------------------------------------------------------------------

def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_an_unknown_quantization_is_one_line_with_the_choices(cli) -> None:
    r = cli("model", "quality", "-p", "x86-gateway", "--quant", "Q9_9", "--synthetic")
    assert r.code != 0
    assert "--quant Q9_9: not a llama.cpp quantization; choose one of Q4_0, Q4_K_M" in \
        one_line(r.err)


def test_an_unknown_model_is_one_line_with_the_catalog(cli) -> None:
    r = cli("model", "quality", "-p", "x86-gateway", "--model", "nope", "--synthetic")
    assert r.code != 0 and "--model: unknown model 'nope'" in one_line(r.err)


def test_a_gguf_file_has_no_reference_to_measure_against(cli, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    r = cli("model", "quality", "-p", "x86-gateway", "--model-file", str(gguf))
    assert r.code != 0 and "measured against the unquantized model" in one_line(r.err)


def test_a_missing_text_names_it_and_the_option(cli, tiny_hf: Path, tmp_path: Path) -> None:
    r = cli("model", "quality", "-p", "x86-gateway", "--model-file", str(tiny_hf),
            "--corpus", str(tmp_path / "nothing.txt"))
    assert r.code != 0
    line = one_line(r.err)
    assert "nothing.txt: no such text" in line and "--corpus FILE" in line


def _keep(cache: Path, name: str, **fields) -> None:
    """A quality result in the cache, as `builder model quality` keeps one."""
    from builder.cache import Cache
    from builder.model.quality import SYNTHETIC

    result = {"quant": "Q8_0", "model": "qwen2.5-0.5b-instruct", "origin": SYNTHETIC,
              "engine": "llama.cpp", "bytes": 500 << 20, "kld_mean": 0.00027,
              "top1_percent": 91.3, "ppl_ratio": 1.0, "tokens": 1020,
              "text": {"corpus": "/usr/share/common-licenses/GPL-3", "ctx": 512,
                       "chunks": 4}}
    result.update(fields)

    def make(out: Path, _log: Path) -> None:
        (out / "quality.json").write_text(json.dumps(result))
    Cache(cache).get_or_build("quality", {"name": name}, make, label=name)


def test_plan_shows_the_quality_of_the_planned_model_measured_here(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`builder plan` beside the memory: each quantization of the planned model measured
    on its engine here, the planned one marked; one not measured says how to measure it;
    another model's and another engine's results are not shown."""
    from builder.cli.common import out

    monkeypatch.setattr(out, "_width", 200)
    cache = tmp_path / "cache"
    plan = ("plan", "-p", "x86-gateway", "--model", "qwen2.5-0.5b-instruct",
            "--cache-dir", str(cache))
    r = cli(*plan)
    assert "quality: Q4_K_M not measured here; `builder model quality --profile " \
        "x86-gateway --model qwen2.5-0.5b-instruct --quant Q4_K_M` measures it" in r.out
    _keep(cache, "q8")
    _keep(cache, "q4", quant="Q4_K_M", bytes=377 << 20, kld_mean=0.00938)
    _keep(cache, "1.5b", model="qwen2.5-1.5b-instruct", kld_mean=0.5)
    _keep(cache, "trt", engine="tensorrt-llm", quant="int4_awq", kld_mean=0.7)
    r = cli(*plan)
    assert r.code == 0 and "not measured here" not in r.out
    rows = [line for line in r.out.splitlines() if "llama.cpp" in line and "│" in line]
    assert [row.split("│")[1].strip() for row in rows] == ["Q4_K_M (planned)", "Q8_0"]
    assert "0.00938" in r.out and "0.50000" not in r.out
    assert "int4_awq" not in r.out
    got = json.loads(cli(*plan, "--json").out)["quality"]
    assert [(q["quant"], q["kld_mean"]) for q in got] == [("Q4_K_M", 0.00938),
                                                          ("Q8_0", 0.00027)]
    # an engine that measures nothing here, with nothing kept: no quality lines
    r = cli("plan", "-p", "orin-nano-8gb", "--cache-dir", str(cache))
    assert r.code == 0 and "quality" not in r.out


def test_the_same_file_measured_again_is_listed_once_the_newest(tmp_path: Path) -> None:
    import os

    from builder.cache import Cache
    from builder.model import quality

    cache = tmp_path / "cache"
    _keep(cache, "old tools", model_sha256="a" * 64, kld_mean=0.5)
    _keep(cache, "new tools", model_sha256="a" * 64, kld_mean=0.25)
    _keep(cache, "another file", model_sha256="b" * 64, kld_mean=0.75)
    _keep(cache, "a list for a sha", model_sha256=["b"], kld_mean=0.9)  # left out
    for name, when in (("old tools", 1000), ("new tools", 2000)):
        [f] = [f for f in Cache(cache).outputs("quality", "quality.json")
               if json.loads(f.read_text())["kld_mean"] == {"old tools": 0.5,
                                                            "new tools": 0.25}[name]]
        os.utime(f, (when, when))
    assert sorted(r["kld_mean"] for r in quality.measured(Cache(cache))) == [0.25, 0.75]


def test_models_list_shows_the_quality_measured_here_and_says_how_to_measure_it(
        cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `builder model quality` keeps in the cache is listed per catalog model, smallest
    file first; an empty cache says which command measures it, and a kept file that does
    not hold a typed result is left out. (The measurement itself: the slow test below.)"""
    from builder.cache import Cache
    from builder.cli.common import out

    monkeypatch.setattr(out, "_width", 200)  # a wide terminal: no cell wraps
    cache = tmp_path / "cache"
    r = cli("models", "list", "--cache-dir", str(cache))
    assert r.code == 0 and "builder model quality --synthetic --all" in r.out
    assert all(x["quality"] == [] for x in json.loads(
        cli("models", "list", "--cache-dir", str(cache), "--json").out))

    def keep(name: str, **fields) -> None:
        _keep(cache, name, **fields)

    keep("f16", quant="F16", bytes=988 << 20, kld_mean=0.0, top1_percent=100.0)
    keep("q8")
    keep("q4", quant="Q4_K_M", bytes=377 << 20, kld_mean=0.00938, top1_percent=55.1)
    keep("1.5b", model="qwen2.5-1.5b-instruct", kld_mean=0.00123)
    keep("not a number", quant="Q5_K_M", kld_mean="0.1")
    keep("no text", quant="Q6_K", text=None)
    keep("not a catalog model", model="my-model")
    rows = {x["id"]: x for x in json.loads(
        cli("models", "list", "--cache-dir", str(cache), "--json").out)}
    assert [(q["quant"], q["kld_mean"]) for q in rows["qwen2.5-0.5b-instruct"]["quality"]] \
        == [("Q4_K_M", 0.00938), ("Q8_0", 0.00027), ("F16", 0.0)]
    assert [q["kld_mean"] for q in rows["qwen2.5-1.5b-instruct"]["quality"]] == [0.00123]
    assert rows["qwen2.5-7b-instruct"]["quality"] == []
    r = cli("models", "list", "--cache-dir", str(cache))
    assert r.code == 0 and "Traceback" not in r.err
    assert "against F16, measured here on GPL-3, 1020 tokens (ctx 512)" in r.out
    assert "0.00938" in r.out
    assert "my-model" not in r.out
    assert "the KL divergence ranks the formats" in r.out  # synthetic: what it is worth

    other = tmp_path / "other"

    def trained(out: Path, _log: Path) -> None:
        (out / "quality.json").write_text(json.dumps({
            "quant": "Q4_K_M", "model": "qwen2.5-0.5b-instruct",
            "origin": "Qwen/Qwen2.5-0.5B-Instruct [main]", "engine": "llama.cpp",
            "bytes": 1, "kld_mean": 0.01, "top1_percent": 90.0, "tokens": 1020,
            "text": {"corpus": "GPL-3", "ctx": 512, "chunks": 4}}))
    Cache(other).get_or_build("quality", {"name": "hf"}, trained, label="hf")
    r = cli("models", "list", "--cache-dir", str(other))
    assert "Qwen/Qwen2.5-0.5B-Instruct [main]" in r.out  # printed as is, not as markup
    assert "the KL divergence ranks the formats" not in r.out


# --- on the real tools --------------------------------------------------------------------

@pytest.mark.slow
def test_each_quantization_is_measured_against_f16_and_cached(cli, tiny_hf: Path, tiny_q4,
                                                              x86_engine,
                                                              artifact_cache) -> None:
    args = ("model", "quality", "-p", "x86-gateway", "--model-file", str(tiny_hf),
            "--quant", "Q4_K_M", "--quant", "Q8_0", "--quant", "F16", "--ctx", "128",
            "--chunks", "2", "--cache-dir", str(artifact_cache.root), "--json")
    r = cli(*args)
    assert r.code == 0, r.err
    by = {x["quant"]: x for x in json.loads(r.out)["results"]}
    assert set(by) == {"Q4_K_M", "Q8_0", "F16"}
    # the reference against itself: no divergence, the same top token everywhere
    assert by["F16"]["kld_mean"] == pytest.approx(0, abs=1e-6)
    assert by["F16"]["top1_percent"] == pytest.approx(100)
    # more bits stay closer
    assert 0 < by["Q8_0"]["kld_mean"] < by["Q4_K_M"]["kld_mean"]
    assert by["Q8_0"]["top1_percent"] >= by["Q4_K_M"]["top1_percent"]
    assert by["Q4_K_M"]["bytes"] < by["Q8_0"]["bytes"] < by["F16"]["bytes"]
    assert all(x["chunks"] == 2 for x in by.values())
    # what llama-perplexity --kl-divergence itself prints, when its summary reaches the
    # output before it exits (its logger is not flushed at exit: see quality.measure)
    from builder.cache import sha256_file

    assert by["Q4_K_M"]["model_sha256"] == sha256_file(tiny_q4)  # the pipeline's file
    base = artifact_cache.root / "quality" / by["Q4_K_M"]["reference"] / "out/base.kld"
    own = _own_summary(x86_engine.tool("llama-perplexity"), tiny_q4, base)
    assert own is not None, "llama-perplexity printed no summary in 10 runs"
    assert by["Q4_K_M"]["kld_mean"] == pytest.approx(own["kld_mean"], rel=0.02, abs=2e-6)
    assert by["Q4_K_M"]["top1_percent"] == pytest.approx(own["top1_percent"], abs=1.0)
    assert by["Q4_K_M"]["ppl_ratio"] == pytest.approx(own["ppl_ratio"], rel=1e-3)
    # measured once: a second run reads the cache, nothing runs llama-perplexity again
    entries = sorted(p.name for p in (artifact_cache.root / "quality").iterdir())
    again = cli(*args)
    assert again.code == 0 and json.loads(again.out) == json.loads(r.out)
    assert sorted(p.name for p in (artifact_cache.root / "quality").iterdir()) == entries
    # and `builder models list` shows what was measured, next to the catalog's sizes
    rows = json.loads(cli("models", "list", "--cache-dir", str(artifact_cache.root),
                          "--json").out)
    [row] = [x for x in rows if x["id"] == "qwen2.5-1.5b-instruct"]  # x86-gateway's model
    listed = {x["quant"]: x for x in row["quality"]
              if x["origin"] == display_path(tiny_hf) and x["text"]["ctx"] == 128}
    assert set(listed) == {"Q4_K_M", "Q8_0", "F16"}
    assert listed["Q4_K_M"]["kld_mean"] == by["Q4_K_M"]["kld_mean"]
    assert listed["Q4_K_M"]["bytes"] == by["Q4_K_M"]["bytes"]



def _own_summary(tool: Path, model: Path, base: Path) -> dict | None:
    """llama-perplexity --kl-divergence of `model` against `base`, up to 10 runs until
    its summary is printed (None if it never is: 2 of 3 runs lost it here)."""
    import subprocess

    for _ in range(10):
        out = subprocess.run([str(tool), "-m", str(model), "-c", "128", "-t", "2",
                              "--kl-divergence-base", str(base), "--kl-divergence"],
                             capture_output=True, text=True, timeout=300)
        try:
            return read_summary(out.stdout + out.stderr)
        except ValueError:
            continue
    return None


@pytest.mark.slow
def test_a_build_refuses_a_quantization_above_the_profiles_bar_and_records_it_below(
        cli, tiny_hf: Path, artifact_cache, tmp_path: Path) -> None:
    """model.max_kl_divergence: `builder release` (a build's release steps) measures the
    model it made, refuses it in one line above the bar, and signs the measurement into
    the release manifest below it."""
    def release(bar: str) -> object:
        (tmp_path / "q.yaml").write_text(
            f"extends: x86-gateway\nmodel:\n  max_kl_divergence: {bar}\n")
        return cli("release", "-p", "q", "-P", str(tmp_path), "--model-file", str(tiny_hf),
                   "--out", str(tmp_path / "out"), "--cache-dir", str(artifact_cache.root),
                   "--json")

    r = release("1e-12")
    assert r.code != 0
    line = one_line(r.err.strip().splitlines()[-1])
    assert "q.yaml:3:22: model.max_kl_divergence 1e-12: Q4_K_M measured" in line
    assert "--all` compares them" in line
    assert not list((tmp_path / "out").glob("releases/*/tree/release.json"))
    r = release("1.0")
    assert r.code == 0, r.err
    manifest = json.loads(
        (Path(json.loads(r.out)["dir"]) / "tree" / "release.json").read_text())
    q = manifest["model"]["quality"]
    assert q["reference"] == "F16" and 0 < q["kld_mean"] < 1.0
    assert 0 < q["top1_percent"] <= 100 and q["tokens"] > 0
