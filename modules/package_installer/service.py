"""The installer's imperative shell: twin in, reconcile plan out, jobs, reports, events, methods.

Everything that decides lives in :mod:`.reconcile`; this file only gathers the state the plan
needs (desired twin, the TEE's installed list, running jobs, failures) and executes actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edb.errors import EdbError, InstallError
from edb.schemas import (
    ErrorInfo,
    EventKind,
    MessageType,
    ModuleEvent,
    PackageState,
    ReportedPackage,
    application_properties,
    apply_desired_patch,
    desired_from_twin,
    iso_utc,
    parse_desired_packages,
)
from edb.schemas.packages import NAME_PATTERN, DesiredPackage, InvalidDesired, key_flow_for_format
from package_installer import endpoints
from package_installer.backoff import Backoff
from package_installer.errors import is_retryable
from package_installer.pipeline import InstallDeps, run_install
from package_installer.reconcile import (
    CancelInstall,
    Failure,
    Identity,
    Installed,
    Report,
    StartInstall,
    Uninstall,
    effective_desired,
    plan,
    record_failure,
)
from package_installer.settings import InstallerSettings
from package_installer.twin_io import ModuleClientLike, OutputSender, ReportedWriter

log = logging.getLogger("package_installer")
SOURCE = "package_installer"
MODULE_VERSION = "0.1.0"


@dataclass
class Job:
    package: DesiredPackage
    task: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)
    state: PackageState = PackageState.DOWNLOADING


class InstallerService:
    def __init__(self, client: Any, deps: InstallDeps, settings: InstallerSettings, *,
                 tee_list: Callable[[], list[Any]], tee_uninstall: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.deps = deps
        self.settings = settings
        self._tee_list = tee_list
        self._tee_uninstall = tee_uninstall
        self.clock = clock
        self.backoff = Backoff(settings.backoff_base_s, settings.backoff_cap_s)
        self.desired_doc: dict[str, Any] = {}
        self.reported: dict[str, ReportedPackage] = {}
        self.installed: dict[str, Installed] = {}
        self.jobs: dict[str, Job] = {}
        self.failures: dict[str, Failure] = {}
        self.held: dict[str, Identity] = {}
        self._last_good: dict[str, DesiredPackage | InvalidDesired] = {}
        self.twin_ready = False
        self.writer = ReportedWriter(client)
        self.outputs = OutputSender(client)
        self._wake = asyncio.Event()
        self._resync = asyncio.Event()

    # -- twin ------------------------------------------------------------------------------------
    async def load_twin(self) -> None:
        twin = await self.client.get_twin()
        self.desired_doc = desired_from_twin(twin)
        section = (twin.get("reported") or {}).get("packages") or {}
        if isinstance(section, Mapping):
            self.reported = {name: value for name, raw in section.items()
                             if (value := ReportedPackage.from_twin(raw)) is not None}
        self.twin_ready = True
        self.wake()

    async def on_desired_patch(self, patch: Mapping[str, Any]) -> None:
        self.desired_doc = apply_desired_patch(self.desired_doc, patch)
        self.wake()

    def on_connection_state_change(self) -> None:
        # After a reconnect, patches sent while we were away are lost: read the whole twin again.
        if getattr(self.client, "connected", False):
            self._resync.set()

    def wake(self) -> None:
        self._wake.set()

    def _report(self, name: str, value: ReportedPackage | None) -> None:
        if value is None:
            self.reported.pop(name, None)
        else:
            self.reported[name] = value
        self.writer.update({"packages": {name: value.to_twin() if value else None}})

    def _emit(self, event: ModuleEvent, *, notify_runner: bool = False) -> None:
        props = application_properties(MessageType.EVENT, event=event.event.value)
        if notify_runner:  # first: the runner's switch to the new version waits for it, the reporter does not
            self.outputs.send(endpoints.OUTPUT_NOTIFICATIONS, event.to_json(), props)
        self.outputs.send(endpoints.OUTPUT_EVENTS, event.to_json(), props)

    # -- loop ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        background = [asyncio.create_task(self.writer.run()), asyncio.create_task(self.outputs.run()),
                      asyncio.create_task(self._resync_loop())]
        self.writer.update({"installer": {"version": MODULE_VERSION, "startedAt": iso_utc()}})
        try:
            while not self.twin_ready and not stop.is_set():
                try:
                    await self.load_twin()
                except Exception as exc:
                    log.warning("get_twin failed (%s); retrying", type(exc).__name__)
                    await _wait(stop, 2.0)
            while not stop.is_set():
                timeout = await self.step()
                await _wait_any(stop, self._wake, timeout)
                self._wake.clear()
        finally:
            for job in list(self.jobs.values()):
                job.task.cancel()
            await asyncio.gather(*(j.task for j in self.jobs.values()), return_exceptions=True)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _resync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resync.wait(), timeout=self.settings.resync_interval_s)
            self._resync.clear()
            try:
                await self.load_twin()
            except Exception as exc:
                log.warning("twin resync failed (%s)", type(exc).__name__)

    async def refresh_installed(self) -> bool:
        try:
            packages = await asyncio.to_thread(self._tee_list)
        except EdbError as exc:
            log.warning("TEE list_installed failed: %s", exc.code)
            return False
        self.installed = {p.name: Installed(p.name, p.version, p.security_version, p.sha256,
                                            key_flow_for_format(p.format)) for p in packages}
        return True

    async def step(self) -> float:
        """One reconcile pass; returns how long to sleep at most before the next one."""
        if not await self.refresh_installed():
            return 2.0
        parsed = parse_desired_packages(self.desired_doc, max_size=self.settings.max_package_bytes)
        desired, self._last_good = effective_desired(parsed, self._last_good)
        now = self.clock()
        result = plan(desired, self.installed, {n: j.package.identity for n, j in self.jobs.items()},
                      self.failures, self.reported, now=now, max_parallel=self.settings.max_parallel,
                      held=self.held)
        for action in result.actions:
            if isinstance(action, Report):
                self._report(action.name, action.value)
            elif isinstance(action, StartInstall):
                self._start(action.package, action.attempt)
            elif isinstance(action, CancelInstall):
                job = self.jobs.get(action.name)
                if job is not None:
                    job.task.cancel()
            elif isinstance(action, Uninstall):
                await self._uninstall(action.name)
        # Forget failures and holds for names that are no longer desired.
        for table in (self.failures, self.held):
            for name in [n for n in table if n not in desired]:
                table.pop(name)
        if result.wake_at is not None:
            return max(0.05, min(self.settings.resync_interval_s, result.wake_at - now))
        return self.settings.resync_interval_s

    # -- jobs ------------------------------------------------------------------------------------
    def _start(self, package: DesiredPackage, attempt: int) -> None:
        log.info("install %s %s (attempt %d)", package.name, package.version, attempt)
        task = asyncio.create_task(self._job(package, attempt), name=f"install-{package.name}")
        self.jobs[package.name] = Job(package, task)

    async def _job(self, package: DesiredPackage, attempt: int) -> None:
        name = package.name
        started = self.clock()
        marks: list[tuple[str, float]] = []  # (state, when it began): the stage breakdown in the log

        async def on_state(state: PackageState, security_version: int | None) -> None:
            marks.append((state.value, self.clock()))
            job = self.jobs.get(name)
            if job is not None:
                job.state = state
            log.info("%s %s: %s (+%.0f ms)", name, package.version, state.value, (self.clock() - started) * 1000)
            installed = self.installed.get(name)
            self._report(name, ReportedPackage(state, package.version, security_version, package.sha256,
                                               installed_version=installed.version if installed else None,
                                               attempts=attempt))
            self._emit(ModuleEvent(EventKind.PACKAGE_STATE, SOURCE, name, package.version, security_version,
                                   state.value))

        try:
            summary = await run_install(package, self.deps, on_state)
        except asyncio.CancelledError:
            log.info("install of %s %s cancelled", name, package.version)
            raise
        except Exception as exc:
            self._failed(package, exc, started)
        else:
            installed = summary.package
            key_flow = key_flow_for_format(installed.format)  # legacy v1 installs are marked as such
            self.installed[name] = Installed(name, installed.version, installed.security_version, installed.sha256,
                                             key_flow)
            self.failures.pop(name, None)
            duration_ms = (self.clock() - started) * 1000
            self._emit(ModuleEvent(EventKind.PACKAGE_INSTALLED, SOURCE, name, installed.version,
                                   installed.security_version, PackageState.INSTALLED.value,
                                   duration_ms=round(duration_ms, 1), key_flow=key_flow), notify_runner=True)
            self._report(name, ReportedPackage(PackageState.INSTALLED, installed.version, installed.security_version,
                                               package.sha256, installed_version=installed.version, key_flow=key_flow))
            log.info("installed %s %s (security version %d%s) in %.0f ms (%s)", name, installed.version,
                     installed.security_version, ", LEGACY key flow" if key_flow else "", duration_ms,
                     stage_breakdown(marks, self.clock()))
        finally:
            job = self.jobs.get(name)
            if job is not None and job.task is asyncio.current_task():
                self.jobs.pop(name)
            self.wake()

    def _failed(self, package: DesiredPackage, exc: Exception, started: float) -> None:
        name = package.name
        if isinstance(exc, EdbError):
            error = ErrorInfo.from_exception(exc)
        else:
            log.exception("install of %s failed unexpectedly", name)
            error = ErrorInfo("INSTALL_INTERNAL", type(exc).__name__)
        retryable = is_retryable(exc)
        previous = self.failures.get(name)
        svn = self.reported[name].security_version if name in self.reported else None
        retry_after = getattr(exc, "retry_after", None)  # the key release service's Retry-After, if any
        failure = record_failure(previous, package.identity, error, retryable=retryable, now=self.clock(),
                                 backoff=self.backoff, security_version=svn,
                                 retry_after=float(retry_after) if isinstance(retry_after, int | float) else None)
        self.failures[name] = failure
        installed = self.installed.get(name)
        self._report(name, ReportedPackage(PackageState.FAILED, package.version, svn, package.sha256, error,
                                           installed_version=installed.version if installed else None,
                                           attempts=failure.attempts))
        self._emit(ModuleEvent(EventKind.PACKAGE_FAILED, SOURCE, name, package.version, svn,
                               PackageState.FAILED.value, error,
                               duration_ms=round((self.clock() - started) * 1000, 1), retryable=retryable))
        log.warning("install of %s %s failed: %s%s", name, package.version, error.code,
                    f" (retry in {failure.retry_at - self.clock():.1f} s)" if failure.retry_at else "")

    async def _uninstall(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._tee_uninstall, name)
        except EdbError as exc:
            log.warning("uninstall of %s failed: %s", name, exc.code)
            return
        removed = self.installed.pop(name, None)
        if name not in self.held:
            self._report(name, None)
        self._emit(ModuleEvent(EventKind.PACKAGE_REMOVED, SOURCE, name, removed.version if removed else None),
                   notify_runner=True)
        log.info("uninstalled %s", name)

    # -- direct methods ----------------------------------------------------------------------------
    async def handle_method(self, name: str, payload: Any) -> tuple[int, dict[str, Any]]:
        if name == "status":
            return 200, self.status()
        if name == "retry":
            target = payload.get("name") if isinstance(payload, Mapping) else None
            names = [target] if isinstance(target, str) else sorted(set(self.failures) | set(self.held))
            for n in names:
                self.failures.pop(n, None)
                self.held.pop(n, None)
            self.wake()
            return 200, {"retried": names}
        if name == "uninstall":
            target = payload.get("name") if isinstance(payload, Mapping) else None
            if not isinstance(target, str) or not NAME_PATTERN.fullmatch(target):
                return 400, {"error": InstallError("payload must be {\"name\": <package>}",
                                                   code="INSTALL_INVALID_NAME").to_dict()}
            desired = parse_desired_packages(self.desired_doc).get(target)
            if isinstance(desired, DesiredPackage):
                self.held[target] = desired.identity
            job = self.jobs.get(target)
            if job is not None:
                job.task.cancel()
                await asyncio.gather(job.task, return_exceptions=True)
            await self.refresh_installed()
            if target not in self.installed:
                self.wake()
                return 404, {"error": {"code": "INSTALL_NOT_INSTALLED", "message": f"{target} is not installed"}}
            await self._uninstall(target)
            self.wake()
            return 200, {"uninstalled": target}
        return 404, {"error": {"code": "INSTALL_UNKNOWN_METHOD", "message": f"no method {name[:40]!r}"}}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "packages": {n: r.to_twin() for n, r in sorted(self.reported.items())},
            "installed": {n: {"version": i.version, "securityVersion": i.security_version,
                              **({"keyFlow": i.key_flow} if i.key_flow else {})}
                          for n, i in sorted(self.installed.items())},
            "inFlight": {n: {"version": j.package.version, "state": j.state.value,
                             "seconds": round(now - j.started, 1)} for n, j in sorted(self.jobs.items())},
            "failures": {n: {"code": f.error.code, "attempts": f.attempts, "retryable": f.retryable,
                             "retryInSeconds": round(f.retry_at - now, 1) if f.retry_at else None}
                         for n, f in sorted(self.failures.items())},
        }


def stage_breakdown(marks: list[tuple[str, float]], end: float) -> str:
    """``downloading 367 ms, verifying 143 ms, ...``: how long each state lasted."""
    ends = [when for _, when in marks[1:]] + [end]
    stages = zip(marks, ends, strict=True)
    return ", ".join(f"{state} {(until - began) * 1000:.0f} ms" for (state, began), until in stages)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


__all__ = ["InstallerService", "ModuleClientLike"]
