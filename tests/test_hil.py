"""Real hardware, in the lab (`pytest --hil -k hil`): the Pi 5 and Jetson Orin builds of
this checkout, flashed and verified on the boards. Everything else in the suite runs
these paths against stand-ins (tests/fakes); these tests are what the stand-ins stand in
for. Where the boards are comes from the environment:

  EDGE_LLM_HIL_OUT    the `builder build --out` directory holding the builds
  EDGE_LLM_HIL_PI5    ssh://edge@pi5.lab (a Pi 5 booted from that build's image)
  EDGE_LLM_HIL_ORIN   ssh://edge@orin.lab (an Orin flashed from that build's package)
  EDGE_LLM_HIL_ORIN_RECOVERY=1  an Orin is in recovery mode on this host's USB (flash test)
  EDGE_LLM_HIL_ORIN_POWER_MODE  the nvpmodel mode name the Orin profile sets (e.g. MAXN_SUPER)
  EDGE_LLM_HIL_PI5_PROFILE, EDGE_LLM_HIL_ORIN_PROFILE  (default pi5-8gb, orin-nano-8gb)
  EDGE_LLM_HIL_EDGELLM  ssh://edge@orin2.lab (an Orin flashed from a TensorRT Edge-LLM
                        build, JetPack 7.2); EDGE_LLM_HIL_EDGELLM_PROFILE (default
                        orin-nano-8gb-edgellm)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hil


def need(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.skip(f"set {var} (see tests/test_hil.py)")
    return value


def builder(*args: str, timeout: int = 7200) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("builder")
    return subprocess.run([str(exe), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def verify(profile: str, host: str) -> None:
    out = need("EDGE_LLM_HIL_OUT")
    api = "http://" + host.removeprefix("ssh://").split("@")[-1].split(":")[0] + ":8080"
    r = builder("verify", "--profile", profile, "--out", out, "--host", host,
                "--api-url", api)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_pi5_appliance_passes_builder_verify_on_the_board() -> None:
    verify(os.environ.get("EDGE_LLM_HIL_PI5_PROFILE", "pi5-8gb"), need("EDGE_LLM_HIL_PI5"))


def test_pi5_answers_like_llama_cpp_on_this_machine(tmp_path: Path) -> None:
    """verify.min_agreement on the board: its ARM kernels against the same source built
    for this machine, same weights and settings (near ties tolerated: docs/quality.md)."""
    agrees(os.environ.get("EDGE_LLM_HIL_PI5_PROFILE", "pi5-8gb"), need("EDGE_LLM_HIL_PI5"),
           tmp_path)


def agrees(profile: str, host: str, tmp_path: Path) -> None:
    """`builder verify`'s agreement check alone, with verify.min_agreement: 16 (a
    profile of the same name that extends the board's)."""
    (tmp_path / f"{profile}.yaml").write_text(
        f"extends: {profile}\nverify:\n  min_agreement: 16\n")
    api = "http://" + host.removeprefix("ssh://").split("@")[-1].split(":")[0] + ":8080"
    r = builder("verify", "--profile", profile, "--profiles-dir", str(tmp_path), "--out",
                need("EDGE_LLM_HIL_OUT"), "--host", host, "--api-url", api, "--select",
                "agree_with_the_reference")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_orin_builds_its_engine_and_passes_builder_verify_on_the_board() -> None:
    """The first boot builds the TensorRT-LLM engine (minutes to an hour); verify waits
    for the engine unit, then holds the board to the profile's TTFT and decode rates."""
    verify(os.environ.get("EDGE_LLM_HIL_ORIN_PROFILE", "orin-nano-8gb"),
           need("EDGE_LLM_HIL_ORIN"))


