"""`builder tune` and the tuned runtime overlay a profile includes (docs/tune.md): the
overlay stays inside the memory plan, reaches the release and the flags the device's
engine runs with, and bad input is one line with nothing half-written; the search on
the real llama-bench (tests marked slow) with the tiny model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from device_tree import keygen

from builder import tuned
from builder.verify.suite.engine_env import mismatches, parse_env_file

# A 3 GiB x86 gateway whose q8_0 KV cache just fits 2 slots of 16384 tokens of
# Qwen2.5-1.5B; an f16 cache (twice the bytes) does not.
SMALL = """extends: x86-gateway
device:
  ram: 3GiB
runtime:
  kv_cache_type: q8_0
  context_length: 16384
"""
ROOMY = "extends: x86-gateway\n"


def overlay_data(runtime: dict, *, model: str = "qwen2.5-1.5b-instruct",
                 quant: str = "Q4_K_M", complete: bool = True) -> dict:
    return {"format": tuned.FORMAT, "profile": "t", "complete": complete,
            "objective": "decode first", "model": {"id": model, "quant": quant},
            "device": {"host": "local", "cpu": "test", "cores": 2}, "runtime": runtime,
            "measurements": {}}


def write_profile(d: Path, name: str, text: str, overlay: dict | str | None = None) -> None:
    if overlay is not None:
        (d / f"{name}.tuned.yml").write_text(
            overlay if isinstance(overlay, str) else yaml.safe_dump(overlay))
        text += f"tuned: {name}.tuned.yml\n"
    (d / f"{name}.yaml").write_text(text)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- the plan -----------------------------------------------------------------------------

def test_an_overlay_that_grows_memory_past_the_plan_is_refused_in_one_line(cli, workdir
                                                                           ) -> None:
    grow = overlay_data({"kv_cache_type": "f16", "ubatch_size": 512})
    write_profile(workdir, "small", SMALL)
    write_profile(workdir, "small-tuned", "extends: small\n", grow)
    write_profile(workdir, "roomy-tuned", ROOMY, grow)
    assert cli("plan", "-p", "small", "-P", str(workdir)).code in (0, 1)  # fits as it is
    r = cli("plan", "-p", "small-tuned", "-P", str(workdir))
    assert r.code == 2
    line = one_line(r.err)
    assert "small-tuned.tuned.yml" in line and "leave the memory plan" in line
    assert "kv_cache_type f16" in line and "small-tuned.yaml:2" in line
    # the same overlay where memory allows it: taken, and the profile runs its settings
    r = cli("profiles", "show", "roomy-tuned", "-P", str(workdir))
    assert r.code == 0 and "kv_cache_type: f16" in r.out


def test_a_candidate_that_would_leave_the_plan_is_refused_before_it_runs(workdir) -> None:
    from builder import resolve
    from builder.profiles import ProfileStore
    from builder.tune import refusal

    write_profile(workdir, "small", SMALL)
    rp = ProfileStore([workdir]).load("small")
    d = resolve.resolve(rp, rp.concrete())
    why = refusal(d, {"kv_cache_type": "f16"}, None, d.plan.verdict)
    assert why and why.startswith("does not fit the memory plan") and "\n" not in why
    why = refusal(d, {"flash_attn": "off"}, None, d.plan.verdict)  # q8_0 V needs it
    assert why and "needs flash attention" in why
    assert refusal(d, {"threads": 2, "ubatch_size": 256}, None, d.plan.verdict) is None


def test_an_overlay_tuned_for_another_model_is_refused(cli, workdir) -> None:
    write_profile(workdir, "t", ROOMY, overlay_data({"threads": 2},
                                                    model="qwen2.5-0.5b-instruct"))
    r = cli("plan", "-p", "t", "-P", str(workdir))
    assert r.code == 2 and "tuned for qwen2.5-0.5b-instruct" in one_line(r.err)


# --- the weight format (ARM) ---------------------------------------------------------------

def _device(workdir: Path, name: str, text: str):
    from builder import resolve
    from builder.profiles import ProfileStore

    write_profile(workdir, name, text)
    rp = ProfileStore([workdir]).load(name)
    return resolve.resolve(rp, rp.concrete())


def test_on_arm_the_weight_format_is_tried_first_among_formats_of_its_size(workdir) -> None:
    pi = _device(workdir, "pi", "extends: pi5-8gb\n")
    knobs = pi.engine.tuner().knobs(pi.profile, pi.platform)
    assert knobs[0].name == "weights" and knobs[0].values == ({"weights": "Q4_0"},)
    # a bigger or smaller format is a quality choice, not a speed setting
    q8 = _device(workdir, "pi-q8", "extends: pi5-8gb\nmodel:\n  quant: Q8_0\n")
    assert "weights" not in [k.name for k in q8.engine.tuner().knobs(q8.profile, q8.platform)]
    gw = _device(workdir, "gw", ROOMY)  # x86: not tried
    assert "weights" not in [k.name for k in gw.engine.tuner().knobs(gw.profile, gw.platform)]


def test_a_weight_format_candidate_is_planned_at_that_format(workdir) -> None:
    from builder.tune import refusal, with_settings

    pi = _device(workdir, "pi", "extends: pi5-8gb\n")
    q4_0 = with_settings(pi, {"weights": "Q4_0"}, None)
    assert q4_0.profile.model.quant == "Q4_0"
    assert q4_0.plan.weights < pi.plan.weights
    assert refusal(pi, {"weights": "Q4_0"}, None, pi.plan.verdict) is None
    why = refusal(pi, {"weights": "Q9_9"}, None, pi.plan.verdict)
    assert why and "Q9_9" in why and "\n" not in why


def test_an_overlay_that_chose_a_weight_format_sets_the_releases_model_quant(cli, workdir
                                                                             ) -> None:
    chose = {**overlay_data({"threads": 4}, model="qwen2.5-3b-instruct"), "weights": "Q4_0"}
    write_profile(workdir, "pi", "extends: pi5-8gb\n", chose)
    r = cli("profiles", "show", "pi", "-P", str(workdir), "--json")
    assert r.code == 0, r.err
    shown = json.loads(r.out)["profile"]
    assert shown["model"]["quant"] == "Q4_0" and shown["runtime"]["threads"] == 4
    # a format the engine does not make: one line naming the overlay's line
    write_profile(workdir, "bad", "extends: pi5-8gb\n", {**chose, "weights": "Q9_9"})
    r = cli("profiles", "show", "bad", "-P", str(workdir))
    line = one_line(r.err)
    assert r.code == 2 and "bad.tuned.yml:" in line and "Q9_9" in line
    # measured on another format than the profile's: refused, naming what it measured
    write_profile(workdir, "q5", "extends: pi5-8gb\nmodel:\n  quant: Q5_K_M\n", chose)
    r = cli("profiles", "show", "q5", "-P", str(workdir))
    assert r.code == 2 and "tuned for qwen2.5-3b-instruct Q4_K_M" in one_line(r.err)


def test_a_weight_format_outside_the_tuners_choices_is_refused(cli, workdir) -> None:
    # a bigger format is a quality choice (model.quant), and x86 tries none
    q8 = {**overlay_data({"threads": 4}, model="qwen2.5-3b-instruct"), "weights": "Q8_0"}
    write_profile(workdir, "pi", "extends: pi5-8gb\n", q8)
    r = cli("profiles", "show", "pi", "-P", str(workdir))
    line = one_line(r.err)
    assert r.code == 2 and "pi.tuned.yml:" in line
    assert "weights: Q8_0 is not a weight format `builder tune` chooses for Q4_K_M here " \
        "(it tries Q4_0)" in line
    write_profile(workdir, "gw", ROOMY, {**overlay_data({"threads": 2}), "weights": "Q4_0"})
    r = cli("profiles", "show", "gw", "-P", str(workdir))
    assert r.code == 2 and "it tries none on amd64" in one_line(r.err)


@pytest.mark.parametrize(("kept", "weights"), [("Q4_0", "Q4_0"), ("Q4_K_M", None)])
def test_a_tune_again_writes_its_overlay_against_the_profiles_own_format(
        workdir, kept, weights) -> None:
    """A profile whose overlay chose Q4_0 serves Q4_0 and is measured on it; the new
    overlay still names the profile's own Q4_K_M as the model measured, and Q4_0 as
    its choice when Q4_0 stays (a file the profile then loads)."""
    from builder import resolve
    from builder.profiles import ProfileStore
    from builder.tune import Bench, Local, Test, Tune, settings_of

    chose = {**overlay_data({"threads": 4}, model="qwen2.5-3b-instruct"), "weights": "Q4_0"}
    write_profile(workdir, "pi", "extends: pi5-8gb\n", chose)
    rp = ProfileStore([workdir]).load("pi")
    d = resolve.resolve(rp, rp.concrete())
    assert d.profile.model.quant == "Q4_0" and rp.untuned_quant == "Q4_K_M"
    t = Tune(d, Bench(Local(), "llama-bench", "m.gguf", "sha", "e"), Test(64, 32, 4, 1),
             workdir / "pi.tuned.yml", say=lambda s: None)
    settings = settings_of(d.profile.runtime, 4)
    if kept != "Q4_0":
        settings["weights"] = kept
    t.save(settings, complete=True)
    o = tuned.load(workdir / "pi.tuned.yml")
    assert o.quant == "Q4_K_M" and o.weights == weights
    again = ProfileStore([workdir]).load("pi")
    assert again.profile and again.profile.model.quant == kept


# --- the release and the engine's flags ----------------------------------------------------

TUNED = {"threads": 1, "flash_attn": "off", "ubatch_size": 256, "batch_size": 1024,
         "mmap": False, "mlock": True}


def make_release(work: Path, profile_dir: Path, name: str, *, engine_dir: Path | None = None,
                 model: Path | None = None):
    """A signed release of profile `name` (from profile_dir), as `builder release` makes
    it: release.make over the resolved device."""
    from builder import resolve
    from builder.contracts import ReleaseInputs
    from builder.fleet import release
    from builder.model.pipeline import ModelArtifact
    from builder.profiles import ProfileStore

    rp = ProfileStore([profile_dir]).load(name)
    d = resolve.resolve(rp, rp.concrete())
    if engine_dir is None:
        engine_dir = work / "engine"
        (engine_dir / "bin").mkdir(parents=True, exist_ok=True)
        (engine_dir / "bin/llama-server").write_bytes(b"#!engine\n")
    gw = work / "gateway"
    gw.mkdir(parents=True, exist_ok=True)
    (gw / "__init__.py").write_text('"""a gateway package"""\n')
    if model is None:
        model = work / "model-Q4_K_M.gguf"
        model.write_bytes(b"GGUF" + b"\0" * 1024)
    art = ModelArtifact(model, hashlib.sha256(model.read_bytes()).hexdigest(), "Q4_K_M",
                        "gguf")
    key = work / "signing"
    if not key.exists():
        keygen(key)
    i = ReleaseInputs(device=d, engine_dir=engine_dir, engine_key="engine",
                      gateway_dir=gw, gateway_key="gateway", model=art, model_id="m")
    return release.make(i, work / "out" / "releases", key)


def test_a_tuned_release_carries_the_settings_to_the_engine_unit(workdir) -> None:
    write_profile(workdir, "plain", ROOMY)
    write_profile(workdir, "tuned", ROOMY, overlay_data(TUNED))
    plain = make_release(workdir, workdir, "plain")
    tuned_release = make_release(workdir, workdir, "tuned")
    assert plain.release_id != tuned_release.release_id  # the settings name the release
    env = parse_env_file((tuned_release.tree / "engine.env").read_text())
    assert env["LLAMA_ARG_THREADS"] == "1"
    assert env["LLAMA_ARG_FLASH_ATTN"] == "off"
    assert env["LLAMA_ARG_UBATCH"] == "256" and env["LLAMA_ARG_BATCH"] == "1024"
    assert env["LLAMA_ARG_LOAD_MODE"] == "mlock"  # no mmap, locked
    conf = (tuned_release.tree / "systemd" / "engine.conf").read_text()
    assert "LimitMEMLOCK=infinity" in conf
    untuned = parse_env_file((plain.tree / "engine.env").read_text())
    assert untuned["LLAMA_ARG_UBATCH"] == "512" and untuned["LLAMA_ARG_FLASH_ATTN"] == "auto"


@pytest.mark.parametrize("ships_quantize", [True, False])
def test_a_devices_release_names_the_tools_the_tune_runs_there(workdir,
                                                               ships_quantize) -> None:
    """--host: the benchmark and the quantize tool are the release's own, found in its
    manifest (a release without llama-quantize has no weight format to try)."""
    from builder import resolve
    from builder.profiles import ProfileStore
    from builder.tune import on_device

    engine = workdir / "engine"
    (engine / "bin").mkdir(parents=True)
    for tool in ("llama-server", "llama-bench", *(("llama-quantize",) if ships_quantize
                                                   else ())):
        (engine / "bin" / tool).write_bytes(b"#!engine\n")
    write_profile(workdir, "gw", ROOMY)
    rel = make_release(workdir, workdir, "gw", engine_dir=engine)
    manifest = (rel.tree / "release.json").read_text()

    class Device:
        where = "ssh://edge@device:22"

        def run(self, argv: list[str], what: str) -> str:
            assert argv == ["cat", "/opt/edge-llm/current/release.json"], argv
            return manifest

    rp = ProfileStore([workdir]).load("gw")
    bench, unit = on_device(resolve.resolve(rp, rp.concrete()), Device(), print)
    assert bench.tool == "/opt/edge-llm/current/bin/llama-bench"
    assert bench.quantize == ("/opt/edge-llm/current/bin/llama-quantize" if ships_quantize
                              else None)
    assert unit == "edge-llm-engine.service"


def test_verify_sees_an_engine_running_other_settings_than_its_release() -> None:
    """builder verify's check (suite/test_engine_settings.py): the engine process's
    environment against the release's engine.env, as systemd reads that file."""
    from builder.fleet.release import env_file

    env = {"LLAMA_ARG_UBATCH": "256", "LLAMA_ARG_FLASH_ATTN": "off",
           "LLAMA_ARG_ALIAS": 'odd "name" \\ here'}
    parsed = parse_env_file(env_file(env, "llama.cpp"))
    assert parsed == env
    assert mismatches(parsed, {**env, "PATH": "/usr/bin"}) == []
    ran = {**env, "LLAMA_ARG_UBATCH": "512"}
    ran.pop("LLAMA_ARG_FLASH_ATTN")
    found = mismatches(parsed, ran)
    assert len(found) == 2
    assert any("LLAMA_ARG_UBATCH" in f and "'512'" in f for f in found)
    assert any("LLAMA_ARG_FLASH_ATTN: missing" in f for f in found)


