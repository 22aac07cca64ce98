"""Module processes: spawn, watch, health-check and stop them (the agent's imperative shell).

Each module runs in its own session/process group (so a stop reaches every process it started),
with stdout and stderr appended to its log file, and a pid file ``<pid> <start-time>`` so
``edb local down`` can still find it should the agent die first. Stopping is ``docker stop``'s
contract: SIGTERM to the group, then SIGKILL after ``stop_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edb_local.agent.create_options import HealthCheck
from edb_local.agent.deployment import ModuleSpec
from edb_local.agent.reconcile import ModuleObservation, StopReason
from edb_local.agent.reported import ModuleReport
from edb_local.supervisor.pidfile import remove_pid_file, write_pid_file

log = logging.getLogger(__name__)


@dataclass
class ModuleRecord:
    """Everything the agent tracks about one module; ``observation()`` is what the planner sees."""

    spec: ModuleSpec
    process: asyncio.subprocess.Process | None = None
    running: bool = False
    healthy: bool | None = None
    exit_code: int | None = None
    stop_reason: StopReason | None = None
    restart_count: int = 0
    started_at: float | None = None
    exited_at: float | None = None
    last_start: dt.datetime | None = None
    last_exit: dt.datetime | None = None
    last_restart: dt.datetime | None = None
    description: str = ""
    container_id: str | None = None  # the Docker runtime's container (edb_local.agent.docker_runner)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def mark_starting(self) -> None:
        """A new run of the module begins (process or container): the last run's outcome is cleared."""
        self.healthy = None
        self.exit_code = None
        self.stop_reason = None
        self.started_at = time.monotonic()
        self.exited_at = None
        self.last_start = dt.datetime.now(dt.UTC)

    def mark_exited(self, code: int, description: str | None = None) -> None:
        """The module's process or container ended with ``code``: what both runtimes record (a
        stop the agent asked for keeps its own description), and the other tasks of this run end."""
        self.running = False
        self.healthy = None
        self.exit_code = code
        self.exited_at = time.monotonic()
        self.last_exit = dt.datetime.now(dt.UTC)
        if self.stop_reason is None:
            self.description = description or f"exited with code {code}"
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    def observation(self) -> ModuleObservation:
        return ModuleObservation(
            fingerprint=self.spec.fingerprint, running=self.running, healthy=self.healthy,
            exit_code=self.exit_code, stop_reason=self.stop_reason, restart_count=self.restart_count,
            started_at=self.started_at, exited_at=self.exited_at,
        )

    def report(self, runtime_status: str, desired: ModuleSpec | None) -> ModuleReport:
        spec = desired or self.spec
        return ModuleReport(
            runtime_status=runtime_status, status=spec.status, version=spec.version,
            restart_policy=spec.restart_policy, image=spec.image,
            exit_code=None if self.running else self.exit_code, status_description=self.description,
            last_start=self.last_start, last_exit=self.last_exit, restart_count=self.restart_count,
            last_restart=self.last_restart,
        )


class ProcessRunner:
    def __init__(self, log_dir: Path, run_dir: Path, work_root: Path, on_change: Callable[[], None],
                 stop_timeout_s: float = 10.0) -> None:
        self.log_dir = log_dir
        self.run_dir = run_dir
        self.work_root = work_root
        self.on_change = on_change
        self.stop_timeout_s = stop_timeout_s

    async def start(self, record: ModuleRecord, argv: list[str], env: Mapping[str, str],
                    health_check: HealthCheck | None) -> None:
        module_id = record.spec.module_id
        self.log_dir.mkdir(parents=True, exist_ok=True)
        workdir = self.work_root / module_id
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        record.mark_starting()
        with open(self.log_dir / f"{module_id}.log", "ab") as log_file:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, env=dict(env), cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                )
            except OSError as exc:
                # Counts as a failure for the restart policy, like a container that cannot start.
                record.running = False
                record.exited_at = time.monotonic()
                record.last_exit = dt.datetime.now(dt.UTC)
                record.description = f"cannot start: {exc.strerror or exc}"
                log.error("module %s could not start: %s", module_id, exc)
                return
        record.process = process
        record.running = True
        record.description = "running"
        write_pid_file(self.run_dir / f"module.{module_id}.pid", process.pid)
        log.info("module %s started (pid %d): %s", module_id, process.pid, " ".join(argv))
        record.tasks = [asyncio.create_task(self._watch(record, process))]
        if health_check is not None:
            record.tasks.append(asyncio.create_task(self._health(record, process, health_check, env, workdir)))

    async def _watch(self, record: ModuleRecord, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if record.process is not process:
            return
        record.mark_exited(code)
        remove_pid_file(self.run_dir / f"module.{record.spec.module_id}.pid")
        log.info("module %s exited with code %d", record.spec.module_id, code)
        self.on_change()

    async def _health(self, record: ModuleRecord, process: asyncio.subprocess.Process, check: HealthCheck,
                      env: Mapping[str, str], workdir: Path) -> None:
        started = time.monotonic()
        failures = 0
        while record.process is process and record.running:
            await asyncio.sleep(check.interval_s)
            ok = await _run_probe(check, env, workdir)
            if not ok and time.monotonic() - started < check.start_period_s:
                continue
            failures = 0 if ok else failures + 1
            verdict = True if ok else (False if failures >= check.retries else record.healthy)
            if verdict != record.healthy and record.process is process and record.running:
                record.healthy = verdict
                record.description = "healthy" if verdict else f"health check failed {failures} times"
                log.info("module %s is %s", record.spec.module_id, "healthy" if verdict else "unhealthy")
                self.on_change()

    async def stop(self, record: ModuleRecord, reason: StopReason) -> None:
        process = record.process
        record.stop_reason = reason
        record.description = f"stopped ({reason})"
        if process is None or process.returncode is not None:
            record.running = False
            return
        await terminate_group(process, self.stop_timeout_s)
        # _watch records the exit; wait for it so the caller sees a consistent record.
        for task in record.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout=self.stop_timeout_s)


async def terminate_group(process: asyncio.subprocess.Process, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    # Children that ignored SIGTERM while the leader exited: finish the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _run_probe(check: HealthCheck, env: Mapping[str, str], workdir: Path) -> bool:
    try:
        probe = await asyncio.create_subprocess_exec(
            *check.argv, env=dict(env), cwd=workdir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(probe.wait(), timeout=check.timeout_s) == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(probe.pid, signal.SIGKILL)
        await probe.wait()
        return False
