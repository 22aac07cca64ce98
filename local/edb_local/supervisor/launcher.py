"""Background processes that outlive ``edb local up``: spawn detached, stop by process group.

Each component runs in its own session (``start_new_session``), so it survives the terminal that
started it and ``down`` reaches every process it spawned with one ``killpg``. stdout and stderr
go to ``logs/<component>.log`` (appended: restarts keep history).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from edb_local.supervisor.pidfile import PidRecord, is_alive, read_pid_file, remove_pid_file, write_pid_file


def spawn_detached(argv: list[str], *, log_path: Path, pid_path: Path, cwd: Path,
                   env: Mapping[str, str]) -> PidRecord:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        log_file.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting: {' '.join(argv)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    # The supervisor never waits for it; mark it so Python does not warn about it at exit.
    process.returncode = 0
    return write_pid_file(pid_path, process.pid)


def running_record(pid_path: Path) -> PidRecord | None:
    record = read_pid_file(pid_path)
    return record if record is not None and is_alive(record) else None


def stop_process_group(pid_path: Path, timeout_s: float) -> bool:
    """SIGTERM the component's process group, SIGKILL after ``timeout_s``. True if it had been running."""
    record = running_record(pid_path)
    if record is None:
        remove_pid_file(pid_path)
        return False
    _signal_group(record, signal.SIGTERM)
    if not _wait_gone(record, timeout_s):
        _signal_group(record, signal.SIGKILL)
        _wait_gone(record, 5.0)
    remove_pid_file(pid_path)
    return True


def _signal_group(record: PidRecord, sig: signal.Signals) -> None:
    if not is_alive(record):
        return
    try:
        leads_group = os.getpgid(record.pid) == record.pid
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if leads_group:
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)


def _wait_gone(record: PidRecord, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(record):
            return True
        _reap(record.pid)
        time.sleep(0.05)
    return not is_alive(record)


def _reap(pid: int) -> None:
    # When the supervisor itself is the parent (tests, or `up` then `down` in one process), collect
    # the exit status so the pid does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