# --- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize(("overlay", "says"), [
    ("runtime: [unclosed\n", "invalid YAML"),
    (yaml.safe_dump(overlay_data({"context_length": 99})), "sets only threads"),
    (yaml.safe_dump(overlay_data({"flash_attn": "sometimes"})), "runtime.flash_attn"),
    (yaml.safe_dump(overlay_data({"ubatch_size": 0})), "runtime.ubatch_size"),
    (yaml.safe_dump({**overlay_data({}), "format": 9}), "format: expected 1"),
    (yaml.safe_dump({**overlay_data({}), "shell": "rm -rf /"}), "unknown field"),
    ("- a list\n", "expected a tuned overlay"),
])
def test_a_malformed_overlay_is_one_line_and_nothing_is_written(cli, workdir, overlay,
                                                                says) -> None:
    write_profile(workdir, "t", ROOMY, overlay)
    out = workdir / "out.yaml"
    r = cli("tune", "--local", "-p", "t", "-P", str(workdir), "-o", str(out))
    assert r.code == 2
    line = one_line(r.err)
    assert "t.tuned.yml" in line and says in line, line
    assert not out.exists()
    assert cli("profiles", "validate", str(workdir / "t.yaml"), "-P", str(workdir)).code == 2


def test_a_missing_overlay_names_the_profile_line(cli, workdir) -> None:
    (workdir / "t.yaml").write_text(ROOMY + "tuned: gone.yml\n")
    r = cli("plan", "-p", "t", "-P", str(workdir))
    assert r.code == 2 and re.search(r"t\.yaml:2:\d+: tuned: .*gone\.yml: no such file",
                                     one_line(r.err))


