"""The plug-ins: every target and engine, found once, and the profile schema they make
together.

Targets are the packages under builder/targets/ with a `TARGET`, engines the modules or
packages under builder/engines/ with an `ENGINE`; EDGE_LLM_TARGETS and
EDGE_LLM_ENGINES (comma-separated module names) add ones that live outside the builder,
as the examples in the tests do. The profile schema is the shared sections
(schema.Profile) with `engine:` holding every engine's own section and, per target,
`target` fixed to its name and its own section: one union discriminated by `target`.

Nothing here looks a plug-in up by name: that is builder/resolve.py's, the one place.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from . import doctor
from . import engines as engines_pkg
from . import targets as targets_pkg
from .contracts import Engine, FlashMethod, Target
from .schema import EngineSpec, Profile

TARGETS_ENV, ENGINES_ENV = "EDGE_LLM_TARGETS", "EDGE_LLM_ENGINES"


def _modules(pkg: ModuleType, env: str, packages_only: bool) -> list[ModuleType]:
    names = [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
             if m.ispkg or not packages_only]
    names += [n.strip() for n in os.environ.get(env, "").split(",") if n.strip()]
    return [importlib.import_module(n) for n in names]


TARGETS: dict[str, Target] = {m.TARGET.name: m.TARGET
                              for m in _modules(targets_pkg, TARGETS_ENV, True)}
ENGINES: dict[str, Engine] = {m.ENGINE.kind: m.ENGINE
                              for m in _modules(engines_pkg, ENGINES_ENV, False)
                              if hasattr(m, "ENGINE")}

# `engine:`: the kind, one of the engines found, and every engine's own section (a
# profile may carry one it does not run; only its kind's is read)
ENGINE_SPEC: type[BaseModel] = create_model(
    "EngineSpec", __base__=EngineSpec,
    kind=(Literal[tuple(ENGINES)], Field(..., description="Inference engine.")),  # type: ignore[valid-type]
    **{e.section: (e.settings, Field(default_factory=e.settings,
                                     description=f"Options when kind is {e.kind}."))
       for e in ENGINES.values()})


def _profile_model(t: Target) -> type[Profile]:
    """A target's profile: the shared fields, `target` fixed to its name, `engine:` with
    every engine's section, and the target's own section."""
    return create_model(
        f"{t.settings.__name__.removesuffix('Settings')}Profile", __base__=Profile,
        target=(Literal[t.name], Field(..., description=Profile.model_fields[
            "target"].description)),
        engine=(ENGINE_SPEC, Field(..., description=Profile.model_fields[
            "engine"].description)),
        **{t.section: (t.settings, Field(default_factory=t.settings,
                                         description=f"Settings only a {t.name} target "
                                         "has."))})


# target name -> its profile model; and the union that validates any profile
PROFILE_MODELS: dict[str, type[Profile]] = {n: _profile_model(t) for n, t in TARGETS.items()}
PROFILE: TypeAdapter[Any] = TypeAdapter(
    Annotated[Union[tuple(PROFILE_MODELS.values())],  # noqa: UP007
              Field(discriminator="target")])
# an abstract base that names no target yet: the shared fields (with every engine's
# section), and each target's section it sets
SHARED_PROFILE: type[Profile] = create_model(
    "SharedProfile", __base__=Profile,
    engine=(ENGINE_SPEC, Field(..., description=Profile.model_fields["engine"].description)))
TARGET_SECTIONS: dict[str, type[BaseModel]] = {t.section: t.settings
                                              for t in TARGETS.values()}


def flash_methods() -> dict[str, FlashMethod]:
    """Every flash method a family brings (a lab inventory's `flash:`), by name."""
    return {m.name: m for t in TARGETS.values() for m in t.flash_methods}


def _register_host_tools() -> None:
    """What each `builder doctor` stage needs, as the targets and engines declare it."""
    for plugin in (*ENGINES.values(), *TARGETS.values()):
        for stage, tools in plugin.host_tools().items():
            for t in tools:
                doctor.register(stage, t.command, t.package)


_register_host_tools()
