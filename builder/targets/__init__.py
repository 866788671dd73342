"""Targets: everything that differs per hardware family lives behind this seam.

Each family is a package here with a `TARGET` (see base.Target); adding hardware is
adding a package and a profile. Packages outside the builder can be added with
EDGE_LLM_TARGETS (comma-separated module names), as the example target in the tests is.
The profile schema is the union of the targets' profile models, keyed by `target`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from .base import Delivery, NotSupported, Target

__all__ = ["PROFILE", "TARGETS", "Delivery", "NotSupported", "Target", "get"]

EXTRA_ENV = "EDGE_LLM_TARGETS"


def _discover() -> dict[str, Target]:
    names = [f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__) if m.ispkg]
    names += [n.strip() for n in os.environ.get(EXTRA_ENV, "").split(",") if n.strip()]
    found: dict[str, Target] = {}
    for name in names:
        target = importlib.import_module(name).TARGET
        found[target.name] = target
    return found


TARGETS: dict[str, Target] = _discover()


def get(name: str) -> Target:
    return TARGETS[name]


def _union() -> Any:
    models = tuple(t.profile_model for t in TARGETS.values())
    return Annotated[Union[models], Field(discriminator="target")]  # noqa: UP007


# Validates a profile (a dict, after `extends`) into its target's model.
PROFILE: TypeAdapter[Any] = TypeAdapter(_union())