@pytest.mark.parametrize(("args", "says"), [
    (["-p", "no-such-profile", "--local"], "unknown profile 'no-such-profile'"),
    (["-p", "x86-gateway"], "say where: --local"),
    (["-p", "x86-gateway", "--local", "--host", "ssh://edge@127.0.0.1"], "say where"),
    (["-p", "x86-gateway", "--host", "ssh://edge@127.0.0.1", "--synthetic"],
     "use them with --local"),
    (["-p", "x86-gateway", "--host", "ssh://-oProxyCommand=x@h"], "is not a user name"),
])
def test_bad_arguments_are_one_line(cli, workdir, args, says) -> None:
    r = cli("tune", *args, "-o", str(workdir / "out.yaml"))
    assert r.code == 2 and says in one_line(r.err)
    assert not (workdir / "out.yaml").exists()


def test_an_unreachable_host_is_one_line_and_nothing_is_written(cli, workdir) -> None:
    r = cli("tune", "-p", "x86-gateway", "--host", "ssh://edge@127.0.0.1:1",
            "--cache-dir", str(workdir / "cache"), "-o", str(workdir / "out.yaml"))
    assert r.code != 0
    line = one_line(r.err)
    assert "ssh://edge@127.0.0.1:1" in line and "cannot log in over SSH" in line
    assert not (workdir / "out.yaml").exists()


