"""Where the trees shipped beside the code live: profiles/, roles/, playbooks/, overlays/
at the top of a checkout, or inside the package (builder/_data/) in a wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).parent


def data_dir(name: str) -> Path:
    packaged = _PKG / "_data" / name
    return packaged if packaged.is_dir() else _PKG.parent / name
