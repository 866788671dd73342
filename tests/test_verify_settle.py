"""`builder verify` waits for a device that is still starting (its engine loading the
model) instead of failing checks that would pass a minute later; it does not wait out
an engine that keeps crashing. The device is a fake `ssh` that runs the remote command
here, with a fake `systemctl` that plays a unit's states in order."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder import verify

MANIFEST = {"layout": {"engine_unit": "edge-llm-engine.service",
                       "engine_build_unit": "edge-llm-engine-build.service"},
            "engine": {"start_seconds": 30}}


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """play(states): each `systemctl show` answers the next of `states` (the last one
    repeats); returns the file that counts the calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text('#!/bin/sh\nfor a; do last="$a"; done\nexec sh -c "$last"\n')
    (bin_dir / "systemctl").write_text(f"""#!/bin/sh
case "$1" in
  is-system-running) echo running ;;
  show) for a; do unit="$a"; done
        if [ "$unit" = edge-llm-engine-build.service ]; then
          n=$(cat {tmp_path}/build-calls 2>/dev/null || echo 0)
          echo $((n + 1)) > {tmp_path}/build-calls
          line=$(sed -n "$((n + 1))p" {tmp_path}/build-states 2>/dev/null)
          [ -n "$line" ] || line=$(tail -n 1 {tmp_path}/build-states 2>/dev/null)
          printf '%s\\n' ${{line:-inactive dead}}
          exit 0
        fi
        n=$(cat {tmp_path}/calls 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/calls
        line=$(sed -n "$((n + 1))p" {tmp_path}/states)
        [ -n "$line" ] || line=$(tail -n 1 {tmp_path}/states)
        printf '%s\\n' $line ;;
  *) echo "fake systemctl: unexpected $*" >&2; exit 2 ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(verify, "QUIET_SECONDS", 0.5)

    def play(*states: str, build: tuple[str, ...] = ()) -> Path:
        (tmp_path / "states").write_text("\n".join(states) + "\n")
        if build:
            (tmp_path / "build-states").write_text("\n".join(build) + "\n")
        return tmp_path / "calls"
    return play


def run(capsys) -> str:
    verify.settle(verify.SshHost("edge", "device", 22), Path("/dev/null"), MANIFEST, None)
    return capsys.readouterr().out


def test_a_device_that_is_up_is_not_waited_for(device, capsys) -> None:
    calls = device("active running")
    assert run(capsys) == ""
    assert calls.read_text().strip() == "1"


def test_an_engine_still_loading_its_model_is_waited_for(device, capsys) -> None:
    calls = device("activating start-post", "activating start-post", "active running")
    out = run(capsys)
    assert calls.read_text().strip() == "3"
    assert "still starting (edge-llm-engine.service); waiting up to 150s" in out
    assert "started (" in out


def test_an_engine_waiting_to_be_restarted_is_not_waited_out(device, capsys) -> None:
    calls = device("activating auto-restart")
    assert run(capsys) == ""
    assert calls.read_text().strip() == "1"


def test_an_engine_being_built_on_the_device_is_waited_for(device, capsys) -> None:
    """The engine's start waits behind its build unit (After=): the engine is inactive
    meanwhile, the build unit activating."""
    calls = device("inactive dead", "inactive dead", "active running",
                   build=("activating start", "activating start", "inactive dead"))
    out = run(capsys)
    assert calls.read_text().strip() == "3"
    assert "still starting (edge-llm-engine.service); waiting" in out and "started (" in out
