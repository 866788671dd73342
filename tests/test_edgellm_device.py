"""TensorRT Edge-LLM end to end against its 0.9.1 stand-ins (tests/fakes/edgellm): the
build host exports a checkpoint with the release's own tools (builder/engines/
tensorrt_edge_llm/export.py), a release made for orin-nano-8gb-edgellm by the builder's
release.make is delivered into a device tree, `edge-llm-engine-build` builds its engine
there with llm_build (builder/device/edgellm.py) and caches it, and `edge-llm-edgellm
serve` serves it through the adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from device_tree import keygen
from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
from fakes.edgellm.fake_edgellm_source import make_source_tarball
from fakes.edgellm.fake_hf_checkpoint import make_checkpoint
from fakes.jetson.fake_l4t import nv_tegra_release_line
from harness.gateway_process import GatewayProcess
from harness.llama_server import free_port
from stand_ins import device_of

from builder.cache import Cache, sha256_file
from builder.contracts import ReleaseInputs
from builder.engines.tensorrt_edge_llm import ENGINE
from builder.errors import BuilderError
from builder.fleet import release
from builder.model.pipeline import fetch
from builder.profiles import ProfileStore
from builder.schema import ModelSource, PinnedFile

NAME = "orin-nano-8gb-edgellm"
TRT_72 = "10.16.2.10-1+cuda13.2"  # JetPack 7.2's libnvinfer10


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What a user hands the builder: the release's source archive and a runtime tarball
    built on a JetPack 7.2 Jetson; and checkpoints (Qwen2, tiny): fp16 and AWQ."""
    base = tmp_path_factory.mktemp("edgellm-dist")
    (base / "calibration.jsonl").write_text("".join(
        json.dumps({"article": f"Calibration text number {i} about the weather."}) + "\n"
        for i in range(8)))
    return {"source": make_source_tarball(base), "runtime": make_runtime_tarball(base),
            "fp16": make_checkpoint(base / "Qwen2.5-tiny"),
            "awq": make_checkpoint(base / "Qwen2.5-tiny-AWQ", quant="awq"),
            "cache": base / "cache", "calibration": base / "calibration.jsonl"}


def profile(dist: dict[str, Path], quant: str = "int4_awq", calibration: bool = True):
    p = ProfileStore().load(NAME).concrete()
    t = p.engine.tensorrt_edge_llm.model_copy(update={
        "calibration": str(dist["calibration"]) if calibration else None,
        "source": PinnedFile(path=str(dist["source"]), sha256=sha256_file(dist["source"])),
        "runtime": PinnedFile(path=str(dist["runtime"]),
                              sha256=sha256_file(dist["runtime"]))})
    return p.model_copy(update={"engine": p.engine.model_copy(update={"tensorrt_edge_llm": t}),
                                "model": p.model.model_copy(update={"quant": quant})})


def export(dist: dict[str, Path], checkpoint: str, quant: str = "int4_awq", **kw):
    fetched = fetch(ModelSource(path=str(dist[checkpoint])), Cache(dist["cache"]))
    return ENGINE.model(profile(dist, quant, **kw), fetched, Cache(dist["cache"]))


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # pip installs the release's package from its archive and nothing else (the real
    # package's dependencies come from PyPI; the stand-in has none)
    monkeypatch.setenv("PIP_NO_INDEX", "1")


# --- the build host ----------------------------------------------------------------------

def test_an_awq_checkpoint_exports_to_the_onnx_directory_the_release_carries(
        dist: dict[str, Path]) -> None:
    m = export(dist, "awq")
    assert m.format == "onnx" and m.quant == "int4_awq"
    assert {"model.onnx", "model.onnx.data", "config.json", "embedding.safetensors",
            "tokenizer.json", "processed_chat_template.json"} <= set(m.files or {})
    again = export(dist, "awq")  # cached by every input: the same directory, not redone
    assert again.path == m.path and again.sha256 == m.sha256


