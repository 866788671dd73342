"""verify.min_agreement: the device's greedy answers against the release's model served
on this machine, token by token (builder/verify/agreement.py); a broken artifact on the
device (a wrong chat template, a wrong tensor swapped in, a tokenizer that does not match)
fails at its first diverging position, the release's own passes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.verify.agreement import (
    PROMPTS,
    TIE_NATS,
    Token,
    compare,
    compare_text,
    tokens_of,
)


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


# --- a device that answers text only (TensorRT-LLM's and Edge-LLM's servers) -------------

def test_the_same_text_agrees() -> None:
    o = compare_text(REFERENCE, "The capital is Paris", 4)
    assert o.passed and o.diverged_at is None and o.agreed == 4
    assert compare_text(REFERENCE, "The capital is Paris, of course", 4).passed


def test_text_that_goes_on_with_a_near_alternative_is_a_tie() -> None:
    o = compare_text(REFERENCE, "The city of light", 4)
    assert o.passed and o.tie and o.diverged_at == 1
    assert "the device chose ' city' where the reference chose ' capital'" in o.detail


@pytest.mark.parametrize(("text", "at", "says"), [
    ("A capital", 0, "chose 'A' where the reference chose 'The' (2.900 nats below it)"),
    ("The capital is Rome", 3, "went on with ' Rome' where the reference chose ' Paris' "
                               "(not among its top choices); agreed before it: "
                               '"The capital is"'),
    ("The capital is Lyon", 3, "(3.700 nats below it)"),
    ("The capital", 2, "the device's answer ends after 2 tokens"),
    ("", 0, "the device's answer ends after 0 tokens"),
])
def test_text_that_diverges_fails_at_its_first_position(text, at, says) -> None:
    o = compare_text(REFERENCE, text, 4)
    assert not o.passed and o.diverged_at == at and says in o.detail, o.detail


def test_text_that_goes_on_where_the_reference_ended_diverges() -> None:
    o = compare_text(REFERENCE[:2], "The capital is", 4)
    assert not o.passed and o.diverged_at == 2 and "goes on with ' is'" in o.detail


def test_a_wider_tolerance_takes_a_further_alternative_as_a_tie() -> None:
    """The pair's own tolerance (HostServer.tie_nats): a device on other weights."""
    assert not compare_text(REFERENCE, "The capital is Lyon", 4).passed
    assert compare_text(REFERENCE, "The capital is Lyon", 4, tie_nats=4.0).passed
    device = [*REFERENCE[:3], _t(" Lyon", -0.1)]
    assert not compare(REFERENCE, device, 4).passed
    assert compare(REFERENCE, device, 4, tie_nats=4.0).passed


def test_a_character_split_over_two_tokens_is_compared_by_its_bytes() -> None:
    """llama-server cuts a token's text to valid UTF-8 (an emoji's first bytes come back
    as "", its last as replacement characters) and gives the bytes beside it: the
    device's text, whole, agrees with them."""
    emoji = "\N{GRINNING FACE}".encode()
    reference = tokens_of({"choices": [{"logprobs": {"content": [
        {"token": t, "bytes": list(b), "logprob": -0.01,
         "top_logprobs": [{"token": t, "bytes": list(b), "logprob": -0.01}]}
        for t, b in (("I", b"I"), (" like", b" like"), (" ", b" "), ("", emoji[:2]),
                     ("\ufffd\ufffd", emoji[2:]), ("!", b"!"))]}}]}, "reference")
    assert compare_text(reference, "I like \N{GRINNING FACE}!", 6).passed
    o = compare_text(reference, "I like \N{SMILING FACE WITH SMILING EYES}!", 6)
    assert not o.passed and o.diverged_at == 4  # the two share their first two bytes


def test_an_empty_token_at_the_end_agrees() -> None:
    assert compare_text([_t("A", -0.1), _t("", -0.1)], "A", 2).passed


