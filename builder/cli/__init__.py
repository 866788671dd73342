"""The `builder` command line: one click app (common.py), and a module per group of
commands; importing this package registers every command."""

from . import build as _build  # noqa: F401  (engine, model, cache, doctor, build, vm, ...)
from . import fleet as _fleet  # noqa: F401  (release, deploy, rollback, fleet, bundle)
from . import lab as _lab  # noqa: F401  (lab run, lab report)
from . import tune as _tune  # noqa: F401  (tune)
from .main import main

__all__ = ["main"]
