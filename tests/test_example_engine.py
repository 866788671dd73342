"""Adding an inference engine is adding an engine module and a profile: the example
engine (tests/example_engine/, loaded through EDGE_LLM_ENGINES) goes through the real
commands - validate, the schema and its docs, plan, engine recipe and build, a signed
release whose engine runs behind the real gateway - with nothing in the builder naming
it. tests/test_fleet_e2e.py deploys its release onto a booted appliance and verifies it
there with `builder verify --release`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from builder.data import data_dir

TESTS = Path(__file__).resolve().parent
PROFILE = """\
extends: x86-gateway
engine:
  kind: pyecho
  pyecho:
    words_per_second: 0
model:
  quant: as-given
"""


def engine_env() -> dict[str, str]:
    """The environment that loads the example engine into `builder`."""
    return {**os.environ, "EDGE_LLM_ENGINES": "example_engine", "COLUMNS": "120",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def echo(tmp_path: Path):
    """`builder` with the example engine loaded, in a project holding its profile."""
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "pyecho.yaml").write_text(PROFILE)
    exe = Path(sys.executable).with_name("builder")

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], capture_output=True, text=True,
                              env=engine_env(), cwd=tmp_path, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    run.dir = tmp_path  # type: ignore[attr-defined]
    return run


def test_nothing_in_the_builder_names_the_example_engine() -> None:
    pkg = TESTS.parent / "builder"
    for f in [*pkg.rglob("*.py"), *data_dir("roles").rglob("*.y*ml"),
              *data_dir("roles").rglob("*.j2")]:
        assert "pyecho" not in f.read_text(errors="replace"), f


def test_its_section_is_in_the_schema_and_checked(echo) -> None:
    r = echo("profiles", "schema", "--markdown")
    assert "`engine.pyecho.words_per_second`" in r.stdout, r.stderr
    r = echo("profiles", "validate", "profiles/pyecho.yaml")
    assert r.returncode == 0, r.stderr
    (echo.dir / "bad.yaml").write_text(PROFILE.replace("words_per_second: 0",
                                                       "words_per_secnd: 0"))
    r = echo("profiles", "validate", "bad.yaml")
    assert r.returncode == 2
    assert r.stderr.startswith("error: bad.yaml:5:5: engine.pyecho.words_per_secnd: unknown "
                               "field; did you mean 'words_per_second'?"), r.stderr
    (echo.dir / "bad.yaml").write_text(PROFILE.replace("as-given", "Q4_K_M"))
    r = echo("profiles", "validate", "bad.yaml")
    assert "model.quant: 'Q4_K_M' is not a pyecho quantization; choose one of as-given" \
        in r.stderr, r.stderr


def test_its_memory_model_plans_and_its_recipe_builds(echo) -> None:
    r = echo("plan", "--profile", "pyecho", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["input"]["engine"] == "pyecho"
    assert plan["weights"] == 0 and plan["engine_overhead"] == 48 << 20
    r = echo("engine", "recipe", "--profile", "pyecho")
    assert r.returncode == 0 and "python3 -m zipapp" in r.stdout, r.stderr
    r = echo("engine", "build", "--profile", "pyecho")
    assert r.returncode == 0, r.stderr


def _wait_ok(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200"
        time.sleep(0.2)


def test_its_release_serves_behind_the_gateway(echo, smollm2_gguf: Path,
                                                tmp_path: Path) -> None:
    """The release's engine, started as its unit would start it (its engine.env, its
    ExecStart), loads the model and answers through the real gateway with its
    gateway.json: a streamed chat reply made of the model's own vocabulary."""
    from harness.gateway_process import GatewayProcess
    from harness.llama_server import free_port

    r = echo("release", "--profile", "pyecho", "--model-file", str(smollm2_gguf), "--json")
    assert r.returncode == 0, r.stderr
    tree = Path(json.loads(r.stdout)["dir"]) / "tree"
    manifest = json.loads((tree / "release.json").read_text())
    assert manifest["engine"]["kind"] == "pyecho"
    unit = (tree / "systemd/engine.conf").read_text()
    assert "ExecStart=/usr/bin/python3 /opt/edge-llm/current/bin/pyecho.pyz" in unit
    env = dict(line.split("=", 1) for line in (tree / "engine.env").read_text().splitlines()
               if "=" in line and not line.startswith("#"))
    env = {k: v.strip('"') for k, v in env.items()}
    assert env["PYECHO_MODEL"] == manifest["model"]["path"]
    port = free_port()
    env.update(PYECHO_MODEL=str(smollm2_gguf), PYECHO_PORT=str(port))
    engine = subprocess.Popen([sys.executable, str(tree / "bin/pyecho.pyz"), "--host",
                               "127.0.0.1"], env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ok(f"http://127.0.0.1:{port}/health")
        gw_cfg = json.loads((tree / "gateway.json").read_text())
        settings = {k: gw_cfg[k] for k in ("engine_probe_path", "engine_fields", "slots")}
        with GatewayProcess(tmp_path / "gw", f"http://127.0.0.1:{port}",
                            gw_cfg["model_id"], **settings) as gw:
            _wait_ok(gw.url + "/health")
            body = json.dumps({"messages": [{"role": "user", "content": "Say hello."}],
                               "max_tokens": 5, "stream": True}).encode()
            req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body, headers={
                "Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                events = [ln[5:].strip() for ln in resp.read().decode().splitlines()
                          if ln.startswith("data:")]
            assert gw.metric("engine_up") == 1.0
    finally:
        engine.terminate()
        engine.wait(timeout=10)
    assert events[-1] == "[DONE]"
    words = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    words = [w for w in words if w]
    assert len(words) == 5
    import gguf

    vocab = {str(t).replace("\u0120", " ") for t in gguf.GGUFReader(smollm2_gguf).get_field(
        "tokenizer.ggml.tokens").contents()}
    assert set(words) <= vocab, words
