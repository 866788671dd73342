"""YAML loading that remembers where every key was written (file:line:col).

Profiles are merged across files, so an error must point at the file and line that
set the offending value, not at the profile the user asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ProfileError, display_path

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Pos:
    """Where a key was written (line/col, 1-based) and where its value starts."""

    file: Path
    line: int
    col: int
    value_line: int
    value_col: int

    def __str__(self) -> str:
        return f"{display_path(self.file)}:{self.line}:{self.col}"

    def of_value(self) -> str:
        return f"{display_path(self.file)}:{self.value_line}:{self.value_col}"


@dataclass
class Document:
    """A YAML mapping plus the position of each key (and list item) in it."""

    data: dict[str, Any]
    positions: dict[Loc, Pos]
    file: Path


def _pos(file: Path, node: yaml.Node, value: yaml.Node | None = None) -> Pos:
    v = value or node
    return Pos(file, node.start_mark.line + 1, node.start_mark.column + 1,
               v.start_mark.line + 1, v.start_mark.column + 1)


def _build(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, positions: dict[Loc, Pos],
           file: Path) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                raise ProfileError(f"{_pos(file, knode)}: keys must be text, got {key!r}")
            if key in out:
                raise ProfileError(
                    f"{_pos(file, knode)}: {'.'.join(map(str, (*loc, key)))}: "
                    f"duplicate key; remove one of them")
            positions[(*loc, key)] = _pos(file, knode, vnode)
            out[key] = _build(loader, vnode, (*loc, key), positions, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            positions[(*loc, i)] = _pos(file, item)
            items.append(_build(loader, item, (*loc, i), positions, file))
        return items
    return loader.construct_object(node, deep=True)


PROFILE_TOP = "a profile must be a mapping of sections (device:, engine:, ...)"


def load_document(path: Path, top: str = PROFILE_TOP) -> Document:
    """Parse one YAML file whose top level must be a mapping (`top` says of what)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{display_path(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{display_path(path)}: cannot read: {e}") from None
    loader = yaml.SafeLoader(text)
    positions: dict[Loc, Pos] = {}
    try:
        node = loader.get_single_node()
        data = {} if node is None else _build(loader, node, (), positions, path)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = (f"{display_path(path)}:{mark.line + 1}:{mark.column + 1}" if mark
                 else display_path(path))
        what = e.problem or e.context or "malformed YAML"
        raise ProfileError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ProfileError(f"{display_path(path)}: invalid YAML: {e}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ProfileError(f"{display_path(path)}:1:1: {top}, got {type(data).__name__}")
    return Document(data, positions, path)
