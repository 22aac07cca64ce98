"""Pid files that survive pid reuse: ``<pid> <start-time>``.

The start time (field 22 of /proc/<pid>/stat, in clock ticks since boot) tells a live process we
started from an unrelated one that got the same pid later, so ``down`` never signals a stranger.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_time: int


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def write_pid_file(path: Path, pid: int) -> PidRecord:
    start = process_start_time(pid)
    record = PidRecord(pid, start if start is not None else 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(f"{record.pid} {record.start_time}\n")
    tmp.replace(path)
    return record


def read_pid_file(path: Path) -> PidRecord | None:
    try:
        pid_text, start_text = path.read_text().split()
        return PidRecord(int(pid_text), int(start_text))
    except (OSError, ValueError):
        return None


def remove_pid_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def is_alive(record: PidRecord) -> bool:
    """The process of this record still runs (same pid AND same start time)."""
    return record.pid > 0 and process_start_time(record.pid) == record.start_time


def live_pid(path: Path) -> int | None:
    record = read_pid_file(path)
    return record.pid if record is not None and is_alive(record) else None


def same_session_leader(record: PidRecord) -> bool:
    """Whether the recorded process leads its own process group (so killpg reaches only its own)."""
    try:
        return os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return False
