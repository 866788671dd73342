"""The image build's pure parts and its refusals: role variables (golden), overlay
order, host tools, a model that does not fit, an unreachable verify host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stand_ins import build_context

from builder import build as build_mod
from builder.fleet import release
from builder.profiles import ProfileStore


def test_release_paths_reach_ansible_absolute(workdir: Path) -> None:
    ctx = build_context("x86-gateway")
    ctx.bundle = release.Bundle(Path("out/releases/r0123456789ab"))  # --out out (relative)
    rv = build_mod.role_vars(ctx, image_build=True)
    assert rv["release_tree"] == str(workdir / "out/releases/r0123456789ab/tree")


def test_every_runtime_knob_reaches_the_engine_environment() -> None:
    i = build_mod.release_inputs(build_context("pi5-4gb"))
    env = i.engine.env(i, release.LAYOUT)
    assert env["LLAMA_ARG_CTX_SIZE"] == "4096" and env["LLAMA_ARG_N_PARALLEL"] == "1"
    assert env["LLAMA_ARG_THREADS"] == "4" and env["LLAMA_ARG_KV_UNIFIED"] == "false"
    assert {"LLAMA_ARG_BATCH", "LLAMA_ARG_UBATCH", "LLAMA_ARG_CACHE_TYPE_K",
            "LLAMA_ARG_CACHE_TYPE_V", "LLAMA_ARG_FLASH_ATTN", "LLAMA_ARG_LOAD_MODE",
            "LLAMA_ARG_FIT"} <= set(env)
    assert "LLAMA_ARG_HOST" not in env  # the unit pins 127.0.0.1 itself
    assert env["LLAMA_ARG_PORT"] == "8081"
    assert env["LLAMA_ARG_MODEL"] == f"/var/lib/edge-llm/models/{'ab' * 32}.gguf"


def test_role_defaults_match_their_argument_specs() -> None:
    import yaml

    from builder import plugins
    from builder.data import data_dir

    dirs = [data_dir("roles"), *(t.roles_dir for t in plugins.TARGETS.values() if t.roles_dir)]
    roles = sorted(p for d in dirs for p in d.iterdir() if (p / "meta").is_dir())
    assert {r.name for r in roles} >= {"base", "inference", "gateway", "release", "jetson"}
    for role in roles:
        defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
        spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
        options = spec["argument_specs"]["main"]["options"]
        assert set(defaults) <= set(options), f"{role.name}: defaults not in the spec"
        for name, opt in options.items():
            assert opt.get("description"), f"{role.name}.{name} has no description"
            assert name.startswith(f"{role.name}_"), f"{role.name}.{name}: unprefixed"


def test_overlays_apply_common_then_the_profile_chain() -> None:
    layers = build_mod.overlay_layers(ProfileStore().load("x86-gateway").chain)
    assert [p.name for p in layers] == ["common", "x86-gateway"]
    assert (layers[-1] / "etc/hostname").read_text() == "edge-gateway\n"


def test_a_model_that_does_not_fit_is_refused_before_building(workdir: Path, cli) -> None:
    (workdir / "profiles").mkdir()
    (workdir / "profiles/tiny-box.yaml").write_text(
        "extends: x86-gateway\ndevice:\n  ram: 1GiB\n")
    r = cli("build", "--profile", "tiny-box", "--out", "out")
    assert r.code == 3
    assert r.err.startswith("error: tiny-box: the model does not fit the device: needs ")
    assert r.err.endswith("`builder plan --profile tiny-box` shows what would\n")
    assert not (workdir / "out").exists() or not any((workdir / "out").iterdir())


def test_an_engine_the_device_could_serve_but_never_build_is_refused(workdir: Path,
                                                                   cli) -> None:
    """Qwen2.5-3B int8 weight-only fits an Orin Nano 8GB to serve, but converting it on the
    board holds the fp16 model: the build says so before it starts, and what would do."""
    (workdir / "profiles").mkdir()
    (workdir / "profiles/nano-3b.yaml").write_text(
        "extends: orin-nano-8gb\nmodel:\n  id: qwen2.5-3b-instruct\n  quant: int8_wo\n"
        "  source: {hf_repo: Qwen/Qwen2.5-3B-Instruct}\n")
    assert "verdict: fits" in cli("plan", "--profile", "nano-3b").out
    r = cli("build", "--profile", "nano-3b", "--out", "out")
    assert r.code == 3
    assert r.err.startswith("error: nano-3b: TensorRT-LLM engine build for qwen2.5-3b-instruct "
                            "int8_wo on the device peaks near ")
    assert "model.quant: int4_gptq" in r.err and "engine.kind: llama.cpp" in r.err
    assert not (workdir / "out").exists() or not any((workdir / "out").iterdir())


def test_a_missing_host_tool_is_named(run_builder, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    r = run_builder("doctor", env_path=str(bin_dir))
    assert r.returncode == 2
    assert "mmdebstrap" in r.stderr and "builder doctor --install" in r.stderr
    assert r.stderr.count("\n") == 1


def test_verify_an_unreachable_host_is_one_line(workdir: Path, cli) -> None:
    (workdir / "out/x86-gateway").mkdir(parents=True)
    (workdir / "out/x86-gateway/manifest.json").write_text("{}")
    r = cli("verify", "--profile", "x86-gateway", "--host", "ssh://edge@127.0.0.1:1")
    assert r.code == 2
    assert r.err.startswith("error: --host ssh://edge@127.0.0.1:1: cannot log in over SSH: ")
    assert r.err.count("\n") == 1


def test_verify_without_a_build_says_what_to_do(workdir: Path, cli) -> None:
    r = cli("verify", "--profile", "x86-gateway", "--host", "ssh://edge@127.0.0.1:2222")
    assert (r.code, r.err) == (2, "error: out/x86-gateway/manifest.json: no build of "
                                  "x86-gateway here; run `builder build --profile "
                                  "x86-gateway` first\n")


@pytest.mark.parametrize(("url", "message"), [
    ("http://x", "error: --host http://x: expected ssh://user@host:port\n"),
    ("ssh://edge@host:port", "error: --host ssh://edge@host:port: the port is not a "
                             "number\n"),
])
def test_verify_host_must_be_an_ssh_url(url: str, message: str, workdir: Path, cli) -> None:
    (workdir / "out/x86-gateway").mkdir(parents=True)
    (workdir / "out/x86-gateway/manifest.json").write_text("{}")
    r = cli("verify", "--profile", "x86-gateway", "--host", url)
    assert (r.code, r.err) == (2, message)


def test_building_needs_root_when_not_root(monkeypatch, workdir: Path, cli) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = cli("build", "--profile", "x86-gateway", "--out", "out")
    assert r.code == 2 and "building an image needs root" in r.err


def test_vm_stop_with_nothing_running(workdir: Path, cli) -> None:
    r = cli("vm", "--profile", "x86-gateway", "--stop", "--out", "out")
    assert (r.code, r.out) == (0, "x86-gateway: no VM was running\n")


def test_vm_without_a_build_says_what_to_do(workdir: Path, cli) -> None:
    r = cli("vm", "--profile", "x86-gateway", "--out", "out")
    assert (r.code, r.err) == (2, "error: out/x86-gateway/manifest.json: no build of "
                                  "x86-gateway here; run `builder build --profile "
                                  "x86-gateway` first\n")


def test_overlays_never_loosen_modes_in_the_rootfs(tmp_path: Path) -> None:
    """A checkout made with umask 002 (or unpacked loosely) has group-writable overlay
    directories and files: the image must not inherit that, and the rootfs's own links
    (absolute ones, as Debian's /var/run -> /run) are followed inside the rootfs, never
    on the build host."""
    root, layer, host = tmp_path / "rootfs", tmp_path / "overlay", tmp_path / "host"
    for d in (root / "etc", root / "run", layer / "etc" / "edge-llm", layer / "var" / "run",
              host):
        d.mkdir(parents=True)
    (root / "etc").chmod(0o755)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute: the image's /run
    (root / "etc" / "motd").symlink_to(host / "motd")  # a link out, to be replaced
    (layer / "etc").chmod(0o775)
    (layer / "etc" / "edge-llm").chmod(0o777)
    (layer / "etc" / "motd").write_text("welcome\n")
    (layer / "etc" / "motd").chmod(0o666)
    (layer / "etc" / "edge-llm" / "tool").write_text("#!/bin/sh\n")
    (layer / "etc" / "edge-llm" / "tool").chmod(0o4775)
    (layer / "var" / "run" / "marker").write_text("x")
    build_mod.lay_overlay(layer, root)

    def mode(p: Path) -> int:
        return p.lstat().st_mode & 0o7777

    assert mode(root / "etc") == 0o755  # the rootfs's own directory keeps its mode
    assert mode(root / "etc" / "edge-llm") == 0o755
    assert mode(root / "etc" / "edge-llm" / "tool") == 0o755  # no setuid, no g+w
    assert mode(root / "etc" / "motd") == 0o644 and not (root / "etc" / "motd").is_symlink()
    assert (root / "run" / "marker").read_text() == "x"  # through var/run, inside the rootfs
    assert list(host.iterdir()) == [] and not Path("/run/marker").exists()