def test_a_longer_alternative_the_text_goes_on_with_is_the_devices_choice() -> None:
    """The reference chose "The" and ranked "There" close: a device that says "There"
    chose "There" (a tie), not "The" followed by a token the reference never ranked;
    one that says "The capital" chose "The"."""
    reference = [_t("The", -0.1, There=-0.15), _t(" capital", -0.1), _t(" is", -0.1)]
    o = compare_text(reference, "There is", 3)
    assert o.passed and o.tie and o.diverged_at == 0 and "chose 'There'" in o.detail
    assert compare_text(reference, "The capital is", 3).diverged_at is None
    far = [_t("The", -0.1, There=-3.0), *reference[1:]]
    o = compare_text(far, "There is", 3)
    assert not o.passed and "chose 'There' where the reference chose 'The' (2.900" in o.detail


@pytest.mark.parametrize(("entry", "says"), [
    ({"token": "a", "logprob": float("-inf")}, ".logprob: not a finite log-probability"),
    ({"token": "a", "logprob": float("nan")}, ".logprob: not a finite log-probability"),
    ({"token": "a", "logprob": "-0.5"}, ".logprob: not a finite log-probability"),
    ({"token": "a", "logprob": 3.0}, ".logprob: not a finite log-probability"),
    ({"token": 7, "logprob": -1}, ".token: not a string"),
    ({"token": "a", "logprob": -1, "bytes": [256]}, ".bytes: not a list of byte values"),
    ({"token": "a", "logprob": -1, "top_logprobs": [{"token": "a", "logprob": -1}] * 21},
     ".top_logprobs: not a list of at most 20"),
    ({"token": "a", "logprob": -1, "top_logprobs": [{"token": "b", "logprob": None}]},
     ".top_logprobs[0].logprob: not a finite"),
])
def test_a_replys_log_probabilities_are_typed_before_they_are_compared(entry, says) -> None:
    """A -inf reference log-probability would make every alternative a tie: refused."""
    reply = {"choices": [{"logprobs": {"content": [entry]}}]}
    with pytest.raises(ValueError, match=re.escape(f"d: choices[0].logprobs.content[0]{says}")):
        tokens_of(reply, "d")


def test_a_reply_without_text_is_not_an_answer() -> None:
    from builder.verify.agreement import text_of

    assert text_of({"choices": [{"message": {"content": "hi"}}]}, "d") == "hi"
    for reply in ({"choices": []}, {"choices": [{"message": {"content": None}}]}, "x"):
        with pytest.raises(ValueError, match="d: the reply has no answer text"):
            text_of(reply, "d")


def test_a_device_without_log_probabilities_is_not_asked_for_them() -> None:
    """TensorRT-LLM 0.12's OpenAI server refuses `logprobs` ("returning log probs is not
    supported"), and so does the Edge-LLM adapter: the request must not carry them."""
    from builder.verify.agreement import request

    assert {"logprobs", "top_logprobs"} <= set(request("p", 8))
    assert not {"logprobs", "top_logprobs"} & set(request("p", 8, logprobs=False))


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


# --- the answers a release carries ------------------------------------------------------

def _reply(*tokens: str) -> dict:
    """A chat completion whose answer is `tokens`, each the sure choice."""
    return {"choices": [{"logprobs": {"content": [
        {"token": t, "logprob": -0.01, "top_logprobs": [{"token": t, "logprob": -0.01},
                                                       {"token": "?", "logprob": -5.0}]}
        for t in tokens]}}]}


def _answers(tokens: int = 8, **over) -> bytes:
    data = {"engine": "the release's own llama-server", "tokens": tokens,
            "answers": [{"prompt": "Name three prime numbers.",
                         "reply": _reply("2", ",", " 3", ",", " 5")}], **over}
    return json.dumps(data).encode()


