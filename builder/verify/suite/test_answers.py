"""The device answers like the release's model on this machine (verify.min_agreement):
the same prompts, greedy, compared token by token (builder/verify/agreement.py)."""

from __future__ import annotations

import json
from pathlib import Path

from builder.verify import agreement


def test_answers_agree_with_the_reference_on_this_machine(cfg: dict, api_url: str,
                                                          api_key: str) -> None:
    ref = cfg["answers"]  # collected only with them (plugin.pytest_collection_modifyitems)
    data = json.loads(Path(ref["path"]).read_text())
    tokens = ref["tokens"]
    failed = []
    for item in data["answers"]:
        reference = agreement.tokens_of(item["reply"], "the reference")
        reply = agreement.ask(api_url, agreement.request(item["prompt"], tokens), api_key)
        o = agreement.compare(reference, agreement.tokens_of(reply, "the device"), tokens)
        if not o.passed:
            failed.append(f"{item['prompt']!r}: {o.detail}")
    assert not failed, (f"the device does not answer like {ref['engine']} here (first "
                        f"{tokens} tokens): " + "; ".join(failed))
