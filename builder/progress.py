"""Progress for long steps: a bar for ninja's [n/m] lines, a spinner with the last
output line otherwise; plain periodic lines when stderr is not a terminal."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .log import console

_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")


@contextmanager
def step(label: str) -> Iterator[Callable[[str], None]]:
    """`with step("building llama.cpp") as on_line:` feed it the tool's output lines."""
    start = time.monotonic()
    if not console.is_terminal:
        last_report = [start]

        def plain(line: str) -> None:
            now = time.monotonic()
            if now - last_report[0] >= 30:
                last_report[0] = now
                console.print(f"  {label}: {line[:100]}", markup=False)

        console.print(f"{label} ...", markup=False)
        yield plain
        console.print(f"{label}: done in {time.monotonic() - start:.0f}s", markup=False)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[line]}", style="dim"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(escape(label), total=None, line="")

        def update(line: str) -> None:
            m = _NINJA.match(line)
            if m:
                bar.update(task, completed=int(m.group(1)), total=int(m.group(2)))
            bar.update(task, line=escape(line[-60:]))

        yield update
    console.print(f"[green]✓[/] {escape(label)} ({time.monotonic() - start:.0f}s)")