def test_an_overlay_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    tuned.write(path, overlay_data({"threads": 2}))
    before = path.read_text()
    with pytest.raises(yaml.representer.RepresenterError):
        tuned.write(path, {**overlay_data({"threads": 1}), "bad": object()})
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]
    assert tuned.load(path).runtime == {"threads": 2}


# --- on the real engine (tiny model) -------------------------------------------------------

TWO_CORES = "extends: x86-gateway\ndevice:\n  cpu_cores: 2\n"
SMALL_TEST = ["--depth", "64", "--prompt", "32", "--gen", "4", "-r", "1"]


@pytest.mark.slow
def test_the_search_on_the_real_llama_bench(cli, workdir, x86_engine, tiny_q4) -> None:
    (workdir / "gw.yaml").write_text(TWO_CORES)
    out = workdir / "tuned" / "gw.yaml"
    r = cli("tune", "--local", "-p", "gw", "-P", str(workdir), "--model-file", str(tiny_q4),
            *SMALL_TEST)
    assert r.code == 0, r.err
    assert "[1/" in r.out and "defaults" in r.out  # progress per measurement
    assert f"note: {tiny_q4.name} is not qwen2.5-1.5b-instruct in shape" in r.out
    o = tuned.load(out)
    assert o.complete and o.model_id == tiny_q4.name.lower()  # what was measured
    dev = o.data["device"]
    assert dev["host"] == "local" and dev["cores"] == len(os.sched_getaffinity(0)) and dev["cpu"]
    assert dev["engine_build"] == x86_engine.entry.key
    assert dev["model_sha256"] == hashlib.sha256(tiny_q4.read_bytes()).hexdigest()
    meas = o.data["measurements"]
    assert meas["test"] == {"depth": 64, "prompt_tokens": 32, "gen_tokens": 4,
                            "repetitions": 1}
    trials = meas["trials"]
    assert trials[0]["outcome"] == "defaults" and len(trials) >= 4
    for t in trials:
        if t["outcome"].startswith(("kept", "not kept", "defaults")):
            assert t["measured"]["prefill_tps"] > 0 and t["measured"]["decode_tps"] > 0
    default, best = meas["default"], meas["tuned"]
    assert best["decode_tps"] >= default["decode_tps"]  # the objective, as measured
    assert best["prefill_tps"] >= default["prefill_tps"] * 0.98
    # settings measured on the tiny model are not the catalog model's: a profile of it
    # refuses them, naming the model they were tuned for
    (workdir / "gw-tuned.yaml").write_text("extends: gw\ntuned: tuned/gw.yaml\n")
    r = cli("profiles", "show", "gw-tuned", "-P", str(workdir), "--json")
    assert r.code != 0 and f"tuned for {tiny_q4.name.lower()}" in one_line(r.err)
    # the same settings labelled for the catalog model (as a tune of it writes them)
    # are what a profile that includes them runs
    data = yaml.safe_load(out.read_text())
    data["model"].update(id="qwen2.5-1.5b-instruct", quant="Q4_K_M")
    out.write_text(yaml.safe_dump(data))
    r = cli("profiles", "show", "gw-tuned", "-P", str(workdir), "--json")
    assert r.code == 0, r.err
    rt = json.loads(r.out)["profile"]["runtime"]
    assert {k: rt[k] for k in o.runtime} == o.runtime


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_measured_and_a_rerun_resumes(workdir, x86_engine,
                                                             tiny_q4) -> None:
    from builder import resolve
    from builder.profiles import ProfileStore
    from builder.tune import Bench, Local, Test, Tune

    (workdir / "gw.yaml").write_text(TWO_CORES)
    rp = ProfileStore([workdir]).load("gw")
    d = resolve.resolve(rp, rp.concrete())
    shape = d.engine.shape_of(tiny_q4, "Q4_K_M")
    d = resolve.with_model(d, shape)
    out = workdir / "t.yaml"

    class Counting(Local):
        """This machine, counting the benchmark runs; Ctrl-C after `stop_after`."""

        def __init__(self, stop_after: int | None = None) -> None:
            object.__setattr__(self, "runs", [])
            object.__setattr__(self, "stop_after", stop_after)

        def run(self, argv: list[str], what: str) -> str:
            if argv[0].endswith("llama-bench"):
                if self.stop_after is not None and len(self.runs) == self.stop_after:
                    raise KeyboardInterrupt
                self.runs.append(argv)
            return super().run(argv, what)

    def tune_with(runner: Counting) -> Tune:
        bench = Bench(runner, str(x86_engine.tool("llama-bench")), str(tiny_q4),
                      "sha", x86_engine.entry.key)
        return Tune(d, bench, Test(depth=64, prompt=32, gen=4, reps=1), out, shape=shape,
                    say=lambda s: None)

    first = Counting(stop_after=4)  # the defaults (2 runs) and one setting (2 runs)
    with pytest.raises(KeyboardInterrupt):
        tune_with(first).run()
    partial = tuned.load(out)
    assert not partial.complete
    measured = [t for t in partial.data["measurements"]["trials"] if "measured" in t]
    assert len(measured) == 2
    again = Counting()
    tune_with(again).run()
    # what was measured before Ctrl-C is taken from the file, not run again
    assert first.runs[0] not in again.runs and first.runs[2] not in again.runs
    assert again.runs  # the rest was
    done = tuned.load(out)
    assert done.complete
    assert done.data["measurements"]["default"] == measured[0]["measured"]


