"""The on-device TensorRT-LLM engine (builder/device/trtllm.py, `edge-llm-trtllm`) against
fake_trtllm (tests/fakes/jetson): a release made for the orin-nano-8gb profile by the
builder's own release.make, delivered into a device tree; `build` makes the engine from
the release's GPTQ checkpoint with the release's recipe and caches it, `serve` runs
TensorRT-LLM's OpenAI server on the release's port."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_tree import keygen
from fakes.jetson.fake_l4t import nv_tegra_release_line
from fakes.jetson.fake_trtllm import install_fake_trtllm
from harness.gateway_process import GatewayProcess
from harness.llama_server import free_port
from stand_ins import device_of

from builder.cache import sha256_file
from builder.contracts import ReleaseInputs
from builder.fleet import release
from builder.model.pipeline import ModelArtifact, tree_digest
from builder.profiles import ProfileStore

QWEN_05B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
            "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "torch_dtype": "float16",
            "tie_word_embeddings": True,
            "quantization_config": {"bits": 4, "group_size": 128, "quant_method": "gptq"}}


@pytest.fixture(scope="module")
def trt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return install_fake_trtllm(tmp_path_factory.mktemp("trtllm"))


class OrinDevice:
    """A device tree holding one TensorRT-LLM release and its checkpoint."""

    def __init__(self, tmp: Path, trt: dict[str, Path]) -> None:
        self.root = tmp / "device"
        self.trt = trt
        (self.root / "etc").mkdir(parents=True)
        self.set_l4t("36.4.3")
        model = tmp / "Qwen2.5-0.5B-Instruct-GPTQ-Int4"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(QWEN_05B))
        (model / "model.safetensors").write_bytes(b"\0" * 64)
        (model / "tokenizer.json").write_text("{}")
        (model / "tokenizer_config.json").write_text(json.dumps(
            {"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}))
        files = {f.name: sha256_file(f) for f in model.iterdir()}
        base = ProfileStore().load("orin-nano-8gb").concrete()
        self.port = free_port()
        t = base.engine.tensorrt_llm.model_copy(update={
            "python": str(trt["python"]), "checkout": str(trt["root"])})
        p = base.model_copy(update={
            "engine": base.engine.model_copy(update={"tensorrt_llm": t}),
            "service": base.service.model_copy(update={"engine_port": self.port})})
        self.profile = p
        gw = tmp / "gateway"
        gw.mkdir()
        (gw / "__init__.py").write_text("")
        d = device_of(p, "orin-nano-8gb")
        i = ReleaseInputs(device=d, engine_dir=None, engine_key=release.recipe_key(d),
                          gateway_dir=gw, gateway_key="g", model=ModelArtifact(
                              model, tree_digest(files), "int4_gptq", "hf", files=files),
                          model_id="qwen2.5-0.5b-instruct")
        b = release.make(i, tmp / "releases", keygen(tmp / "signing"))
        self.release = self.root / "opt/edge-llm/releases" / b.release_id
        shutil.copytree(b.tree, self.release, symlinks=True)
        shutil.copytree(model, self.root / "var/lib/edge-llm/models" / i.model.device_name)
        self.settings = self.release / "engine/build.json"

    def set_l4t(self, rel: str) -> None:
        (self.root / "etc/nv_tegra_release").write_text(nv_tegra_release_line(rel) + "\n")

    @property
    def engines(self) -> Path:
        return self.root / "var/lib/edge-llm/engines"

    def status(self) -> dict:
        return json.loads((self.root / "run/edge-llm/engine-status.json").read_text())

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
        return {**env, "EDGE_LLM_ROOT": str(self.root),
                "PATH": f"{self.trt['bin']}:{os.environ['PATH']}", **extra}

    def tool(self, *args: str, env: dict[str, str] | None = None, **kw
             ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "builder.device.trtllm", *args],
                              env=env or self.env(), capture_output=True, text=True,
                              timeout=120, **kw)

    def build(self, **env: str) -> subprocess.CompletedProcess[str]:
        return self.tool("build", str(self.settings), env=self.env(**env))


@pytest.fixture
def orin(tmp_path: Path, trt: dict[str, Path]) -> OrinDevice:
    return OrinDevice(tmp_path, trt)


def built(dev: OrinDevice) -> list[Path]:
    return sorted(d for d in dev.engines.iterdir() if not d.name.startswith("."))


def test_the_release_carries_the_recipe_the_device_runs(orin: OrinDevice) -> None:
    from builder.engines.trtllm import BUILD_TIMEOUT
    from builder.fleet.deploy import gate_for
    from builder.fleet.trust import Manifest

    manifest = Manifest.parse((orin.release / "release.json").read_bytes(), "orin")
    assert manifest.engine.build_seconds == BUILD_TIMEOUT
    assert gate_for(manifest, 300) == BUILD_TIMEOUT  # a deploy waits out the first build
    s = json.loads(orin.settings.read_text())
    assert s["quant"] == "int4_gptq" and s["sm"] == "87" and s["version"] == "0.12.0-jetson"
    assert "build_memory_max" not in s  # the build's unit holds the cap (role variable)
    convert, build = s["steps"]
    assert convert[:2] == ["python3", "examples/qwen/convert_checkpoint.py"]
    assert convert[convert.index("--weight_only_precision") + 1] == "int4_gptq"
    assert build[0] == "trtllm-build"
    assert build[build.index("--max_seq_len") + 1] == str(orin.profile.runtime.context_length)


def test_build_makes_the_engine_once_then_reuses_it(orin: OrinDevice) -> None:
    r = orin.build()
    assert r.returncode == 0, r.stderr
    assert "step 1/2" in r.stderr and "step 2/2" in r.stderr
    [engine] = built(orin)
    assert (engine / "config.json").is_file() and (engine / "rank0.engine").is_file()
    assert (engine / ".complete").is_file()
    cfg = json.loads((engine / "config.json").read_text())
    assert cfg["pretrained_config"]["quantization"]["quant_algo"] == "W4A16_GPTQ"
    assert cfg["build_config"]["max_batch_size"] == orin.profile.engine.tensorrt_llm.max_batch_size
    assert orin.status()["state"] == "ready"
    assert not [d for d in orin.engines.iterdir() if d.name.startswith(".build-")]
    mtime = (engine / "rank0.engine").stat().st_mtime_ns

    again = orin.build()
    assert again.returncode == 0 and "(cached)" in again.stderr and "step 1/2" not in again.stderr
    assert built(orin) == [engine] and (engine / "rank0.engine").stat().st_mtime_ns == mtime


def test_a_new_l4t_release_builds_a_new_engine(orin: OrinDevice) -> None:
    """TensorRT engines are tied to the TensorRT of the JetPack: an OTA to a new L4T must
    not serve the old engine."""
    assert orin.build().returncode == 0
    orin.set_l4t("36.4.0")
    r = orin.build()
    assert r.returncode == 0 and "step 1/2" in r.stderr
    assert len(built(orin)) == 2


def test_a_failed_build_says_which_step_and_leaves_no_engine(orin: OrinDevice) -> None:
    model = next((orin.root / "var/lib/edge-llm/models").iterdir())
    cfg = json.loads((model / "config.json").read_text())
    del cfg["quantization_config"]  # not a GPTQ checkpoint: convert_checkpoint refuses it
    (model / "config.json").write_text(json.dumps(cfg))
    r = orin.build()
    assert r.returncode != 0
    assert "convert_checkpoint.py failed (exit" in r.stderr
    st = orin.status()
    assert st["state"] == "failed" and st["step"] == "convert_checkpoint.py"
    assert not orin.engines.exists() or list(orin.engines.iterdir()) == []


def test_without_tensorrt_llm_installed_the_build_says_what_to_install(
        orin: OrinDevice) -> None:
    s = json.loads(orin.settings.read_text())
    orin.settings.write_text(json.dumps({**s, "checkout": "/nonexistent/TensorRT-LLM"}))
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "TensorRT-LLM 0.12.0-jetson cannot run here (missing /nonexistent/TensorRT-LLM/" \
        "examples)" in r.stderr
    assert "engine.tensorrt_llm.wheel" in r.stderr and "docs/orin.md" in r.stderr
    assert orin.status()["state"] == "failed"


NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def open_orin() -> Iterator[OrinDevice]:
    """An OrinDevice (and its TensorRT-LLM) under a directory another user can enter
    (tmp_path cannot be), as the device's files are: root's, readable by all."""
    work = Path(tempfile.mkdtemp(prefix="orin-device-"))
    work.chmod(0o755)
    try:
        yield OrinDevice(work, install_fake_trtllm(work / "trtllm", python="/usr/bin/python3"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_the_build_runs_as_the_engine_user_with_only_its_cache_and_status_writable(
        open_orin: OrinDevice) -> None:
    """As edge-llm-engine-build.service runs it: an unprivileged user (not root, and no
    capability), under systemd (INVOCATION_ID), whose only writable places are the engine
    cache (StateDirectory=) and the status file's directory (RuntimeDirectory=), with the
    device's python3 and the tool launched as the release role installs it. The build
    needs nothing more, and asks systemd for nothing: an unprivileged process may not
    start units (the old build wrapped each step in `systemd-run --scope`, which fails)."""
    python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not python.is_file():
        pytest.skip("needs root (to switch to an unprivileged user) and /usr/bin/python3")
    orin = open_orin
    launcher = orin.root.parent / "edge-llm-trtllm"  # the release role's launcher
    launcher.write_text(f"#!{python} -IB\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                        "from builder.device.trtllm import main\nsys.exit(main())\n")
    launcher.chmod(0o755)
    for d in (orin.engines, orin.root / "run/edge-llm"):  # what systemd makes for the unit
        d.mkdir(parents=True)
        os.chown(d, NOBODY, NOBODY)
    env = {"PATH": f"{orin.trt['bin']}:/usr/bin:/bin", "EDGE_LLM_ROOT": str(orin.root),
           "INVOCATION_ID": "0123456789abcdef", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                        "--clear-groups", str(launcher), "build", str(orin.settings)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    [engine] = built(orin)
    assert engine.stat().st_uid == NOBODY and (engine / "rank0.engine").is_file()
    assert orin.status()["state"] == "ready"
    status = orin.root / "run/edge-llm/engine-status.json"
    assert status.stat().st_mode & 0o777 == 0o644  # the gateway (another user) reads it


def test_a_python_without_tensorrt_llm_fails_the_build_in_one_line(orin: OrinDevice) -> None:
    """The image was built without the wheel, or without JetPack's TensorRT (which
    tensorrt_llm imports): the build stops before any step, naming what is missing."""
    s = json.loads(orin.settings.read_text())
    orin.settings.write_text(json.dumps({**s, "python": sys.executable}))
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "cannot run here (ModuleNotFoundError: No module named 'tensorrt_llm')" in r.stderr
    assert "jetson.jetpack" in r.stderr
    assert orin.status() | {"at": None} == {"state": "failed", "step": "setup", "at": None,
                                            "reason": "ModuleNotFoundError: No module named "
                                                      "'tensorrt_llm'"}
    assert not orin.engines.exists() or built(orin) == []


def test_serve_without_a_built_engine_says_which_journal_to_read(orin: OrinDevice) -> None:
    """The engine unit starts even when its build failed (Wants=): serve refuses at once,
    naming the build's unit, and the engine unit fails (and is restarted, building again)."""
    r = orin.tool("serve", str(orin.settings))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "no engine" in r.stderr and "journalctl -u edge-llm-engine-build.service" in r.stderr