def test_int4_awq_from_fp16_calibrates_on_a_gpu_and_says_how_to_run_it_elsewhere(
        dist: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BuilderError) as e:
        export(dist, "fp16")
    msg = str(e.value)
    assert "\n" not in msg and "CUDA GPU" in msg and "--model-file" in msg
    assert "tensorrt-edgellm-quantize llm --model_dir MODEL" in msg
    assert "--quantization int4_awq" in msg
    monkeypatch.setenv("FAKE_EDGELLM_GPUS", "1")  # a host with a GPU: quantize, then export
    m = export(dist, "fp16")
    assert (m.path / "model.onnx").is_file()
    # the quantized checkpoint was a step, not a product: the cache keeps the ONNX only
    assert [p.name for p in m.path.parent.parent.iterdir()] == ["onnx"]
    # and it calibrates on the profile's local set, never on the Hub's
    with pytest.raises(BuilderError, match=r"^engine.tensorrt_edge_llm.calibration: "):
        export(dist, "fp16", calibration=False)


@pytest.mark.parametrize("checkpoint, quant, says", [
    ("fp16", "int4_gptq", "GPTQ-Int4 checkpoint"),
    ("awq", "fp16", "awq-quantized, model.quant is fp16"),
])
def test_a_checkpoint_that_cannot_become_the_quantization_is_refused(
        dist: dict[str, Path], checkpoint: str, quant: str, says: str) -> None:
    with pytest.raises(BuilderError, match=says):
        export(dist, checkpoint, quant)


def test_an_onnx_directory_exported_elsewhere_is_checked_before_it_is_taken(
        dist: dict[str, Path], tmp_path: Path) -> None:
    onnx = tmp_path / "llm"
    shutil.copytree(export(dist, "awq").path, onnx)
    fetched = fetch(ModelSource(), Cache(dist["cache"]), model_file=onnx)
    assert fetched.kind == "onnx"
    assert ENGINE.model(profile(dist), fetched, Cache(dist["cache"])).format == "onnx"
    cfg = json.loads((onnx / "config.json").read_text())
    cfg["external_weight_files"] = [{"file": "../../../etc/passwd"}]
    (onnx / "config.json").write_text(json.dumps(cfg))
    fetched = fetch(ModelSource(), Cache(dist["cache"]), model_file=onnx)
    with pytest.raises(BuilderError, match="is not a file name inside the directory"):
        ENGINE.model(profile(dist), fetched, Cache(dist["cache"]))
    # a file inside that the release would not carry (it takes the ONNX file types only)
    (onnx / "weights.bin").write_bytes(b"\0" * 16)
    cfg["external_weight_files"] = [{"file": "weights.bin"}]
    (onnx / "config.json").write_text(json.dumps(cfg))
    fetched = fetch(ModelSource(), Cache(dist["cache"]), model_file=onnx)
    with pytest.raises(BuilderError, match=r"weights\.bin is not a \.safetensors"):
        ENGINE.model(profile(dist), fetched, Cache(dist["cache"]))
    # another release's export: its engine would be built by this release's llm_build
    cfg["external_weight_files"], cfg["edgellm_version"] = [], "0.8.0"
    (onnx / "config.json").write_text(json.dumps(cfg))
    fetched = fetch(ModelSource(), Cache(dist["cache"]), model_file=onnx)
    with pytest.raises(BuilderError, match=r"exported by Edge-LLM 0\.8\.0"):
        ENGINE.model(profile(dist), fetched, Cache(dist["cache"]))


# --- the device ------------------------------------------------------------------------

