"""Profiles: the built-in set, inheritance rules, and every error a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.plugins import PROFILE
from builder.profiles import ProfileStore, builtin_dir

CONCRETE = ["orin-agx-64gb", "orin-agx-64gb-edgellm", "orin-nano-8gb",
            "orin-nano-8gb-edgellm", "pi5-8gb", "pi5-4gb", "x86-gateway"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the built-in profiles ------------------------------------------------------------

@pytest.mark.parametrize("name", CONCRETE)
def test_builtin_profile_resolves_and_validates(name: str, cli) -> None:
    rp = ProfileStore().load(name)
    assert rp.profile is not None and not rp.abstract
    r = cli("profiles", "validate", str(rp.path))
    assert r.code == 0, r.err
    assert r.out.startswith(f"ok {rp.path.name}") or "ok " in r.out


def test_profiles_list_names_exactly_the_shipped_devices(cli) -> None:
    r = cli("profiles", "list", "--json")
    assert r.code == 0
    assert sorted(row["name"] for row in json.loads(r.out)) == sorted(CONCRETE)


def test_bases_are_listed_only_with_all(cli) -> None:
    rows = json.loads(cli("profiles", "list", "--all", "--json").out)
    bases = {row["name"] for row in rows if row["abstract"]}
    assert bases == {"base-debian", "base-pi5", "base-jetson"}


def test_pi5_inherits_through_two_levels() -> None:
    p = ProfileStore().load("pi5-4gb").profile
    assert p is not None
    assert p.os.suite == "bookworm"  # from base-debian
    assert p.target == "raspberry-pi5" and p.device.cpu_cores == 4  # from base-pi5
    assert p.device.ram == 4 * 1024**3  # its own
    assert p.os.reserved_memory == 320 * 1024**2  # base-pi5 overrides base-debian


def test_show_prints_the_resolved_profile_and_its_chain(cli) -> None:
    r = cli("profiles", "show", "pi5-8gb", "--json")
    assert r.code == 0
    shown = json.loads(r.out)
    assert [Path(p).name for p in shown["chain"]] == ["base-debian.yaml", "base-pi5.yaml",
                                                      "pi5-8gb.yaml"]
    # what `show` prints is itself a valid, complete profile
    assert PROFILE.validate_python(shown["profile"]).model.id == "qwen2.5-3b-instruct"
    assert shown["profile"]["device"]["ram"] == "8GiB"


def test_show_as_yaml_round_trips(cli, workdir: Path) -> None:
    text = cli("profiles", "show", "orin-nano-8gb").out
    write(workdir / "copy.yaml", text)
    r = cli("profiles", "validate", "copy.yaml")
    assert r.code == 0, r.err


# --- inheritance rules ----------------------------------------------------------------

def test_mappings_merge_lists_replace_and_null_resets(workdir: Path) -> None:
    write(workdir / "profiles/parent.yaml", """\
extends: x86-gateway
os:
  packages: [htop, jq]
runtime:
  threads: 2
""")
    write(workdir / "profiles/child.yaml", """\
extends: parent
os:
  packages: [curl]
runtime:
  threads: null
  parallel: 3
