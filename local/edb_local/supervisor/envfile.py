"""``.edb/local.env``: ``KEY=value`` lines, readable by ``source`` in a shell and by Python."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_env_file(path: Path, values: Mapping[str, str], header: str = "") -> None:
    """Write atomically, mode 0600 (the file holds the hub owner connection string)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for name, value in values.items():
        if not _NAME.match(name) or "\n" in value or "\x00" in value:
            raise ValueError(f"invalid environment entry {name!r}")
        lines.append(f"{name}={shlex.quote(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    tmp.replace(path)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):]
        name, sep, value = line.partition("=")
        if not sep or not _NAME.match(name.strip()):
            continue
        parts = shlex.split(value, comments=False, posix=True)
        values[name.strip()] = parts[0] if len(parts) == 1 else " ".join(parts)
    return values
