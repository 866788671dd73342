"""The profile field reference, generated from the schema (never written by hand)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from . import plugins
from .profiles import _section_model
from .units import _size_or_auto, canonical_size, parse_size


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        if any(getattr(m, "func", None) is parse_size for m in meta):
            return "size"
        if any(getattr(m, "func", None) is _size_or_auto for m in meta):
            return "size \\| `auto`"
        return _describe_type(base)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_describe_type(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe_type(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {str: "text", int: "integer", float: "number", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _type_name(info: FieldInfo) -> str:
    tp = info.annotation
    if info.metadata:  # Annotated[...] extras that pydantic unpacked
        tp = typing.Annotated[(tp, *info.metadata)]
    return _describe_type(tp)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section)"
    else:
        value = info.default
    if isinstance(value, int) and not isinstance(value, bool) and _type_name(info).startswith(
            "size"):
        value = canonical_size(value)  # as a person writes it: 256MiB
    return f"`{json.dumps(value)}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, info in model.model_fields.items():
        sub = _section_model(info.annotation)
        key = f"{prefix}{name}"
        if sub is not None:
            rows.append(f"| `{key}` | section | | {info.description} |")
            rows += _rows(sub, key + ".")
        else:
            rows.append(f"| `{key}` | {_type_name(info)} | {_default(info)} | "
                        f"{info.description} |")
    return rows


def markdown_reference() -> str:
    lines = [
        "# Profile field reference",
        "",
        "Generated from `builder/schema.py`, each engine's section and each target's by",
        "`builder profiles schema --markdown`; a test fails when this file and the schema",
        "disagree. Sizes take binary units (`512MiB`, `4GiB`). See [profiles.md](profiles.md)",
        "for inheritance rules.",
        "",
        "## Every profile",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
        *_rows(plugins.SHARED_PROFILE, ""),
    ]
    for t in sorted(plugins.TARGETS.values(), key=lambda t: t.name):
        lines += ["", f"## `target: {t.name}`", "", f"{t.description}. Architectures: "
                  f"{', '.join(t.arches)}; OS bases: "
                  f"{', '.join(t.os_bases)}; accelerators: {', '.join(t.accelerators)}; "
                  f"boot media: {', '.join(t.storage_kinds)}.", ""]
        rows = _rows(t.settings, f"{t.section}.")
        if rows:
            lines += ["| field | type | default | description |", "|---|---|---|---|", *rows]
        else:
            lines += [f"No settings of its own (`{t.section}:` stays empty)."]
    return "\n".join(lines) + "\n"