""")
    p = ProfileStore().load("child").profile
    assert p is not None
    assert p.os.packages == ["curl"]  # lists replace
    assert p.runtime.threads is None  # null resets to the default
    assert p.runtime.parallel == 3
    assert p.runtime.context_length == 8192  # merged from x86-gateway
    assert p.os.suite == "bookworm"  # from base-debian, two levels up


def test_several_parents_merge_left_to_right(workdir: Path) -> None:
    write(workdir / "profiles/small-ctx.yaml", "abstract: true\nruntime:\n  "
          "context_length: 1024\n  parallel: 4\n")
    write(workdir / "profiles/one-slot.yaml", "abstract: true\nruntime:\n  parallel: 1\n")
    write(workdir / "profiles/mine.yaml", "extends: [x86-gateway, small-ctx, one-slot]\n")
    p = ProfileStore().load("mine").profile
    assert p is not None
    assert (p.runtime.context_length, p.runtime.parallel) == (1024, 1)


def test_abstract_is_not_inherited(workdir: Path) -> None:
    write(workdir / "profiles/mine.yaml", "extends: base-pi5\ndevice:\n  ram: 8GiB\n")
    rp = ProfileStore().load("mine")
    assert not rp.abstract and rp.profile is not None


def test_user_profile_shadows_and_extends_the_builtin_of_the_same_name(workdir: Path) -> None:
    write(workdir / "profiles/x86-gateway.yaml",
          "extends: x86-gateway\ndevice:\n  ram: 16GiB\n")
    rp = ProfileStore().load("x86-gateway")
    assert rp.path.parent == (workdir / "profiles").resolve()
    assert rp.chain[-2] == builtin_dir().resolve() / "x86-gateway.yaml"
    assert rp.profile is not None and rp.profile.device.ram == 16 * 1024**3


def test_profiles_dir_comes_before_the_project_profiles(workdir: Path, cli) -> None:
    write(workdir / "profiles/lab.yaml", "extends: pi5-4gb\ndescription: project\n")
    write(workdir / "elsewhere/lab.yaml", "extends: pi5-4gb\ndescription: elsewhere\n")
    assert ProfileStore().load("lab").data["description"] == "project"
    store = ProfileStore([workdir / "elsewhere"])
    assert store.load("lab").data["description"] == "elsewhere"
    r = cli("plan", "--profile", "lab", "--profiles-dir", "elsewhere", "--json")
    assert r.code == 0 and json.loads(r.out)["profile"] == "lab"


def test_quant_spelling_is_normalised(workdir: Path) -> None:
    write(workdir / "profiles/q.yaml", "extends: orin-nano-8gb\nmodel:\n  quant: INT4_AWQ\n"
          "engine:\n  tensorrt_llm:\n    calibration_dir: /opt/calib\n")
    p = ProfileStore().load("q").profile
    assert p is not None and p.model.quant == "int4_awq"


def test_int4_awq_without_a_local_calibration_set_is_refused(workdir: Path, cli) -> None:
    """quantize.py would fall back to the Hub's cnn_dailymail, which a device cannot
    reach: refused before anything is built."""
    write(workdir / "profiles/q.yaml", "extends: orin-nano-8gb\nmodel:\n  quant: int4_awq\n")
    r = cli("plan", "--profile", "q")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "engine.tensorrt_llm.calibration_dir: int4_awq needs a local calibration set" \
        in r.err


def test_yaml_off_means_off(workdir: Path) -> None:
    write(workdir / "profiles/q.yaml", "extends: pi5-4gb\nruntime:\n  flash_attn: off\n")
    p = ProfileStore().load("q").profile
    assert p is not None and p.runtime.flash_attn == "off"


# --- errors: one line, file:line:col, field, what to do; exit 2 -------------------------

ERRORS = [
    pytest.param("extends: x86-gateway\nruntime:\n  parallel: [1\n",
                 "bad.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
                 id="malformed-yaml"),
    pytest.param("extends: x86-gateway\nruntime:\n  contxt_length: 4096\n",
                 "bad.yaml:3:3: runtime.contxt_length: unknown field; did you mean "
                 "'context_length'?", id="unknown-key"),
    pytest.param("extends: x86-gateway\nmodle:\n  id: x\n",
                 "bad.yaml:2:1: modle: unknown field; did you mean 'model'?",
                 id="unknown-section"),
    pytest.param("extends: x86-gateway\nruntime:\n  zzz: 1\n",
                 "bad.yaml:3:3: runtime.zzz: unknown field; valid fields here: "
                 "context_length, threads, batch_size, ubatch_size, parallel, kv_cache_type, "
                 "flash_attn, mmap, mlock", id="unknown-key-no-close-match"),
    pytest.param("extends: x86-gateway\nruntime:\n  parallel: four\n",
                 "bad.yaml:3:13: runtime.parallel: expected an integer, got 'four'",
                 id="wrong-type"),
    pytest.param("extends: x86-gateway\ndevice:\n  ram: 4 gigs\n",
                 "bad.yaml:3:8: device.ram: expected a size such as 4GiB or 512MiB, "
                 "got '4 gigs'", id="bad-size"),
    pytest.param("extends: x86-gateway\nservice:\n  memory_max: lots\n",
                 "bad.yaml:3:15: service.memory_max: expected a size such as 4GiB, or "
                 "'auto', got 'lots'", id="bad-size-or-auto"),
    pytest.param("extends: x86-gateway\ndevice:\n  arch: x86\n",
                 "bad.yaml:3:9: device.arch: x86 is not a x86-gateway architecture; use amd64",
                 id="bad-choice"),
    pytest.param("extends: x86-gateway\nruntime:\n  parallel: 0\n",
                 "bad.yaml:3:13: runtime.parallel: input should be greater than or equal "
                 "to 1, got 0", id="out-of-range"),
    pytest.param("extends: x86-gateway\nmodel:\n  id: qwen2.5-14b-instruct\n",
                 "bad.yaml:3:7: model.id: unknown model 'qwen2.5-14b-instruct'; known: "
                 "qwen2.5-0.5b-instruct, qwen2.5-1.5b-instruct, qwen2.5-3b-instruct, "
                 "qwen2.5-7b-instruct", id="unknown-model"),
    pytest.param("extends: x86-gateway\nmodel:\n  quant: Q3_K_S\n",
                 "bad.yaml:3:10: model.quant: 'Q3_K_S' is not a llama.cpp quantization; "
                 "choose one of Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0, F16", id="unknown-quant"),
    pytest.param("extends: pi5-4gb\nengine:\n  kind: tensorrt-llm\nmodel:\n  quant: int4_awq\n",
                 "bad.yaml:3:9: engine.kind: tensorrt-llm cannot run on raspberry-pi5 (it "
                 "needs a Jetson's GPU, with JetPack's CUDA and TensorRT); use llama.cpp",
                 id="engine-device-cannot-run"),
    pytest.param("extends: pi5-4gb\nruntime:\n  kv_cache_type: q8_0\n  flash_attn: 'off'\n",
                 "bad.yaml:3:18: runtime.kv_cache_type: a quantized V cache (q8_0) needs "
                 "flash attention; set runtime.flash_attn to auto or on, or kv_cache_type "
                 "to f16", id="quantized-v-without-flash-attn"),
    pytest.param("extends: pi5-4gb\nruntime:\n  context_length: 65536\n",
                 "bad.yaml:3:19: runtime.context_length: 65536 exceeds "
                 "qwen2.5-1.5b-instruct's maximum context of 32768", id="context-too-long"),
    pytest.param("extends: pi5-4gb\nruntime:\n  threads: 8\n",
                 "bad.yaml:3:12: runtime.threads: 8 exceeds device.cpu_cores (4)",
                 id="too-many-threads"),
    pytest.param("extends: pi5-4gb\nservice:\n  cpu_affinity: [0, 7]\n",
                 "bad.yaml:3:21: service.cpu_affinity[1]: CPU 7 does not exist; the device "
                 "has CPUs 0-3", id="cpu-affinity"),
    pytest.param("target: x86-gateway\n",
                 "bad.yaml:1:1: device, os, engine, model: required fields are missing",
                 id="missing-sections"),
    pytest.param("extends: x86-gateway\ndevice:\n  ram: null\n",
                 "bad.yaml:2:1: device.ram: required field is missing", id="missing-field"),
    pytest.param("extends: x86-gateway\ntarget: pi6\n",
                 "bad.yaml:2:9: target: unknown target 'pi6'; known: jetson-orin, "
                 "raspberry-pi5, x86-gateway", id="unknown-target"),
    pytest.param("extends: nope\n",
                 "bad.yaml:1:10: extends: unknown profile 'nope'", id="unknown-parent"),
    pytest.param("extends: x86-gateway\nruntime:\n  parallel: 1\n  parallel: 2\n",
                 "bad.yaml:4:3: runtime.parallel: duplicate key; remove one of them",
                 id="duplicate-key"),
    pytest.param("- a\n- b\n",
                 "bad.yaml:1:1: a profile must be a mapping of sections (device:, engine:, "
                 "...), got list", id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_bad_profile_gives_one_line_naming_file_and_field(text: str, message: str,
                                                          workdir: Path, cli) -> None:
    write(workdir / "bad.yaml", text)
    r = cli("profiles", "validate", "bad.yaml")
    assert r.code == 2
    assert r.err.startswith(f"error: {message}"), r.err
    assert r.err.count("\n") == 1 and r.out == ""


def test_error_points_at_the_base_file_that_set_the_value(workdir: Path, cli) -> None:
    write(workdir / "profiles/base.yaml", "abstract: true\nruntime:\n  threads: 16\n")
    write(workdir / "profiles/dev.yaml", "extends: [pi5-4gb, base]\n")
    r = cli("profiles", "validate", "profiles/dev.yaml")
    assert r.code == 2
    assert r.err == ("error: profiles/base.yaml:3:12: runtime.threads: 16 exceeds "
                     "device.cpu_cores (4)\n")


def test_circular_extends_names_the_cycle(workdir: Path, cli) -> None:
    write(workdir / "profiles/a.yaml", "extends: b\n")
    write(workdir / "profiles/b.yaml", "extends: [x86-gateway, a]\n")
    r = cli("plan", "--profile", "a")
    assert r.code == 2
    assert r.err == ("error: profiles/b.yaml:1:24: extends: circular inheritance "
                     "a -> b -> a; remove one of these extends\n")


def test_a_profile_extending_itself_is_circular(workdir: Path, cli) -> None:
    write(workdir / "profiles/me.yaml", "extends: profiles/me.yaml\n")
    r = cli("profiles", "validate", "profiles/me.yaml")
    assert r.code == 2 and "circular inheritance me -> me" in r.err


def test_unknown_profile_suggests_the_closest(cli, workdir: Path) -> None:
    r = cli("plan", "--profile", "pi5-4g")
    assert r.code == 2
    assert r.err.startswith("error: unknown profile 'pi5-4g'; did you mean 'pi5-4gb'?")


def test_missing_profiles_dir_is_named(cli, workdir: Path) -> None:
    r = cli("profiles", "list", "--profiles-dir", "nowhere")
    assert r.code == 2
    assert r.err == "error: --profiles-dir nowhere: no such directory\n"


def test_missing_file(cli, workdir: Path) -> None:
    r = cli("profiles", "validate", "absent.yaml")
    assert (r.code, r.err) == (2, "error: absent.yaml: no such file\n")


@pytest.mark.parametrize("name", ["my pi", ".hidden", "-x", "{{x}}"])
def test_a_profile_file_name_that_is_not_a_name_is_refused(workdir: Path, cli,
                                                           name: str) -> None:
    """A profile's name becomes OUT/<name>, a role variable and a release's `profile`:
    it must be a name, whatever the file is called."""
    d = workdir / "p"
    d.mkdir()
    f = d / f"{name}.yaml"
    f.write_text("extends: x86-gateway\n")
    r = cli("profiles", "validate", str(f))
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "is not a profile name" in r.err and "rename the file" in r.err
