"""verify.min_agreement: the device's greedy answers against the release's model served
on this machine, token by token (builder/verify/agreement.py); a broken artifact on the
device (a wrong chat template, a wrong tensor swapped in, a tokenizer that does not match)
fails at its first diverging position, the release's own passes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.verify.agreement import TIE_NATS, Token, compare, tokens_of


def _t(text: str, lp: float, **top: float) -> Token:
    return Token(text, lp, {text: lp, **top})


REFERENCE = [_t("The", -0.1, A=-3.0), _t(" capital", -0.2, **{" city": -0.25}),
             _t(" is", -0.05), _t(" Paris", -0.3, **{" Lyon": -4.0})]


def test_the_same_answer_agrees() -> None:
    o = compare(REFERENCE, list(REFERENCE), 4)
    assert o.passed and o.diverged_at is None and o.agreed == 4


def test_a_near_tie_taken_the_other_way_is_tolerated_up_to_it() -> None:
    device = [REFERENCE[0], _t(" city", -0.21), _t(" of", -0.1)]
    o = compare(REFERENCE, device, 4)
    assert o.passed and o.tie and o.diverged_at == 1
    assert f"a tie within {TIE_NATS}" in o.detail


@pytest.mark.parametrize(("device", "at", "says"), [
    ([_t("A", -0.1)], 0, "'A' where the reference chose 'The' (2.900 nats below it"),
    ([*REFERENCE[:3], _t(" Rome", -0.1)], 3, "not among its top choices"),
    (REFERENCE[:2], 2, "device's answer ends after 2 tokens"),
])
def test_a_divergence_fails_at_its_first_position(device, at, says) -> None:
    o = compare(REFERENCE, device, 4)
    assert not o.passed and o.diverged_at == at and says in o.detail


def test_an_answer_that_goes_on_where_the_reference_ended_diverges() -> None:
    o = compare(REFERENCE[:2], REFERENCE, 4)
    assert not o.passed and o.diverged_at == 2 and "goes on with ' is'" in o.detail


def test_only_the_first_tokens_asked_for_count() -> None:
    device = [*REFERENCE[:3], _t(" Rome", -0.1)]
    assert compare(REFERENCE, device, 3).passed


def test_a_reply_without_log_probabilities_is_not_an_answer() -> None:
    with pytest.raises(ValueError, match="the device: the reply has no per-token"):
        tokens_of({"choices": [{"message": {"content": "hi"}}]}, "the device")
    reply = {"choices": [{"logprobs": {"content": [
        {"token": "a", "logprob": -0.5, "top_logprobs": [{"token": "a", "logprob": -0.5},
                                                          {"token": "b", "logprob": -1}]}]}}]}
    [t] = tokens_of(reply, "x")
    assert t == Token("a", -0.5, {"a": -0.5, "b": -1.0}) and math.isclose(t.top["b"], -1)


@pytest.mark.parametrize(("answers", "collected"), [(None, False), ({"path": "a.json"}, True)])
def test_the_suite_holds_a_device_to_agreement_only_when_asked(answers, collected) -> None:
    """Left out of the suite (not skipped) without verify.min_agreement's answers."""
    import os
    import subprocess
    import sys

    from builder.verify import SUITE

    r = subprocess.run([sys.executable, "-m", "pytest", str(SUITE), "-p",
                        "builder.verify.suite.plugin", "-p", "no:cacheprovider",
                        "--collect-only", "-q", "--rootdir", str(SUITE)],
                       env={**os.environ, "EDGE_LLM_VERIFY": json.dumps({"answers": answers})},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("test_answers.py::" in r.stdout) == collected, r.stdout


# --- on the real llama-server -----------------------------------------------------------

@pytest.fixture(scope="module")
def release(tmp_path_factory, x86_engine, smollm2_gguf):
    """A signed x86-gateway release of SmolLM2 (a real model: its greedy choices are
    clear, unlike random weights'), made as `builder release` makes one."""
    from test_tune import ROOMY, make_release, write_profile

    from builder import resolve
    from builder.profiles import ProfileStore

    work = tmp_path_factory.mktemp("agreement")
    write_profile(work, "gw", ROOMY)
    bundle = make_release(work, work, "gw", engine_dir=x86_engine.entry.out,
                          model=smollm2_gguf)
    rp = ProfileStore([work]).load("gw")
    return resolve.resolve(rp, rp.concrete()), bundle


def _copy(src: Path, dest: Path, *, metadata: dict | None = None,
          swap: tuple[str, str] | None = None) -> Path:
    """`src` with some metadata replaced or the data of two same-shaped tensors swapped,
    written with gguf-py (its gguf_new_metadata script's copy)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(src)
    tensors = list(reader.tensors)
    if swap:
        i, j = (next(k for k, t in enumerate(tensors) if t.name == n) for n in swap)
        tensors[i], tensors[j] = (tensors[i]._replace(data=tensors[j].data),
                                  tensors[j]._replace(data=tensors[i].data))
    new = {k: MetadataDetails(*v) for k, v in (metadata or {}).items()}
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dest, arch=arch, endianess=reader.endianess)
    copy_with_new_metadata(SimpleNamespace(fields=reader.fields, tensors=tensors,
                                           endianess=reader.endianess,
                                           get_field=reader.get_field),
                           writer, new, [])
    return dest


@pytest.mark.slow
def test_a_broken_artifact_fails_at_its_first_diverging_position(release, artifact_cache,
                                                                   smollm2_gguf,
                                                                   tmp_path: Path) -> None:
    import gguf

    from builder import verify
    from builder.engines.llama_cpp.local import serving
    from builder.verify import agreement
    from builder.verify.suite.engine_env import parse_env_file

    d, release = release
    ref = verify.reference_answers(d, {"release": {"dir": str(release.dir)}},
                                   artifact_cache, 12)
    assert ref and ref["engine"] == "the release's own llama-server"
    # llama-perplexity is built with the engine here, and stays out of the release
    assert not (release.tree / "bin" / "llama-perplexity").exists()
    answers = json.loads(Path(ref["path"]).read_text())["answers"]
    server = release.tree / "bin" / "llama-server"
    env = parse_env_file((release.tree / "engine.env").read_text())

    def outcomes(model: Path) -> list:
        with serving(server, env, model) as url:
            return [compare(tokens_of(a["reply"], "the reference"),
                            tokens_of(agreement.ask(url, agreement.request(a["prompt"], 12)),
                                      "the device"), 12)
                    for a in answers]

    # the release's own model file: every answer agrees
    assert all(o.passed and o.diverged_at is None for o in outcomes(smollm2_gguf))

    # Paris and London trade places in the vocabulary: the model still picks the id of
    # Paris, which the device's tokenizer prints as London
    tokens = gguf.GGUFReader(smollm2_gguf).get_field("tokenizer.ggml.tokens").contents()
    swapped = list(tokens)
    for x, y in (("ĠParis", "ĠLondon"), ("Paris", "London")):
        a, b = tokens.index(x), tokens.index(y)
        swapped[a], swapped[b] = swapped[b], swapped[a]
    assert any("Paris" in t.text for t in tokens_of(answers[0]["reply"], "the reference"))
    broken = {
        "a wrong chat template": _copy(smollm2_gguf, tmp_path / "template.gguf", metadata={
            "tokenizer.chat_template": (gguf.GGUFValueType.STRING,
                                        "{% for m in messages %}{{ m['content'] }}\n"
                                        "{% endfor %}")}),
        "a wrong tensor swapped in": _copy(smollm2_gguf, tmp_path / "tensor.gguf",
                                           swap=("blk.0.attn_q.weight",
                                                 "blk.1.attn_q.weight")),
        "a tokenizer that does not match": _copy(
            smollm2_gguf, tmp_path / "tokenizer.gguf", metadata={
                "tokenizer.ggml.tokens": (gguf.GGUFValueType.ARRAY, swapped, "",
                                          gguf.GGUFValueType.STRING)}),
    }
    for what, model in broken.items():
        found = outcomes(model)
        failed = [o for o in found if not o.passed]
        assert failed, f"{what}: every answer agreed: {[o.detail for o in found]}"
        assert all(o.diverged_at is not None and o.diverged_at < 12 for o in failed)
        assert all(o.detail.startswith(f"token {o.diverged_at}:") for o in failed
                   if "ends after" not in o.detail), what
