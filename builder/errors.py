"""Errors that carry a user-facing message; the CLI turns them into one line + exit code."""

from __future__ import annotations

from pathlib import Path

EXIT_ERROR = 2


class BuilderError(Exception):
    """A problem the user can fix. `str(err)` is the whole message, one line."""

    exit_code = EXIT_ERROR


class ProfileError(BuilderError):
    """A profile file is wrong: malformed, unknown key, bad value, bad inheritance."""


def display_path(path: Path | str) -> str:
    """Path as a user would type it: relative to the working directory when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
