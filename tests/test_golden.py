"""Everything a build renders from a profile, for every built-in profile, against the
files in tests/golden/<profile>/: role variables, the engine's environment and unit
drop-in, the gateway's settings, the engine recipe, the memory plan, and what the
target writes (boot entries, partition tables). A change to a rendering shows up as a
reviewed diff: regenerate with `UPDATE_GOLDEN=1 pytest tests/test_golden.py`.

The artifacts are stand-ins with fixed names and hashes (nothing is built), so the
renderings are pure functions of the profile."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stand_ins import RELEASE_ID, build_context

from builder import build as build_mod
from builder.errors import BuilderError
from builder.fleet import release
from builder.profiles import ProfileStore

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
PROFILES = sorted(ProfileStore().names())


def _render(what, *args) -> str:
    """A rendering, or the one-line reason this engine does not render it yet."""
    try:
        return what(*args)
    except BuilderError as e:
        return f"(not rendered: {e})\n"


def renderings(name: str) -> dict[str, str]:
    ctx = build_context(name)
    inputs = build_mod.release_inputs(ctx)
    e, p, target = ctx.engine, ctx.p, ctx.target
    recipe = e.recipe(p, target.platform(p))
    plan = ctx.plan.to_json()
    plan.pop("input")
    return {
        "role_vars.json": json.dumps(build_mod.role_vars(ctx, image_build=True), indent=2)
        + "\n",
        "engine.env": _render(lambda: release.env_file(e.env(inputs, release.LAYOUT),
                                                       e.kind)),
        "engine.conf": _render(release.engine_unit_conf, inputs),
        "gateway.conf": _render(release.gateway_unit_conf, inputs),
        "gateway.json": json.dumps(release.gateway_config(inputs, RELEASE_ID), indent=2)
        + "\n",
        "recipe.sh": "".join(f"# {n}\n" for n in recipe.notes)
        + "".join(f"{c}\n" for c in recipe.commands()),
        "plan.json": json.dumps(plan, indent=2) + "\n",
        **target.renderings(p, RELEASE_ID),
    }


CASES = [(name, file) for name in PROFILES for file in renderings(name)]


@pytest.mark.parametrize(("profile", "file"), CASES, ids=[f"{p}/{f}" for p, f in CASES])
def test_rendering_matches_the_golden_file(profile: str, file: str) -> None:
    got = renderings(profile)[file]
    path = GOLDEN / profile / file
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.is_file(), f"no golden file {path}; run with UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text(), f"{path} differs; review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize("profile", PROFILES)
def test_no_golden_file_is_left_over(profile: str) -> None:
    files = {f.name for f in (GOLDEN / profile).iterdir()} if (GOLDEN / profile).is_dir() \
        else set()
    assert files <= set(renderings(profile)), "stale golden files"


def test_every_golden_directory_is_a_builtin_profile() -> None:
    assert {d.name for d in GOLDEN.iterdir() if d.is_dir()} <= set(PROFILES)
