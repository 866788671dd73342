"""TensorRT Edge-LLM on JetPack 7.2 (L4T R39.2) end to end against the stand-ins of
NVIDIA's tools (tests/fakes/jetson for the BSP and JetPack's repository,
tests/fakes/edgellm for Edge-LLM 0.9.1): `builder build` of an orin-nano-8gb-edgellm
profile exports the model with Edge-LLM's tools and makes the flash package; in its rootfs
the first boot's build (edge-llm-engine-build) runs llm_build, and edge-llm-edgellm serve
answers on loopback, with the gateway streaming from it.

The sample rootfs stand-in is arm64, as NVIDIA's is: the pi5 build's Debian 12 arm64
rootfs (the suite's one rootfs per architecture; NVIDIA's Ubuntu 24.04 cannot be made
here), so apply_binaries.sh's chroot steps, apt, the offline install, the roles, and the
first boot's build and serve all run arm64 programs under qemu-user, as they would on
this host with NVIDIA's tarball. It waits for the pi5 build, so it runs with the
emulated tier's tests, last."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fakes.edgellm.fake_edgellm_runtime import make_runtime_tarball
from fakes.edgellm.fake_edgellm_source import make_source_tarball
from fakes.edgellm.fake_hf_checkpoint import make_checkpoint
from fakes.jetson.fake_jetpack_repo import KEY_NAME
from fakes.jetson.fake_l4t import make_bsp, make_sample_rootfs
from harness.gateway_process import GatewayProcess
from test_orin import in_rootfs, stand_in_repo

from builder.cache import sha256_file

pytestmark = [pytest.mark.slow, pytest.mark.emulated]
PROFILE = "orin-edgellm-test"
RELEASE = "39.2.0"
BUILD = "/usr/local/lib/edge-llm/edge-llm-engine-build"
TOOL = "/usr/local/lib/edge-llm/edge-llm-edgellm"
SETTINGS = "/opt/edge-llm/current/engine/build.json"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def out(tmp_path_factory, arm64_rootfs_tar: Path, artifact_cache) -> Path:
    """OUT root of one build of orin-nano-8gb-edgellm: the tiny AWQ checkpoint exported
    with the source release's tools, Edge-LLM's runtime tarball and JetPack 7.2 (arm64
    packages) from stand-ins, on the arm64 sample rootfs stand-in."""
    base = tmp_path_factory.mktemp("orin-edgellm")
    nvidia = base / "nvidia"
    bsp = make_bsp(nvidia, RELEASE)
    sample = make_sample_rootfs(arm64_rootfs_tar, nvidia, RELEASE)
    repo = stand_in_repo(artifact_cache, RELEASE, arch="arm64")
    runtime, source = make_runtime_tarball(nvidia), make_source_tarball(nvidia)
    model = make_checkpoint(base / "Qwen2.5-tiny-AWQ", quant="awq")
    profiles = base / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE}.yaml").write_text(
        "extends: orin-nano-8gb-edgellm\n"
        f"jetson:\n  jetpack: {{url: {repo}, keyring: {repo / KEY_NAME}}}\n"
        "engine:\n  tensorrt_edge_llm:\n"
        f"    source: {{path: {source}, sha256: {sha256_file(source)}}}\n"
        f"    runtime: {{path: {runtime}, sha256: {sha256_file(runtime)}}}\n"
        "    python: /usr/bin/python3\n")
    o = base / "out"
    r = subprocess.run(
        [str(Path(sys.executable).with_name("builder")), "build", "--profile", PROFILE,
         "--profiles-dir", str(profiles), "--model-file", str(model), "--l4t-bsp", str(bsp),
         "--l4t-rootfs", str(sample), "--out", str(o)],
        capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL,
        # the stand-in package has no dependencies: pip needs no index (the real one
        # takes torch and the rest from PyPI)
        env={**os.environ, "PIP_NO_INDEX": "1", "COLUMNS": "100"})
    assert r.returncode == 0, r.stderr[-4000:]
    return o


@pytest.fixture(scope="module")
def built(out: Path) -> dict:
    return json.loads((out / PROFILE / "manifest.json").read_text())


@pytest.fixture(scope="module")
def root(out: Path, built: dict, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("package")
    subprocess.run(["tar", "--zstd", "-xpf",
                    str(out / PROFILE / built["delivery"]["files"]["package"]), "-C",
                    str(dest)], check=True)
    return dest / "Linux_for_Tegra/rootfs"


def test_the_build_is_a_jetpack_72_flash_package_carrying_the_onnx(built: dict,
                                                                   root: Path) -> None:
    assert built["delivery"]["kind"] == "flash-package"
    assert built["delivery"]["l4t_release"] == RELEASE
    assert built["engine"]["kind"] == "tensorrt-edge-llm"
    assert built["model"]["format"] == "onnx"
    model = root / "var/lib/edge-llm/models" / built["model"]["sha256"]
    assert (model / "model.onnx").is_file() and (model / "config.json").is_file()
    assert os.access(root / "opt/tensorrt-edgellm/build/examples/llm/llm_build", os.X_OK)
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: libnvinfer10\n" in status and "+cuda13.2" in status
    # an arm64 system, as a Jetson's: what the first boot runs is aarch64 code (e_machine
    # 183), here under qemu-user, and JetPack's packages are arm64 ones
    link = root / "usr/bin/python3"
    target = os.readlink(link) if link.is_symlink() else link.name
    python = root / target.lstrip("/") if target.startswith("/") else link.parent / target
    head = python.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183
    nvinfer = status.split("Package: libnvinfer10\n", 1)[1].split("\n\n", 1)[0]
    assert "Architecture: arm64" in nvinfer


def test_the_first_boots_build_and_serve_run_in_the_rootfs_and_the_gateway_streams(
        root: Path, tmp_path: Path) -> None:
    r = in_rootfs(root, BUILD, SETTINGS, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    [engine] = [d for d in (root / "var/lib/edge-llm/engines").iterdir()
                if not d.name.startswith(".")]
    assert (engine / "llm.engine").is_file() and (engine / ".complete").is_file()
    with socket.socket() as s:  # the release's port may be taken on a shared host
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = json.loads((root / SETTINGS.lstrip("/")).read_text())
    (root / "tmp/edgellm-test.json").write_text(json.dumps({**settings, "port": port}))
    env = (root / "opt/edge-llm/current/engine.env").read_text()
    plugin = next(line.split("=", 1)[1].strip('"') for line in env.splitlines()
                  if line.startswith("EDGELLM_PLUGIN_PATH="))
    server = subprocess.Popen(["chroot", str(root), TOOL, "serve", "/tmp/edgellm-test.json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={"PATH": PATH, "LANG": "C.UTF-8",
                                   "EDGELLM_PLUGIN_PATH": plugin})
    try:
        with GatewayProcess(tmp_path / "gw", f"http://127.0.0.1:{port}", settings["model_id"],
                            slots=1, engine_probe_path="/health",
                            engine_fields=["top_k"]) as gw:
            deadline = time.monotonic() + 120
            while gw.get("/health", key="")[0] != 200:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, gw.log_text()
                time.sleep(0.5)
            body = {"model": settings["model_id"], "stream": True, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Hello"}]}
            req = urllib.request.Request(
                f"{gw.url}/v1/chat/completions", json.dumps(body).encode(),
                {"Authorization": f"Bearer {gw.key}", "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                events = [x[6:] for x in resp.read().decode().split("\n")
                          if x.startswith("data: ")]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text.strip()
