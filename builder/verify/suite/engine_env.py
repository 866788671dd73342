"""What the engine's process was started with, against what its release says: the
environment file (KEY="value" lines, as fleet/release.py env_file writes them and
systemd's EnvironmentFile= reads them)."""

from __future__ import annotations


def parse_env_file(text: str) -> dict[str, str]:
    """KEY="value" lines (backslash escapes \\\\ and \\"); comments and blanks skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == '"':
            chars, i, body = [], 0, value[1:-1]
            while i < len(body):
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                chars.append(body[i])
                i += 1
            value = "".join(chars)
        out[key.strip()] = value
    return out


def parse_environ(data: str) -> dict[str, str]:
    """/proc/PID/environ (NUL-separated), or the same with newlines."""
    out = {}
    for item in data.replace("\0", "\n").splitlines():
        key, sep, value = item.partition("=")
        if sep:
            out[key] = value
    return out


def mismatches(release_env: dict[str, str], process_env: dict[str, str]) -> list[str]:
    """Each setting of the release the process does not run with, as one line."""
    return [f"{k}: the release says {v!r}, the engine runs with "
            f"{process_env[k]!r}" if k in process_env else f"{k}: missing from the engine's "
            f"environment (the release says {v!r})"
            for k, v in release_env.items() if process_env.get(k) != v]
