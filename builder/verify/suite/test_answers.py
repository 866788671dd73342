"""The device answers like the release's model (verify.min_agreement): the same prompts,
greedy, compared token by token, or by text where its engine gives no log-probabilities
(builder/verify/agreement.py), with the reference answers signed into the release or
made on this machine (builder/verify/reference.py)."""

from __future__ import annotations

from pathlib import Path

from builder.verify import agreement, reference


def test_answers_agree_with_the_reference(cfg: dict, manifest: dict, api_url: str,
                                          api_key: str) -> None:
    ref = cfg["answers"]  # collected only with them (plugin.pytest_collection_modifyitems)
    data = reference.parse(Path(ref["path"]).read_bytes(), ref["path"])
    tokens = ref["tokens"]
    failed = []
    for item in data.answers:
        body = agreement.request(item.prompt, tokens, ref["logprobs"],
                                 manifest["release"]["model_id"])
        reply = agreement.ask(api_url, body, api_key)
        if ref["logprobs"]:
            o = agreement.compare(item.tokens, agreement.tokens_of(reply, "the device"),
                                  tokens, data.tie_nats)
        else:  # an engine that answers text only
            o = agreement.compare_text(item.tokens, agreement.text_of(reply, "the device"),
                                       tokens, data.tie_nats)
        if not o.passed:
            failed.append(f"{item.prompt!r}: {o.detail}")
    assert not failed, (f"the device does not answer like {ref['engine']} (first "
                        f"{tokens} tokens): " + "; ".join(failed))