@pytest.mark.parametrize(("data", "says"), [
    (b"{", "not JSON"),
    (b"[]", "not a JSON object"),
    (_answers(engine=["x"]), "engine: not a short line of text"),
    (_answers(engine="llama-server\x1b[2J"), "engine: not a short line of text"),
    (_answers(tokens="8"), "tokens: not an integer"),
    (_answers(tokens=0), "tokens: not an integer"),
    (_answers(tokens=True), "tokens: not an integer"),
    (_answers(tie_nats="0.1"), "tie_nats: not a number from 0 to 5.0"),
    (_answers(tie_nats=99), "tie_nats: not a number from 0 to 5.0"),
    (_answers(answers=[]), "answers: not a list of 1 to 16"),
    (_answers(answers=[{"prompt": "p", "reply": _reply("a")}] * 17), "answers: not a list"),
    (_answers(answers=[{"prompt": "x" * 2001, "reply": _reply("a")}]), "answers[0].prompt"),
    (_answers(answers=[{"prompt": 7, "reply": _reply("a")}]), "answers[0].prompt"),
    (_answers(answers=["p"]), "answers[0].prompt"),
    (_answers(answers=[{"prompt": "p", "reply": {"choices": []}}]),
     "answers[0].reply: the reply has no per-token log-probabilities"),
    (_answers(answers=[{"prompt": "p", "reply": "{{ lookup('pipe', 'id') }}"}]),
     "answers[0].reply: the reply has no per-token"),
    (_answers(tokens=2), "answers[0].reply: 5 tokens, more than the 2 asked for"),
    (_answers(answers=[{"prompt": "p", "reply": _reply("a") | {"choices": [{"logprobs": {
        "content": [{"token": {"x": 1}, "logprob": -1}]}}]}}]),
     "answers[0].reply: choices[0].logprobs.content[0].token: not a string"),
])
def test_a_releases_answers_are_parsed_before_they_are_used(data, says) -> None:
    from builder.verify import reference

    with pytest.raises(ValueError, match=re.escape(f"rel: {says}")):
        reference.parse(data, "rel")


def test_parsed_answers_are_typed() -> None:
    from builder.verify import reference

    a = reference.parse(_answers(), "rel")
    assert a.tokens == 8 and a.engine == "the release's own llama-server"
    [item] = a.answers
    assert item.prompt == "Name three prime numbers." and len(item.tokens) == 5
    assert item.tokens[2] == Token(" 3", -0.01, {" 3": -0.01, "?": -5.0})


def test_tensorrt_llm_states_a_tolerance_for_each_precision_it_has_a_reference_for(
        tmp_path: Path) -> None:
    """Its reference is llama.cpp F16 of the release's checkpoint, with the pair's
    tolerance per device precision; a GPTQ checkpoint, which the pinned converter does
    not dequantize, has none (said, and the check is left out)."""
    from builder import resolve
    from builder.cache import Cache
    from builder.engines.trtllm import REFERENCE_TIE_NATS, TrtLlm
    from builder.profiles import ProfileStore

    assert {*REFERENCE_TIE_NATS, "int4_gptq"} == {q.name for q in TrtLlm.quants}
    assert all(TIE_NATS < t <= 1.5 for t in REFERENCE_TIE_NATS.values())
    rp = ProfileStore().load("orin-nano-8gb")
    d = resolve.resolve(rp, rp.concrete())
    assert d.profile.model.quant == "int4_gptq"
    assert d.engine.host_server(d.profile, d.platform, tmp_path,
                                Cache(tmp_path / "cache")) is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.fixture
def site(tmp_path: Path):
    """A release made here with reference answers of 8 tokens signed into its tree, and
    the site that trusts it."""
    from device_tree import keygen
    from releases import make, trust_key

    from builder.verify import reference

    key, out = tmp_path / "signing", tmp_path / "out"
    keygen(key)
    b = make(tmp_path / "w", key, out=out,
             add=lambda tree: (tree / reference.ANSWERS).write_bytes(_answers(8)))
    trust_key(out, key)
    return b, out


def _check(b, out, tokens: int, said: list):
    from stand_ins import device_of

    from builder import verify
    from builder.cache import Cache
    from builder.fleet import trust
    from builder.profiles import ProfileStore

    rel = trust.open_release(b.dir, trust.signers(None, out))
    d = device_of(ProfileStore().load("x86-gateway").concrete(), "x86-gateway")
    return verify.answers_for(d, {"release": {"dir": str(b.dir)}}, rel,
                              Cache(out.parent / "cache"), {"min_agreement": tokens},
                              said.append)