@pytest.mark.slow
def test_the_weight_format_is_measured_on_a_copy_made_where_the_engine_runs(
        workdir, x86_engine, tiny_q4) -> None:
    """An ARM profile's search, run here on the real llama-quantize and llama-bench:
    the Q4_0 candidate is a copy the engine's llama-quantize makes from the served file
    (the tensor types llama-quantize gives a file made from the source, which is what the
    planner counts), measured, and removed at the end."""
    from builder import resolve
    from builder.engines.llama_cpp import ggml
    from builder.tune import Bench, Local, Test, Tune

    d = _device(workdir, "pi", "extends: pi5-8gb\ndevice:\n  cpu_cores: 2\n"
                "runtime:\n  threads: 2\n")
    shape = d.engine.shape_of(tiny_q4, "Q4_K_M")
    d = resolve.with_model(d, shape)
    seen: dict[str, list] = {"quantize": [], "bench": [], "types": []}

    class Recording(Local):
        def run(self, argv: list[str], what: str) -> str:
            name = Path(argv[0]).name
            if name == "llama-bench" and argv[argv.index("-m") + 1] != str(tiny_q4):
                copy = Path(argv[argv.index("-m") + 1])
                _, tensors = ggml.read_header(copy)
                seen["types"] = {t.name: t.type_name for t in tensors}
                seen["bench"].append(argv)
            if name == "llama-quantize":
                seen["quantize"].append(argv)
            return super().run(argv, what)

    bench = Bench(Recording(), str(x86_engine.tool("llama-bench")), str(tiny_q4), "sha",
                  x86_engine.entry.key, quantize=str(x86_engine.tool("llama-quantize")))
    out = workdir / "pi.tuned.yaml"
    lines: list[str] = []
    t = Tune(d, bench, Test(depth=64, prompt=32, gen=4, reps=1), out, shape=shape,
             say=lines.append)
    record = t.run()
    [argv] = seen["quantize"]  # made once, for every run on it
    assert argv[:3] == [str(x86_engine.tool("llama-quantize")), "--allow-requantize",
                        str(tiny_q4)]
    copy = Path(argv[3])
    assert re.fullmatch(r"/var/tmp/builder-tune\.\w{8}/model-Q4_0\.gguf", str(copy))
    assert argv[4:] == ["Q4_0", "2"]
    assert not copy.parent.exists()  # removed at the end
    assert seen["bench"]  # measured on the copy
    planned = {t.name: typ for t, typ, _ in ggml.tensor_types(shape.arch, "Q4_0")}
    assert seen["types"] == planned
    trial = next(t for t in record["measurements"]["trials"] if t["knob"] == "weights")
    assert trial["settings"]["weights"] == "Q4_0"
    assert trial["measured"]["prefill_tps"] > 0 and trial["measured"]["decode_tps"] > 0
    kept = trial["outcome"].startswith("kept")
    # chosen or not, the overlay says so, and the profile that includes it builds that
    assert (record.get("weights") == "Q4_0") == kept and "weights" not in record["runtime"]
    assert tuned.load(out).weights == ("Q4_0" if kept else None)
    assert any("making the model at Q4_0" in line for line in lines)


