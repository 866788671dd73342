"""One way to run external tools: argument lists, stdin closed, output to a log, and
failures told apart (not found, killed, non-zero exit) with the log's tail."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import BuilderError, display_path
from .log import log


class ToolError(BuilderError):
    """An external command failed; the message says which, how, and where the log is."""


def which(tool: str, hint: str = "") -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolError(f"{tool}: not found on PATH{'; ' + hint if hint else ''}")
    return path


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    tail: int = 15,
    timeout: float | None = None,
    pass_fds: Sequence[int] = (),
) -> str:
    """Run `cmd`, return its output (stdout+stderr). `what` names the step in errors.

    Output goes line by line to `log_file` (appended) and `on_line` (progress).
    `pass_fds`: descriptors the tool inherits (it opens them as /proc/self/fd/N)."""
    args = [str(c) for c in cmd]
    if "/" in args[0]:  # a script given by path (./apply_binaries.sh): relative to cwd
        exe = os.path.join(cwd or ".", args[0])
        if not os.access(exe, os.X_OK):
            raise ToolError(f"{what}: {exe} is missing or not executable")
    else:
        exe = which(args[0], "run `builder doctor --install` to get the host packages")
    args[0] = exe
    full_env = {**os.environ, "LC_ALL": "C.UTF-8", **(env or {})}
    log.debug("run: %s", " ".join(args))
    last: deque[str] = deque(maxlen=tail)
    chunks: list[str] = []
    fh = log_file.open("a", encoding="utf-8") if log_file else None
    expired = threading.Event()
    try:
        if fh:
            fh.write(f"$ {' '.join(args)}\n")
            fh.flush()
        proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True,
                                pass_fds=tuple(pass_fds))
        assert proc.stdout is not None
        # The deadline holds whether or not the tool prints: a timer ends its process
        # group, which closes the pipe this loop reads.
        timer = threading.Timer(timeout, lambda: (expired.set(), stop_group(proc))) \
            if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            for line in proc.stdout:
                chunks.append(line)
                last.append(line.rstrip("\n"))
                if fh:
                    fh.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            stop_group(proc)
            raise
        finally:
            if timer:
                timer.cancel()
        if expired.is_set():
            raise subprocess.TimeoutExpired(args, timeout or 0)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what}: timed out after {timeout:.0f}s"
                        f"{_where(log_file)}") from None
    finally:
        if fh:
            fh.close()
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else rc
        raise ToolError(f"{what}: {Path(exe).name} was killed by {name}{_where(log_file)}"
                        f"{_tail(last)}")
    if rc != 0:
        raise ToolError(f"{what}: {Path(exe).name} exited with status {rc}"
                        f"{_where(log_file)}{_tail(last)}")
    return "".join(chunks)


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """End a tool started in its own session (start_new_session): SIGTERM to its process
    group, SIGKILL if it has not gone in 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _where(log_file: Path | None) -> str:
    return f" (log: {display_path(log_file)})" if log_file else ""


_ERROR = re.compile(r"\b(error|fatal|failed)\b", re.IGNORECASE)
_NOISE = ("ninja: build stopped", "make: ***", "-- Configuring incomplete",
          "See also", "FAILED: ")


def _tail(lines: deque[str]) -> str:
    """The line that says what went wrong (the last error-looking one, or the last one),
    so the one-line error carries it."""
    text = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(_NOISE)]
    for i in range(len(text) - 1, -1, -1):
        if _ERROR.search(text[i]):
            line = text[i]
            if line.endswith(":") and i + 1 < len(text):  # CMake puts the reason below
                line = f"{line} {text[i + 1]}"
            return f": {line[:300]}"
    return f": {text[-1][:300]}" if text else ""