def test_the_answers_signed_into_a_release_hold_the_device(site) -> None:
    from builder.verify import reference

    b, out = site
    listed = b.manifest["files"]
    assert reference.ANSWERS in listed  # signed with the tree, like every file in it
    said: list[str] = []
    got = _check(b, out, 8, said)
    assert got == {"path": str(b.tree / reference.ANSWERS), "tokens": 8,
                   "engine": "the release's own llama-server", "logprobs": True}
    assert said == [f"verify.min_agreement: the reference answers signed into release "
                    f"{b.release_id} (the release's own llama-server)"]
    # fewer tokens asked than recorded: the same answers, compared over fewer
    assert _check(b, out, 4, [])["path"] == str(b.tree / reference.ANSWERS)


def test_answers_changed_after_signing_are_refused(site) -> None:
    """Whoever can write the release directory cannot make a broken device pass: the
    answers are checked against the signed listing before they are read."""
    from builder.fleet import trust
    from builder.verify import reference

    b, out = site
    (b.tree / reference.ANSWERS).write_bytes(_answers(8, engine="a device that lies"))
    with pytest.raises(trust.Refused, match=r"its tree differs from its signed release\.json"):
        _check(b, out, 8, [])


def test_signed_answers_that_do_not_parse_fail_in_one_line(tmp_path: Path) -> None:
    """Signed by a trusted key, still read as untrusted: another site's builder, or an
    older one, may have written them."""
    from device_tree import keygen
    from releases import make, trust_key

    from builder.errors import BuilderError
    from builder.verify import reference

    key, out = tmp_path / "signing", tmp_path / "out"
    keygen(key)
    b = make(tmp_path / "w", key, out=out,
             add=lambda tree: (tree / reference.ANSWERS).write_bytes(_answers(tokens=-1)))
    trust_key(out, key)
    with pytest.raises(BuilderError) as e:
        _check(b, out, 8, [])
    assert str(e.value) == (f"verify.min_agreement: release {b.release_id}'s answers.json: "
                            "tokens: not an integer from 1 to 256; make the release again "
                            "with `builder release`")


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
    from releases import trust_key

    from builder import verify
    from builder.engines.llama_cpp.local import serving
    from builder.fleet import trust
    from builder.verify import agreement
    from builder.verify.suite.engine_env import parse_env_file

    d, release = release
    out = release.dir.parents[1]  # work/out/releases/<id>: made by test_tune.make_release
    trust_key(out, out.parent / "signing")
    rel = trust.open_release(release.dir, trust.signers(None, out))
    said: list[str] = []
    ref = verify.answers_for(d, {"release": {"dir": str(release.dir)}}, rel,
                             artifact_cache, {"min_agreement": 12}, said.append)
    assert said == []  # made here, as the release carries none
    assert ref and ref["engine"] == "the release's own llama-server" and ref["logprobs"]
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


@pytest.mark.slow
def test_a_release_made_with_the_bar_carries_answers_verify_uses(
        tmp_path: Path, x86_engine, smollm2_gguf, artifact_cache, run_builder_session) -> None:
    """verify.min_agreement in the profile `builder release` is given: the release's own
    llama-server answers as it is made, the answers are signed into its tree, and verify
    uses them; asked for more tokens than they hold, verify answers here instead."""
    from builder import resolve, verify
    from builder.fleet import release, trust
    from builder.profiles import ProfileStore
    from builder.verify import reference

    (tmp_path / "gw.yaml").write_text("extends: x86-gateway\nverify:\n  min_agreement: 6\n")
    out = tmp_path / "out"
    r = run_builder_session("release", "--profile", str(tmp_path / "gw.yaml"),
                            "--model-file", str(smollm2_gguf), "--out", str(out), "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert ("reference answers: 3 prompts, 6 tokens each, from the release's own "
            "llama-server, signed into the release") in r.stdout + r.stderr
    b = release.find(out / "releases", json.loads(r.stdout)["release_id"])
    carried = reference.parse((b.tree / reference.ANSWERS).read_bytes(), "the release")
    assert carried.tokens == 6 and carried.engine == "the release's own llama-server"
    assert [a.prompt for a in carried.answers] == list(PROMPTS)
    assert all(len(a.tokens) == 6 for a in carried.answers)

    rel = trust.open_release(b.dir, trust.signers(None, out))  # the site trusts its own
    assert reference.ANSWERS in rel.manifest.listing()["files"]
    rp = ProfileStore([tmp_path]).load("gw")
    d = resolve.resolve(rp, rp.concrete())
    expected = {"release": {"dir": str(b.dir)}}
    said: list[str] = []
    got = verify.answers_for(d, expected, rel, artifact_cache, {"min_agreement": 6},
                             said.append)
    assert got["path"] == str(b.tree / reference.ANSWERS) and "signed into" in said[0]
    # answered again here, the same: the release's server, settings and model
    again = reference.make(d, d.profile, rel.tree, rel.model_path,
                           rel.manifest.model.sha256, artifact_cache, 6)
    assert reference.parse(again.read_bytes(), "here") == carried
    said.clear()
    more = verify.answers_for(d, expected, rel, artifact_cache, {"min_agreement": 10},
                              said.append)
    assert said == [f"note: verify.min_agreement: release {b.release_id} carries answers "
                    "of 6 tokens, fewer than 10; answering here"]
    longer = reference.parse(Path(more["path"]).read_bytes(), "here")
    assert longer.tokens == 10 and all(
        [t.text for t in a.tokens[:6]] == [t.text for t in c.tokens]
        for a, c in zip(longer.answers, carried.answers, strict=True))


