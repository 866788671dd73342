"""A release's reference answers (verify.min_agreement): its own model answering the
agreement prompts on this machine, served as the device's engine serves it
(Engine.host_server, with the release's settings).

They are made when the release is made and signed into its tree (ANSWERS, listed in
release.json like every file), so any controller that trusts the release holds a device
to the same answers, whether or not it can serve the engine itself. A release made
without the bar gets them when `builder verify` first asks (the same cache entry).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuilderError
from ..model.pipeline import held
from ..progress import step
from . import agreement

if TYPE_CHECKING:
    from ..cache import Cache
    from ..contracts import Device
    from ..schema import Profile

ANSWERS = "answers.json"  # in a release's tree
MAX_PROMPTS = 16  # what a release's answers may hold (they are read before they are used)
MAX_PROMPT_CHARS = 2000
MAX_TOKENS = 256  # verify.min_agreement's bound (schema.Verify)
MAX_TIE_NATS = 5.0  # beyond it nearly any other token would pass


@dataclass(frozen=True)
class Answer:
    prompt: str
    reply: dict  # the reference's chat completion, as it answered
    tokens: list[agreement.Token]


@dataclass(frozen=True)
class Answers:
    engine: str  # what answered, for a person
    tokens: int  # how many tokens each answer was asked for
    answers: list[Answer]
    tie_nats: float = agreement.TIE_NATS  # the near ties tolerated (HostServer.tie_nats)


def parse(data: bytes, what: str) -> Answers:
    """answers.json, typed (ValueError naming `what` and the field: it comes from a
    release, which may be another site's)."""
    try:
        raw = json.loads(data)
    except ValueError:
        raise ValueError(f"{what}: not JSON") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what}: not a JSON object")
    engine, tokens, items = raw.get("engine"), raw.get("tokens"), raw.get("answers")
    if not isinstance(engine, str) or len(engine) > 200 or not engine.isprintable():
        raise ValueError(f"{what}: engine: not a short line of text")
    if type(tokens) is not int or not 1 <= tokens <= MAX_TOKENS:
        raise ValueError(f"{what}: tokens: not an integer from 1 to {MAX_TOKENS}")
    tie = raw.get("tie_nats", agreement.TIE_NATS)
    if type(tie) not in (int, float) or not 0 <= tie <= MAX_TIE_NATS:
        raise ValueError(f"{what}: tie_nats: not a number from 0 to {MAX_TIE_NATS}")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PROMPTS:
        raise ValueError(f"{what}: answers: not a list of 1 to {MAX_PROMPTS}")
    out = []
    for n, item in enumerate(items):
        where = f"{what}: answers[{n}]"
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not 0 < len(prompt) <= MAX_PROMPT_CHARS:
            raise ValueError(f"{where}.prompt: not a string of 1 to {MAX_PROMPT_CHARS} "
                             "characters")
        reply = item["reply"] if isinstance(item.get("reply"), dict) else None
        out.append(Answer(prompt, reply or {},
                          agreement.tokens_of(reply, f"{where}.reply", most=tokens)))
    return Answers(engine, tokens, out, float(tie))


def make(d: Device, profile: Profile, tree: Path, model: Path, model_sha256: str,
         cache: Cache, tokens: int) -> Path | None:
    """The answers of the release at `tree` (`profile` the one it was made from, `model`
    its model here), `tokens` tokens each: a cache entry per server binary, settings,
    model and prompts; its answers.json. None when this machine cannot serve it."""
    from ..cache import sha256_file
    from ..resolve import engine_named

    try:
        settings = sha256_file(tree / "engine.env")
    except OSError as e:
        raise BuilderError(f"the release's engine.env cannot be read here ({e}); make the "
                           "release again with `builder release`") from None
    server = engine_named(profile.engine.kind).host_server(
        profile, d.platform, tree, cache, source_base=d.engine_base_dir)
    if server is None:
        return None
    tie = agreement.TIE_NATS if server.tie_nats is None else server.tie_nats
    inputs = {"server": sha256_file(server.binary), "settings": settings,
              "model": model_sha256, "prompts": agreement.PROMPTS, "tokens": tokens,
              "top": agreement.TOP, "what": server.what, "tie_nats": tie}

    def answer(out: Path, _log: Path) -> None:
        checked = held(model, model_sha256, "the release's model")  # what the key names
        with step(f"the reference answers ({server.what}, {len(agreement.PROMPTS)} "
                  "prompts)"), server.serving(checked) as url:
            answers = []
            for prompt in agreement.PROMPTS:
                try:
                    reply = agreement.ask(url, agreement.request(prompt, tokens))
                    agreement.tokens_of(reply, "the reference")
                except ValueError as e:
                    raise BuilderError(f"the reference answers: {e}") from None
                answers.append({"prompt": prompt, "reply": reply})
        (out / ANSWERS).write_text(json.dumps(
            {"engine": server.what, "tokens": tokens, "tie_nats": tie, "answers": answers},
            indent=2) + "\n")

    entry = cache.get_or_build("answers", inputs, answer,
                               label=f"reference answers ({server.what})")
    return entry.out / ANSWERS


def add_to_release(tree: Path, d: Device, model: Path, model_sha256: str, cache: Cache,
                   tokens: int) -> Answers | None:
    """The answers of the release `d`'s profile makes, `tokens` each (its
    verify.min_agreement), written into the release's `tree` being made (release.make's
    `add`), to be listed and signed with it. None when there is no reference here."""
    found = make(d, d.profile, tree, model, model_sha256, cache, tokens)
    if found is None:
        return None
    shutil.copyfile(found, tree / ANSWERS)
    return parse(found.read_bytes(), str(found))
