"""`builder tune --host` against a booted x86-gateway appliance (the tiny model, under
QEMU): the device's own release measured over SSH, the overlay written, the engine
started again afterwards, and `builder verify` finds it running its release's settings
and answering as the release's llama-server does on this machine (verify.min_agreement)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from builder import tuned

pytestmark = pytest.mark.slow


def test_tune_over_ssh_measures_the_devices_release_and_restarts_its_engine(
        appliance: Path, manifest: dict, start_vm, run_builder_session,
        tmp_path: Path) -> None:
    from builder import vm
    from builder.vm import ssh_command

    spec, key = start_vm(appliance, "tune")
    try:
        host = f"ssh://edge@127.0.0.1:{spec.ssh_port}"
        out = tmp_path / "tuned.yaml"
        r = run_builder_session("tune", "--profile", "x86-gateway", "--out", str(appliance),
                                "--host", host, "--depth", "32", "--prompt", "16", "--gen",
                                "4", "-r", "1", "-o", str(out))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "stopping edge-llm-engine.service" in r.stdout
        o = tuned.load(out)
        assert o.complete
        dev = o.data["device"]
        assert dev["host"] == host and dev["cores"] == 2
        assert dev["model_sha256"] == manifest["model"]["sha256"]
        assert manifest["release_id"] in dev["engine_build"]
        state = subprocess.run(ssh_command(spec.ssh_port, "edge", key,
                                           "systemctl is-active edge-llm-engine.service"),
                               capture_output=True, text=True, timeout=120)
        assert state.stdout.strip() in ("active", "activating"), state.stdout
        # builder verify's check: the engine runs with its release's settings
        api_port = next(iter(spec.forwards))
        r = run_builder_session("verify", "--profile", "x86-gateway", "--out",
                                str(appliance), "--host", host, "--api-url",
                                f"http://127.0.0.1:{api_port}", "--select",
                                "runs_with_the_environment_of_its_release",
                                "--junit", str(tmp_path / "verify.xml"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert 'tests="1"' in (tmp_path / "verify.xml").read_text()
        # verify.min_agreement (a profile of the same name that extends the built-in one):
        # the device answers as the release's llama-server does on this machine
        (tmp_path / "profiles").mkdir()
        (tmp_path / "profiles" / "x86-gateway.yaml").write_text(
            "extends: x86-gateway\nverify:\n  min_agreement: 8\n")
        r = run_builder_session("verify", "--profile", "x86-gateway", "--profiles-dir",
                                str(tmp_path / "profiles"), "--out", str(appliance),
                                "--host", host, "--api-url", f"http://127.0.0.1:{api_port}",
                                "--select", "agree_with_the_reference", "--junit",
                                str(tmp_path / "a.xml"))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        report = (tmp_path / "a.xml").read_text()
        assert 'tests="1"' in report and 'skipped="0"' in report, report
    finally:
        vm.stop(spec.state_dir)
