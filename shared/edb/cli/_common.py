"""Helpers shared by the ``edb package``, ``edb pki`` and ``edb cloud`` commands: JSON/human output,
error exits, progress bars, parsing of durations and sizes, key provider selection."""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from edb.errors import EdbError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 2


def state_dir() -> Path:
    return Path(os.environ.get("EDB_STATE_DIR") or ".edb")


def default_pki_dir() -> Path:
    return state_dir() / "pki"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=None, separators=(",", ":"), default=str))


def handles_errors(fn: F) -> F:
    """Turn an EdbError into ``{"ok": false, "error": {...}}`` (with --json) or one line on stderr,
    and exit 2. The command must take ``as_json``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdbError as exc:
            if kwargs.get("as_json"):
                emit_json({"ok": False, "error": exc.to_dict()})
            else:
                click.echo(f"error: {exc.code}: {exc.message}", err=True)
            click.get_current_context().exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on an interactive stderr for work over 8 MiB; otherwise a no-op."""
    if not enabled or total < 8 * 1024 * 1024 or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE = re.compile(r"(\d+)\s*(|B|KiB|MiB|GiB|K|M|G)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "k": 1 << 10, "mib": 1 << 20, "m": 1 << 20, "gib": 1 << 30, "g": 1 << 30}


def parse_expiry(text: str, now: dt.datetime) -> dt.datetime:
    """``30d``, ``12h``, ``2w`` from now, or an RFC 3339 UTC time ``2026-01-31T00:00:00Z``."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return now + dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use a duration (30d, 12h, 2w) or an RFC 3339 time (2026-01-31T00:00:00Z)") from None
    if value.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-01-31T00:00:00Z")
    return value.astimezone(dt.UTC)


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise click.BadParameter("use a size such as 1MiB, 64KiB or 4096")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def is_key_vault_id(value: str) -> bool:
    return value.startswith("https://")