@pytest.mark.slow
def test_tuned_settings_reach_the_engine_the_unit_runs(workdir, x86_engine, tiny_q4) -> None:
    """The release's engine.env, read the way the unit reads it (EnvironmentFile=), given
    to the release's own llama-server: the engine reports the tuned settings."""
    from harness.llama_server import LlamaServer, free_port

    write_profile(workdir, "tuned", ROOMY, overlay_data({**TUNED, "mlock": False}))
    b = make_release(workdir, workdir, "tuned", engine_dir=x86_engine.entry.out,
                     model=tiny_q4)
    env = parse_env_file((b.tree / "engine.env").read_text())
    port = free_port()
    env.update(LLAMA_ARG_MODEL=str(tiny_q4), LLAMA_ARG_PORT=str(port),
               LLAMA_ARG_CTX_SIZE="1024", LLAMA_ARG_LOG_VERBOSITY="4")
    log = workdir / "engine.log"
    with LlamaServer(b.tree / "bin" / "llama-server", ["--host", "127.0.0.1"], log,
                     env={**os.environ, **env}, port=port):
        pass
    text = log.read_text()
    assert re.search(r"system_info: n_threads = 1 ", text), text[-2000:]
    assert "load_mode = none" in text
    assert re.search(r"n_ubatch\s+= 256", text) and re.search(r"n_batch\s+= 1024", text)
    assert re.search(r"flash_attn\s+= disabled", text)


