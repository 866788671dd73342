"""A tuned runtime overlay: the runtime settings `builder tune` measured best on one
device, with the measurements and the device they were taken on. A profile includes it
with `tuned: FILE`; its `runtime:` settings are merged over the profile's (profiles.py),
so the plan, the release and the engine's flags take them like any profile setting.

The file is untrusted input like a profile: only the runtime keys below may be set, each
parsed by the profile schema, an error names file:line:col; it is written beside its
place and renamed into it, so a reader never sees half of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ProfileError, display_path
from .schema import Runtime
from .yamlsrc import Document, Loc, Pos, load_document

FORMAT = 1
# What an overlay may set: the runtime settings that change speed and not what a client
# sees (context length, slots and the prompt cache stay the profile's).
TUNED_KEYS = ("threads", "flash_attn", "kv_cache_type", "batch_size", "ubatch_size",
              "mmap", "mlock")
_TOP = ("format", "profile", "complete", "objective", "model", "device", "runtime",
        "weights", "measurements")
HEADER = ("# Written by `builder tune`: runtime settings measured on the device below.\n"
          "# A profile includes them with `tuned: <this file>` (docs/tune.md).\n")


@dataclass(frozen=True)
class Knob:
    """One setting an engine's tuner tries (builder tune): each value is a set of
    runtime keys changed together (mmap and mlock; ubatch with a batch no smaller)."""

    name: str
    values: tuple[dict[str, Any], ...]
    prefill_only: bool = False  # it shapes prompt processing only: decode is not measured


@dataclass
class Overlay:
    path: Path
    runtime: dict[str, Any]  # TUNED_KEYS only, as written (validated by the schema)
    model_id: str
    quant: str  # the weight format it was measured at (the profile's)
    complete: bool
    data: dict[str, Any]
    positions: dict[Loc, Pos] = field(default_factory=dict)
    # the weight format it chose (model.quant of the next release), when not the one it
    # was measured at; checked by the profile schema as model.quant is
    weights: str | None = None

    def where(self, *loc: str | int) -> str:
        pos = self.positions.get(tuple(loc))
        return pos.of_value() if pos else f"{display_path(self.path)}:1:1"


def load(path: Path) -> Overlay:
    """The overlay at `path`, parsed: one ProfileError line for anything wrong."""
    doc: Document = load_document(path, "expected a tuned overlay (a mapping)")
    d, name = doc.data, display_path(path)

    def at(loc: Loc) -> str:
        pos = doc.positions.get(loc)
        return pos.of_value() if pos else f"{name}:1:1"

    for key in d:
        if key not in _TOP:
            raise ProfileError(f"{doc.positions[(key,)]}: {key}: unknown field of a tuned "
                               f"overlay; valid: {', '.join(_TOP)}")
    if d.get("format") != FORMAT:
        raise ProfileError(f"{at(('format',))}: format: expected {FORMAT}, got "
                           f"{d.get('format')!r} (write it again with `builder tune`)")
    runtime = d.get("runtime")
    if not isinstance(runtime, dict):
        raise ProfileError(f"{at(('runtime',))}: runtime: expected a mapping of "
                           f"{', '.join(TUNED_KEYS)}")
    for key in runtime:
        if key not in TUNED_KEYS:
            raise ProfileError(f"{doc.positions[('runtime', key)]}: runtime.{key}: a tuned "
                               f"overlay sets only {', '.join(TUNED_KEYS)}")
    try:
        Runtime.model_validate(runtime)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ("runtime", *err["loc"][:1])
        raise ProfileError(f"{at(loc)}: {'.'.join(map(str, loc))}: "
                           f"{err['msg']}, got {err.get('input')!r}") from None
    model = d.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("id"), str)
            and isinstance(model.get("quant"), str)):
        raise ProfileError(f"{at(('model',))}: model: expected the id and quant it was "
                           "tuned for")
    if not isinstance(d.get("complete"), bool):
        raise ProfileError(f"{at(('complete',))}: complete: expected true or false")
    weights = d.get("weights")
    if weights is not None and not (isinstance(weights, str) and weights):
        raise ProfileError(f"{at(('weights',))}: weights: expected the weight format it "
                           f"chose (a model.quant), got {weights!r}")
    return Overlay(path, dict(runtime), model["id"].lower(), model["quant"],
                   d["complete"], d, doc.positions, weights)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the same measurement written twice, not as &anchor / *alias


def write(path: Path, data: dict[str, Any]) -> None:
    """`data` as the overlay at `path`: written beside it, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=88)
        tmp.write_text(HEADER + text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