class EdgeDevice:
    """A device tree (JetPack 7.2) holding Edge-LLM's runtime and one release."""

    def __init__(self, tmp: Path, dist: dict[str, Path]) -> None:
        self.root = tmp / "device"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc/nv_tegra_release").write_text(nv_tegra_release_line("39.2.0") + "\n")
        self.set_tensorrt(TRT_72)
        checkout = self.root / "opt/tensorrt-edgellm"
        with tarfile.open(dist["runtime"]) as tar:  # as rootfs/offline.py lays it
            members = []
            for m in tar.getmembers():
                m.name = m.name.partition("/")[2]
                if m.name:
                    members.append(m)
            tar.extractall(checkout, members=members, filter="data")
        model = export(dist, "awq")
        self.port = free_port()
        p = profile(dist)
        self.profile = p.model_copy(update={
            "service": p.service.model_copy(update={"engine_port": self.port})})
        gw = tmp / "gateway"
        gw.mkdir()
        (gw / "__init__.py").write_text("")
        d = device_of(self.profile, NAME)
        i = ReleaseInputs(device=d, engine_dir=None, engine_key=release.recipe_key(d),
                          gateway_dir=gw, gateway_key="g", model=model,
                          model_id="qwen2.5-1.5b-instruct")
        b = release.make(i, tmp / "releases", keygen(tmp / "signing"))
        self.release = self.root / "opt/edge-llm/releases" / b.release_id
        shutil.copytree(b.tree, self.release, symlinks=True)
        self.model = self.root / "var/lib/edge-llm/models" / model.device_name
        shutil.copytree(model.path, self.model)
        self.settings = self.release / "engine/build.json"

    def set_tensorrt(self, version: str) -> None:
        (self.root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
        (self.root / "var/lib/dpkg/status").write_text(
            "Package: libnvinfer10\nStatus: install ok installed\n"
            f"Architecture: arm64\nVersion: {version}\n\n")

    @property
    def engines(self) -> Path:
        return self.root / "var/lib/edge-llm/engines"

    def built(self) -> list[Path]:
        return sorted(d for d in self.engines.iterdir() if not d.name.startswith("."))

    def status(self) -> dict:
        return json.loads((self.root / "run/edge-llm/engine-status.json").read_text())

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "EDGELLM_PLUGIN_PATH"}
        return {**env, "EDGE_LLM_ROOT": str(self.root), **extra}

    def build(self, **env: str) -> subprocess.CompletedProcess[str]:
        """What the build unit runs: edge-llm-engine-build SETTINGS."""
        return subprocess.run([sys.executable, "-m", "builder.device.engine_cache",
                               str(self.settings)], env=self.env(**env), capture_output=True,
                              text=True, timeout=120)


@pytest.fixture
def orin(tmp_path: Path, dist: dict[str, Path]) -> EdgeDevice:
    return EdgeDevice(tmp_path, dist)


def test_the_engine_is_built_once_with_the_releases_limits_then_reused(
        orin: EdgeDevice) -> None:
    r = orin.build()
    assert r.returncode == 0, r.stderr
    [engine] = orin.built()
    assert (engine / "llm.engine").is_file() and (engine / ".complete").is_file()
    limits = json.loads((engine / "config.json").read_text())["builder_config"]
    t = orin.profile.engine.tensorrt_edge_llm
    assert (limits["max_input_len"], limits["max_kv_cache_capacity"],
            limits["max_batch_size"]) == (t.max_input_len,
                                          orin.profile.runtime.context_length, 1)
    assert orin.status()["state"] == "ready"
    assert not [d for d in orin.engines.iterdir() if d.name.startswith(".build-")]
    mtime = (engine / "llm.engine").stat().st_mtime_ns
    again = orin.build()
    assert again.returncode == 0 and "(cached)" in again.stderr
    assert orin.built() == [engine] and (engine / "llm.engine").stat().st_mtime_ns == mtime


def test_another_tensorrt_builds_another_engine(orin: EdgeDevice) -> None:
    assert orin.build().returncode == 0
    orin.set_tensorrt("10.16.3.1-1+cuda13.2")  # an apt upgrade of JetPack's TensorRT
    r = orin.build(FAKE_EDGELLM_TENSORRT="10.16.3")
    assert r.returncode == 0, r.stderr
    assert len(orin.built()) == 2


def test_an_onnx_naming_a_file_outside_it_is_refused_before_llm_build_runs(
        orin: EdgeDevice) -> None:
    """llm_build copies each external weight file from <onnxDir>/<file> without a path
    check (llmBuilder.cpp:1660-1697; the stand-in does the same: test_fakes_edgellm's
    test_llm_build_copies_external_weight_files_without_a_path_check)."""
    secret = orin.root / "etc/engine-secret"
    secret.write_text("not for the engine directory\n")
    cfg = json.loads((orin.model / "config.json").read_text())
    cfg["external_weight_files"] = [{"file": "../../../../../etc/engine-secret"}]
    (orin.model / "config.json").write_text(json.dumps(cfg))
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "is not a file name inside the directory" in r.stderr
    assert orin.status()["state"] == "failed" and orin.status()["step"] == "setup"
    assert "step 1/1" not in r.stderr  # llm_build never started
    assert not [p for p in orin.root.rglob("engine-secret") if p != secret]