@contextlib.contextmanager
def serving(orin: OrinDevice):
    """`edge-llm-trtllm serve` as the engine unit runs it, until its port answers."""
    proc = subprocess.Popen([sys.executable, "-m", "builder.device.trtllm", "serve",
                             str(orin.settings)], env=orin.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{orin.port}/health",
                                            timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "the server never opened its port"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{orin.port}"
    finally:
        proc.terminate()
        proc.wait(10)


def post(url: str, body: dict, key: str | None = None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json",
               **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, method="POST", headers=headers,
                                 data=json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


CHAT = {"model": "qwen2.5-0.5b-instruct", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]}


def gateway(orin: OrinDevice, tmp_path: Path) -> GatewayProcess:
    """The gateway with the release's own gateway.json settings for its engine."""
    cfg = json.loads((orin.release / "gateway.json").read_text())
    engine = {k: v for k, v in cfg.items() if k.startswith("engine_") and k != "engine_url"}
    engine["engine_status_file"] = str(orin.root / cfg["engine_status_file"].lstrip("/"))
    return GatewayProcess(tmp_path / "gw", cfg["engine_url"], cfg["model_id"],
                          engine_probe_interval=0.2, **engine)


def healthy(gw: GatewayProcess) -> None:
    """Wait until the gateway's /health is 200: its probe found the engine ready."""
    deadline = time.monotonic() + 30
    while gw.get("/health")[0] != 200:
        assert time.monotonic() < deadline, gw.log_file.read_text()[-2000:]
        time.sleep(0.2)


def test_serve_runs_the_openai_server_on_the_release_port(orin: OrinDevice) -> None:
    assert orin.build().returncode == 0
    with serving(orin) as base:
        code, _, body = post(f"{base}/v1/chat/completions", CHAT)
    assert code == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_the_gateway_serves_tensorrt_llm_and_keeps_llama_cpp_fields_from_it(
        orin: OrinDevice, tmp_path: Path) -> None:
    """TensorRT-LLM 0.12's server refuses fields it does not know: the gateway lets
    through only the engine's own (engine_fields), so a llama.cpp field is a 400 naming
    it from the gateway, and the ones TensorRT-LLM takes reach it."""
    assert orin.build().returncode == 0
    with serving(orin), gateway(orin, tmp_path) as gw:
        healthy(gw)
        url = gw.url + "/v1/chat/completions"
        code, _, body = post(url, {**CHAT, "top_k": 20, "ignore_eos": False}, gw.key)
        assert code == 200, body
        assert body["choices"][0]["message"]["content"]
        code, _, body = post(url, {**CHAT, "cache_prompt": True}, gw.key)
        assert code == 400 and body["error"]["param"] == "cache_prompt"
        assert body["error"]["code"] == "unknown_parameter"


def test_the_agreement_check_asks_tensorrt_llm_for_text_and_compares_it(
        orin: OrinDevice, tmp_path: Path) -> None:
    """verify.min_agreement on a TensorRT-LLM device: 0.12's server refuses `logprobs`,
    so the check must not ask for them (Engine.logprobs); it asks for the answer alone,
    through the gateway, and compares the text with the reference's tokens."""
    from builder.engines.trtllm import TrtLlm
    from builder.verify import agreement
    from builder.verify.agreement import Token

    assert not TrtLlm.logprobs
    assert orin.build().returncode == 0
    with serving(orin), gateway(orin, tmp_path) as gw:
        healthy(gw)
        url = gw.url + "/v1/chat/completions"
        prompt, model = agreement.PROMPTS[0], CHAT["model"]
        code, _, body = post(url, agreement.request(prompt, 8, model=model), gw.key)
        assert code == 400 and "log probs is not supported" in body["error"]["message"]
        with pytest.raises(ValueError, match="HTTP 400"):
            agreement.ask(gw.url, agreement.request(prompt, 8, model=model), gw.key)
        reply = agreement.ask(gw.url, agreement.request(prompt, 8, False, model), gw.key)
        text = agreement.text_of(reply, "the device")

    def ref(*pieces: str, **top: float) -> list[Token]:
        return [Token(t, -0.05, {t: -0.05, **(top if i == 0 else {})})
                for i, t in enumerate(pieces)]

    assert text == "Paris is the capital of France."  # the stand-in's canned answer
    same = ref("Paris", " is", " the", " capital", " of", " France", ".")
    assert agreement.compare_text(same, text, 8).passed
    o = agreement.compare_text(ref("The", " capital", Paris=-3.0), text, 8, 1.5)
    assert not o.passed and o.diverged_at == 0
    assert "chose 'Paris' where the reference chose 'The' (2.950 nats below it)" in o.detail


def test_while_the_engine_is_built_the_gateway_says_so(orin: OrinDevice,
                                                      tmp_path: Path) -> None:
    """The first boot builds the engine for minutes to an hour: clients get 503
    engine_building with a long Retry-After at once, not a queue or a bare refusal;
    a failed build is a 503 that says where to look."""
    from builder.device.layout import Layout
    from builder.device.trtllm import Device

    dev = Device(Layout.load(str(orin.root)), str(orin.root))
    dev.status("building", step="convert_checkpoint.py", steps="1/2",
               since="2026-11-27T10:00:00Z")
    with gateway(orin, tmp_path) as gw:
        code, headers, body = post(gw.url + "/v1/chat/completions", CHAT, gw.key)
        assert code == 503 and body["error"]["code"] == "engine_building"
        assert "convert_checkpoint.py 1/2" in body["error"]["message"]
        assert headers["Retry-After"] == "60"
        code, health = gw.get("/health", key="")
        assert code == 503 and json.loads(health)["engine_build"]["state"] == "building"
        dev.status("failed", step="trtllm-build", exit=1)
        code, _, body = post(gw.url + "/v1/chat/completions", CHAT, gw.key)
        assert code == 503 and body["error"]["code"] == "engine_build_failed"
        assert "journalctl -u edge-llm-engine-build" in body["error"]["message"]


def test_a_device_imaged_before_the_shared_build_command_still_builds_new_releases(
        orin: OrinDevice) -> None:
    """Its build unit runs `edge-llm-trtllm build current/engine/trtllm.json` (a fleet
    rollout updates the device tools, not the inference role's units)."""
    from builder.engines.trtllm import LEGACY_SETTINGS

    legacy = orin.release / LEGACY_SETTINGS
    assert legacy.read_text() == orin.settings.read_text()
    r = orin.tool("build", str(legacy))
    assert r.returncode == 0, r.stderr
    assert len(built(orin)) == 1 and orin.status()["state"] == "ready"


def test_a_release_made_before_the_shared_build_command_still_builds(
        orin: OrinDevice) -> None:
    """A rollback to a release with only engine/trtllm.json (and no "tool"): the build
    unit's command, given engine/build.json, takes it."""
    from builder.engines.trtllm import LEGACY_SETTINGS

    legacy = orin.release / LEGACY_SETTINGS
    s = json.loads(legacy.read_text())
    del s["tool"]
    legacy.write_text(json.dumps(s))
    orin.settings.unlink()
    r = subprocess.run([sys.executable, "-m", "builder.device.engine_cache",
                        str(orin.settings)], env=orin.env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(built(orin)) == 1 and orin.status()["state"] == "ready"