def test_orin_answers_like_llama_cpp_f16_of_its_checkpoint(tmp_path: Path) -> None:
    """verify.min_agreement on the board: TensorRT-LLM on its GPU against llama.cpp F16 of
    the release's own checkpoint here, compared as text (its server returns no
    log-probabilities) with the tolerance stated for the device's precision
    (engines/trtllm REFERENCE_TIE_NATS, measured on a stand-in pair: docs/quality.md).
    This is where that tolerance is confirmed or corrected."""
    from builder.engines.trtllm import REFERENCE_TIE_NATS
    from builder.profiles import ProfileStore

    profile = os.environ.get("EDGE_LLM_HIL_ORIN_PROFILE", "orin-nano-8gb")
    host = need("EDGE_LLM_HIL_ORIN")
    quant = ProfileStore().load(profile).concrete().model.quant.lower()
    if quant not in REFERENCE_TIE_NATS:
        pytest.skip(f"{profile} serves {quant}, which has no reference here; build the "
                    f"board with model.quant one of {', '.join(REFERENCE_TIE_NATS)}")
    agrees(profile, host, tmp_path)


def test_orin_flashes_over_usb_in_recovery_mode() -> None:
    need("EDGE_LLM_HIL_ORIN_RECOVERY")
    r = builder("flash", "--profile",
                os.environ.get("EDGE_LLM_HIL_ORIN_PROFILE", "orin-nano-8gb"),
                "--out", need("EDGE_LLM_HIL_OUT"), "--yes")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def on_board(host: str, command: str) -> str:
    """A command on the board over SSH, with the builder's login key."""
    from urllib.parse import urlsplit

    key = Path(os.environ.get("EDGE_LLM_CACHE", Path.home() / ".cache/edge-llm-builder")) \
        / "ssh/id_ed25519"
    url = urlsplit(host)
    r = subprocess.run(["ssh", "-o", "BatchMode=yes", "-i", str(key), "-p",
                        str(url.port or 22), f"{url.username}@{url.hostname}", command],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_the_orin_image_carries_jetpack_and_tensorrt_llm_and_its_power_mode() -> None:
    """What the stand-ins stand in for, on the board: JetPack's TensorRT and CUDA from
    NVIDIA's repository and TensorRT-LLM from the profile's wheel import together in the
    device's Python, the board's nvpmodel is in the profile's mode, and the boot firmware
    is the module's (its chip SKU)."""
    host = need("EDGE_LLM_HIL_ORIN")
    out = on_board(host, "python3 -c 'import tensorrt, tensorrt_llm; "
                         "print(tensorrt.__version__, tensorrt_llm.__version__)'")
    assert out.split()[-1] == "0.12.0"
    assert "ii" in on_board(host, "dpkg -l nvidia-cuda nvidia-cudnn nvidia-tensorrt")
    mode = os.environ.get("EDGE_LLM_HIL_ORIN_POWER_MODE")  # e.g. MAXN_SUPER
    if mode:
        assert f"NV Power Mode: {mode}" in on_board(host, "nvpmodel -q")


def test_an_edge_llm_orin_builds_its_engine_and_passes_builder_verify_on_the_board() -> None:
    """JetPack 7.2 and TensorRT Edge-LLM: the first boot runs llm_build on the release's
    ONNX (minutes), then verify holds the board to the profile's bars through the
    adapter and the gateway."""
    verify(os.environ.get("EDGE_LLM_HIL_EDGELLM_PROFILE", "orin-nano-8gb-edgellm"),
           need("EDGE_LLM_HIL_EDGELLM"))


def test_the_edge_llm_image_carries_jetpack_72_and_edge_llms_runtime() -> None:
    """What tests/fakes/edgellm stands in for, on the board: JetPack 7.2's TensorRT 10.16
    and CUDA 13.2 from NVIDIA's repository, Edge-LLM's llm_build and its runtime binding
    (loaded by the board's Python with the plugin) from the profile's tarball, and the
    engine the first boot built in the cache."""
    host = need("EDGE_LLM_HIL_EDGELLM")
    status = on_board(host, "dpkg-query -W -f '${Version}' libnvinfer10 cuda-cudart-13-2")
    assert "+cuda13.2" in status, status
    root = "/opt/tensorrt-edgellm/build"
    on_board(host, f"test -x {root}/examples/llm/llm_build")
    out = on_board(host, f"EDGELLM_PLUGIN_PATH={root}/libNvInfer_edgellm_plugin.so "
                         f"python3 -c 'import sys; sys.path.insert(0, \"{root}/pybind\"); "
                         "import _edgellm_runtime; print(_edgellm_runtime.__name__)'")
    assert out.strip() == "_edgellm_runtime"
    assert "llm.engine" in on_board(host, "ls /var/lib/edge-llm/engines/*/")
