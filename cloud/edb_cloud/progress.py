"""Progress bars and spinners for the orchestrator (rich, on an interactive stderr only)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def transfer(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields ``update(done_bytes)`` (absolute); a no-op when not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


@contextmanager
def status(description: str, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A spinner with a changing status line; yields ``set(text)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(description) as spinner:
        yield lambda text: spinner.update(f"{description}: {text}")
