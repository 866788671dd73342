"""A minimal flattened-device-tree (FDT, "DTB") writer, so the fakes need no dtc.

Writes version-17 blobs as described by the Devicetree Specification (chapter 5: header,
memory reservation block, structure block, strings block). `dtc -I dtb -O dts` and
`fdtget` read them. Property values: str (one string), list[str] (string list),
int (one u32 cell), list[int] (u32 cells), bytes (raw).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_END = 9

PropValue = str | list[str] | int | list[int] | bytes


@dataclass
class Node:
    name: str = ""
    props: dict[str, PropValue] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _encode(value: PropValue) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode() + b"\0"
    if isinstance(value, int):
        return struct.pack(">I", value)
    if all(isinstance(v, str) for v in value):
        return b"".join(v.encode() + b"\0" for v in value)  # type: ignore[union-attr]
    return b"".join(struct.pack(">I", v) for v in value)  # type: ignore[arg-type]


def build_dtb(root: Node) -> bytes:
    """Serialise `root` (its name must be "") into a DTB."""
    strings = bytearray()
    offsets: dict[str, int] = {}

    def name_off(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(name.encode() + b"\0")
        return offsets[name]

    out = bytearray()

    def emit(node: Node) -> None:
        out.extend(struct.pack(">I", FDT_BEGIN_NODE))
        out.extend(_pad4(node.name.encode() + b"\0"))
        for key, value in node.props.items():
            data = _encode(value)
            out.extend(struct.pack(">III", FDT_PROP, len(data), name_off(key)))
            out.extend(_pad4(data))
        for child in node.children:
            emit(child)
        out.extend(struct.pack(">I", FDT_END_NODE))

    emit(root)
    out.extend(struct.pack(">I", FDT_END))

    header_size = 40
    off_rsvmap = 40  # already 8-byte aligned
    rsvmap = b"\0" * 16  # one terminating (address 0, size 0) entry
    off_struct = off_rsvmap + len(rsvmap)
    off_strings = off_struct + len(out)
    total = off_strings + len(strings)
    header = struct.pack(
        ">10I",
        FDT_MAGIC,
        total,
        off_struct,
        off_strings,
        off_rsvmap,
        17,  # version
        16,  # last compatible version
        0,  # boot_cpuid_phys
        len(strings),
        len(out),
    )
    assert len(header) == header_size
    return header + rsvmap + bytes(out) + bytes(strings)


def board_dtb(compatible: list[str], model: str) -> bytes:
    """A tiny but valid board DTB: root compatible/model, #cells, chosen, memory, aliases."""
    root = Node(
        props={
            "compatible": compatible,
            "model": model,
            "#address-cells": 2,
            "#size-cells": 1,
        },
        children=[
            Node("chosen", {"bootargs": ""}),
            Node("aliases", {}),
            Node("memory@0", {"device_type": "memory", "reg": [0, 0, 0x28000000]}),
            Node(
                "edge-llm-fake",
                {"description": "FAKE device tree from the edge-llm builder tests; "
                 "it describes no real hardware"},
            ),
        ],
    )
    return build_dtb(root)


def overlay_dtbo(name: str) -> bytes:
    """A tiny overlay in the fragment/__overlay__ form the firmware's dtoverlay= loads."""
    root = Node(
        props={"compatible": ["brcm,bcm2712"]},
        children=[
            Node(
                "fragment@0",
                {"target-path": "/"},
                [Node("__overlay__", {"edge-llm-fake-overlay": name})],
            )
        ],
    )
    return build_dtb(root)
