"""The command line as a user meets it: help everywhere, one-line errors, JSON output."""

from __future__ import annotations

import json

import click
import pytest

from builder.cli.main import app
from builder.schema import Profile


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


@pytest.mark.parametrize("path", _commands(app), ids=lambda p: " ".join(p) or "builder")
def test_every_command_has_help(path: tuple[str, ...], cli) -> None:
    r = cli(*path, "--help")
    assert r.code == 0 and "Usage: builder" in r.out
    doc = r.out.split("\n\n")[1].strip()
    assert doc, f"{' '.join(path)} has no description"


def test_no_arguments_shows_help_and_succeeds(cli) -> None:
    r = cli()
    assert r.code == 0 and "Commands:" in r.out


def test_the_installed_script_prints_one_line_and_no_traceback(run_builder, tmp_path) -> None:
    (tmp_path / "p.yaml").write_text("extends: x86-gateway\nruntime: {parallel: many}\n")
    r = run_builder("profiles", "validate", "p.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == ("error: p.yaml:2:21: runtime.parallel: expected an integer, got "
                        "'many'\n")
    assert "Traceback" not in r.stdout + r.stderr


def test_plan_runs_from_the_installed_script_with_exit_status_as_verdict(run_builder) -> None:
    r = run_builder("plan", "--profile", "pi5-4gb", "--model", "qwen2.5-7b-instruct",
                    "--quant", "F16")
    assert r.returncode == 3 and "does not fit" in r.stdout


def test_unknown_option_is_one_line(cli) -> None:
    r = cli("plan", "--bogus")
    assert r.code == 2 and r.err.count("\n") == 1
    assert r.err.startswith("error: No such option") and "--bogus" in r.err
    assert r.err.endswith("(see `builder plan --help`)\n")


def test_schema_is_json_schema_with_descriptions(cli) -> None:
    schema = json.loads(cli("profiles", "schema").out)
    assert schema["title"] == "edge-llm builder device profile"
    runtime = schema["$defs"]["Runtime"]["properties"]
    assert runtime["kv_cache_type"]["description"]
    size = schema["$defs"]["Device"]["properties"]["ram"]
    assert {"type": "integer", "minimum": 0} in size["anyOf"]


def _walk_fields(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    from builder.profiles import _section_model

    missing = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        if not info.description:
            missing.append(prefix + name)
        sub = _section_model(info.annotation)
        if sub is not None and issubclass(sub, BaseModel):
            missing += _walk_fields(sub, f"{prefix}{name}.")
    return missing


def test_every_profile_field_has_a_description() -> None:
    assert _walk_fields(Profile) == []


def test_models_list_json_carries_sizes_for_every_quant(cli, tmp_path) -> None:
    rows = json.loads(cli("models", "list", "--json", "--cache-dir", str(tmp_path)).out)
    assert [r["id"] for r in rows] == ["qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct",
                                       "qwen2.5-3b-instruct", "qwen2.5-7b-instruct"]
    quants = rows[0]["quants"]
    assert {e: set(q) for e, q in quants.items()} == {
        "llama.cpp": {"Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"},
        "tensorrt-llm": {"int4_awq", "int4_gptq", "int8_wo", "fp16"},
        "tensorrt-edge-llm": {"int4_awq", "int4_gptq", "int8_sq", "fp16"}}
    # the same name, each engine's own layout: Edge-LLM keeps a tied model's lm_head apart
    assert quants["tensorrt-edge-llm"]["int4_awq"]["weight_bytes"] > \
        quants["tensorrt-llm"]["int4_awq"]["weight_bytes"]


def test_plan_text_shows_every_line_item(cli) -> None:
    r = cli("plan", "--profile", "x86-gateway")
    for item in ("weights", "KV cache", "compute buffers", "output buffer",
                 "engine process", "gateway", "total", "available", "verdict: fits",
                 "engine MemoryMax"):
        assert item in r.out


@pytest.mark.parametrize(("profile", "basis"), [
    ("x86-gateway", "ubatch 512"),
    ("orin-nano-8gb", "one engine step of 4096 tokens"),
    ("orin-nano-8gb-edgellm", "a prefill of 2048 tokens (max_input_len)"),
])
def test_plan_says_what_sizes_each_engines_compute_buffers(cli, profile, basis) -> None:
    r = cli("plan", "-p", profile)
    [line] = [ln for ln in r.out.splitlines() if "compute buffers" in ln]
    assert basis in line, line