def test_bench_prints_what_tune_measured_side_by_side() -> None:
    from builder.lab.bench import tuned_side_by_side

    data = {**overlay_data({"threads": 2}, complete=False),
            "measurements": {"test": {"depth": 2048, "prompt_tokens": 512},
                             "default": {"decode_tps": 10.0, "prefill_tps": 50.0,
                                         "ttft_ms": 100.0},
                             "tuned": {"decode_tps": 12.5, "prefill_tps": 50.0,
                                       "ttft_ms": "nonsense"}}}
    title, rows = tuned_side_by_side(data)
    assert "partial" in title and "local" in title
    assert rows == [("decode tok/s at depth 2048", "10.00", "12.50", "1.250"),
                    ("prefill tok/s (512-token prompt)", "50.0", "50.0", "1.000")]


@pytest.mark.slow
def test_lab_run_tune_measures_the_devices_release_and_reports_it(appliance: Path,
                                                                  manifest: dict,
                                                                  tmp_path: Path) -> None:
    """The lab's tune step on a device whose filesystem is a directory here: the x86
    appliance build's release (its real llama-bench) as current/, its model where its
    release.json says. The one boundary replaced is SSH: the commands run here with the
    device's paths under the directory, and systemctl is recorded."""
    import dataclasses

    from stand_ins import device as resolved_device

    from builder.errors import BuilderError
    from builder.fleet import deploy as fleet
    from builder.lab import report as lab_report
    from builder.lab import run as lab
    from builder.lab.inventory import LabDevice

    d = resolved_device("x86-gateway")
    root = tmp_path / "dev"
    current = root / d.layout.current.lstrip("/")
    current.parent.mkdir(parents=True)
    current.symlink_to(Path(manifest["release"]["dir"]) / "tree")
    model = root / manifest["model"]["device_path"].lstrip("/")
    model.parent.mkdir(parents=True)
    model.symlink_to(manifest["model"]["path"])
    systemctl: list[list[str]] = []

    @dataclasses.dataclass(frozen=True)
    class Here:
        where: str = "ssh://edge@lab-gw:22"

        def run(self, argv: list[str], what: str) -> str:
            if argv[:3] == ["sudo", "-n", "systemctl"]:
                systemctl.append(argv[3:])
                return ""
            device_paths = (d.layout.engine_root, d.layout.model_dir)
            r = subprocess.run(
                [str(root) + a if a.startswith(device_paths) else a for a in argv],
                capture_output=True, text=True, timeout=600)
            if r.returncode != 0:  # as the SSH runner says it (tune.Runner)
                raise BuilderError(f"{what}: exit {r.returncode}: {r.stderr[-300:]}")
            return r.stdout

    gw = LabDevice(name="gw", profile="x86-gateway", flash="deploy-only", host="lab-gw")
    m = json.loads((appliance / "x86-gateway" / "manifest.json").read_text())
    pl = lab.Plan(gw, d, appliance / "x86-gateway" / "manifest.json", m, release=None)
    state = lab.Lab(run_dir=tmp_path / "run", key=Path("key"), ssh=fleet.Ssh(),
                    say=lambda s: None,
                    tune=lab.TuneOptions(depth=32, prompt=16, gen=4, reps=1,
                                         reach=lambda c: Here()))
    record = {"steps": []}
    detail = lab.step_tune(lab.Ctx(pl, state, record))
    # the engine stopped for the measurement and started again
    assert systemctl == [["stop", d.layout.engine_unit], ["start", d.layout.engine_unit]]
    o = tuned.load(tmp_path / "run" / "devices" / "gw" / "tuned.yaml")
    assert o.complete and o.data["device"]["host"] == "ssh://edge@lab-gw:22"
    assert o.data["device"]["model_sha256"] == manifest["model"]["sha256"]
    assert manifest["release_id"] in o.data["device"]["engine_build"]
    t = record["tune"]
    assert t["overlay"] == "devices/gw/tuned.yaml" and t["runtime"] == o.runtime
    assert t["default"]["decode_tps"] > 0 and t["tuned"]["decode_tps"] >= t["default"][
        "decode_tps"]
    assert "overlay devices/gw/tuned.yaml" in detail
    log = (tmp_path / "run" / "devices" / "gw" / "tune.log").read_text()
    assert f"stopping {d.layout.engine_unit}" in log
    # the release serves the tiny model given to its build: the overlay is that model's
    assert "note: the device serves" in log and o.model_id == m["release"]["model_id"].lower()
    md = lab_report.markdown({}, [{**m, "device": "gw", "profile": "x86-gateway",
                                   "flash": "deploy-only", "host": "lab-gw", "port": 22,
                                   "steps": [], "tune": t}])
    assert "`devices/gw/tuned.yaml`" in md
