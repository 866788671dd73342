"""One way to run external tools (builder/run.py): deadlines that hold when a tool
prints nothing, and a builder stopped by SIGTERM or SIGHUP ends the tools it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.run import ToolError, run


def test_a_silent_tool_past_its_deadline_is_ended(tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    with pytest.raises(ToolError, match="timed out after 1s"):
        run(["sh", "-c", f"sleep 4; touch {marker}"], what="a silent tool", timeout=1)
    time.sleep(5)  # long enough for the tool to finish, had it not been ended
    assert not marker.exists()


def test_the_deadline_ends_the_tools_children_too(tmp_path: Path) -> None:
    marker = tmp_path / "child-finished"
    with pytest.raises(ToolError, match="timed out"):
        run(["sh", "-c", f"(sleep 4; touch {marker}) & wait"], what="a parent", timeout=1)
    time.sleep(5)
    assert not marker.exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_builder_ends_the_tools_it_started(tmp_path: Path, sig: int) -> None:
    pidfile = tmp_path / "child.pid"
    script = (
        "from builder.cli.main import install_signal_handlers\n"
        "from builder.run import run\n"
        "install_signal_handlers()\n"
        f"run(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60'], what='a long tool')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    child = int(pidfile.read_text())
    assert _alive(child)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    for _ in range(100):
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(child), "the tool outlived the builder"


def test_a_script_given_by_path_runs_from_the_working_directory(tmp_path: Path) -> None:
    """NVIDIA's tools are run as ./apply_binaries.sh in Linux_for_Tegra/: the path is
    the working directory's, not the builder's, and a missing one says so."""
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\npwd\n")
    script.chmod(0o755)
    assert run(["./tool.sh"], what="the tool", cwd=tmp_path).strip() == str(tmp_path)
    with pytest.raises(ToolError, match=r"the tool: .*/nothing.sh is missing"):
        run(["./nothing.sh"], what="the tool", cwd=tmp_path)