def test_a_rebuilt_runtime_of_the_same_version_builds_another_engine(
        orin: EdgeDevice) -> None:
    """An engine is serialized against the plugin it was built with."""
    assert orin.build().returncode == 0
    plugin = orin.root / "opt/tensorrt-edgellm/build/libNvInfer_edgellm_plugin.so"
    real = plugin.resolve()
    real.write_bytes(real.read_bytes() + b"\n# rebuilt\n")
    assert orin.build().returncode == 0
    assert len(orin.built()) == 2


@pytest.mark.parametrize("steps", [
    [["sh", "-c", "touch /tmp/owned"]],
    [["llm_build", "--onnxDir", "ONNX", "--engineDir", "/etc"]],
    [["llm_build", "--onnxDir", "ONNX", "--engineDir", "ENGINE", "--maxInputLen", "1;id"]],
    [["llm_build", "--onnxDir", "ONNX", "--engineDir", "ENGINE"], ["sh"]],
])
def test_the_build_runs_llm_build_and_nothing_else_the_release_names(
        orin: EdgeDevice, steps: list) -> None:
    s = json.loads(orin.settings.read_text())
    orin.settings.write_text(json.dumps({**s, "steps": steps}))
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "not an llm_build line this tool runs" in r.stderr and "step 1/" not in r.stderr
    assert not orin.engines.exists() or not orin.built()


def test_a_failed_llm_build_leaves_no_engine_and_says_so(orin: EdgeDevice) -> None:
    r = orin.build(FAKE_EDGELLM_GPUS="0")
    assert r.returncode != 0 and "llm_build failed" in r.stderr
    assert orin.status() | {"at": None} == {"state": "failed", "step": "llm_build",
                                            "exit": 1, "at": None}
    assert not orin.engines.exists() or list(orin.engines.iterdir()) == []


def test_without_edge_llm_in_the_image_the_build_says_what_to_set(orin: EdgeDevice) -> None:
    shutil.rmtree(orin.root / "opt/tensorrt-edgellm")
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "engine.tensorrt_edge_llm.runtime" in r.stderr and "docs/orin.md" in r.stderr
    assert orin.status()["state"] == "failed"


@pytest.mark.parametrize("tool", ["edge-llm-release", "../edgellm", None])
def test_the_build_command_runs_only_a_device_tool_that_builds_engines(
        orin: EdgeDevice, tool: str | None) -> None:
    s = json.loads(orin.settings.read_text())
    orin.settings.write_text(json.dumps({**s, "tool": tool}))
    r = orin.build()
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "is not a device tool that builds engines" in r.stderr
    assert not orin.engines.exists()


def test_the_release_streams_through_the_gateway_from_the_engine_built_on_the_device(
        orin: EdgeDevice, tmp_path: Path) -> None:
    """The engine unit's command (`edge-llm-edgellm serve`, the release's drop-in) and
    the gateway with the release's own engine settings (gateway.json)."""
    assert orin.build().returncode == 0
    # no EDGELLM_PLUGIN_PATH from outside: serve gives the adapter the build's plugin
    engine = subprocess.Popen(
        [sys.executable, "-m", "builder.device.edgellm", "serve", str(orin.settings)],
        env=orin.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    gw_settings = json.loads((orin.release / "gateway.json").read_text())
    try:
        with GatewayProcess(tmp_path / "gw", f"http://127.0.0.1:{orin.port}",
                            "qwen2.5-1.5b-instruct", slots=1,
                            engine_probe_path=gw_settings["engine_probe_path"],
                            engine_fields=gw_settings["engine_fields"]) as gw:
            deadline = time.monotonic() + 60
            while gw.get("/health", key="")[0] != 200:
                assert engine.poll() is None, engine.stderr.read()
                assert time.monotonic() < deadline, gw.log_text()
                time.sleep(0.2)
            body = {"model": "qwen2.5-1.5b-instruct", "stream": True, "max_tokens": 8,
                    "top_k": 1, "messages": [{"role": "user", "content": "Hello there"}]}
            req = urllib.request.Request(
                f"{gw.url}/v1/chat/completions", json.dumps(body).encode(),
                {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                events = [x[6:] for x in r.read().decode().split("\n")
                          if x.startswith("data: ")]
    finally:
        engine.terminate()
        engine.wait(30)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip() and chunks[-1]["choices"][0]["finish_reason"] == "length"