@pytest.mark.slow
def test_a_tensorrt_llm_release_is_answered_by_llama_cpp_f16_of_its_checkpoint(
        tmp_path: Path, qwen05_q4: Path, artifact_cache) -> None:
    """TensorRT-LLM does not run here: the reference is the release's own checkpoint
    (random weights in Qwen2.5-0.5B's shape; its F16 conversion is qwen05_q4's)
    converted to F16 and served by llama-server built for this machine, with the pair's
    tolerance for the device's precision; the device returns no log-probabilities, so
    its text is compared, and the same weights' text agrees."""
    from builder import resolve
    from builder.engines.trtllm import REFERENCE_TIE_NATS
    from builder.errors import BuilderError
    from builder.model import pipeline, synth
    from builder.profiles import ProfileStore
    from builder.schema import ModelSource
    from builder.verify import agreement, reference

    (tmp_path / "orin.yaml").write_text("extends: orin-nano-8gb\nmodel:\n  quant: int8_wo\n")
    rp = ProfileStore([tmp_path]).load("orin")
    d = resolve.resolve(rp, rp.concrete())
    assert not d.engine.logprobs
    tree = tmp_path / "tree"  # what the release's answers are made from: its engine.env
    tree.mkdir()
    (tree / "engine.env").write_text('CUDA_MODULE_LOADING="LAZY"\n')
    ckpt = synth.cached("qwen2.5-0.5b-instruct", artifact_cache).out
    checkpoint = pipeline.fetch(ModelSource(path=str(ckpt)), artifact_cache)
    sha = pipeline.tree_digest(checkpoint.files)  # as the release names it
    with pytest.raises(BuilderError, match="is not the release's model"):
        reference.make(d, d.profile, tree, ckpt, "f" * 64, artifact_cache, 8)
    made = reference.parse(reference.make(d, d.profile, tree, ckpt, sha, artifact_cache,
                                          8).read_bytes(), "answers")
    assert made.engine == ("llama-server (F16) of the release's checkpoint, against "
                           "int8_wo on the device")
    assert made.tie_nats == REFERENCE_TIE_NATS["int8_wo"] == 0.5
    assert [a.prompt for a in made.answers] == list(PROMPTS)
    assert len({a.reply["choices"][0]["message"]["content"] for a in made.answers}) == 3
    # a device on the same weights, asked as the check asks one without log-probabilities
    server = d.engine.host_server(d.profile, d.platform, tree, artifact_cache)
    with server.serving(checkpoint) as url:
        for a in made.answers:
            body = agreement.request(a.prompt, 8, logprobs=False)
            text = agreement.text_of(agreement.ask(url, body), "the device")
            o = agreement.compare_text(a.tokens, text, 8, made.tie_nats)
            assert o.passed and o.diverged_at is None, o.detail
            # and another answer diverges at its first token
            other = compare_text(a.tokens, "Paris is the capital of France.", 8)
            assert not other.passed and other.diverged_at == 0, other.detail
