"""The one logger, and the console progress and messages go to (stderr)."""

from __future__ import annotations

import logging

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("edge_llm_builder")
