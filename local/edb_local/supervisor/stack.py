"""``up``, ``down`` and ``status`` over the component table.

``up`` starts components in waves: a component starts once everything it depends on is healthy
(or not installed, unless it ``requires`` it), and each wave's components start together. A
component already running (its pid file names a live process) is left alone, so ``up`` is
idempotent and restarts only what died. ``down`` stops in reverse order, agent first (it stops its
modules itself), then sweeps any module process the agent left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edb.errors import EdbError
from edb_local.supervisor.components import COMPONENTS, Component, components_for
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.credentials import ensure_credentials, write_local_env
from edb_local.supervisor.launcher import running_record, spawn_detached, stop_process_group
from edb_local.supervisor.pidfile import read_pid_file
from edb_local.supervisor.settings import StackPaths, check_ports_free, load_or_create_settings

RUNNING, UNHEALTHY, STOPPED, EXITED = "running", "unhealthy", "stopped", "exited"
NOT_INSTALLED, BLOCKED, FAILED = "not installed", "blocked", "failed"
_BAD_STATES = (UNHEALTHY, EXITED, BLOCKED, FAILED)


#: what azure-identity's credentials read from the environment
AZURE_IDENTITY_VARIABLES = frozenset({
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST",
    "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_USERNAME", "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE", "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
    "IMDS_ENDPOINT"})


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: str
    detail: str = ""
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.state not in _BAD_STATES

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


class Stack:
    def __init__(self, state_dir: Path, device_id: str | None = None,
                 components: tuple[Component, ...] | None = None, *, legacy_v1: bool = False,
                 runtime: str | None = None) -> None:
        self.paths = StackPaths(Path(state_dir))
        self.device_id = device_id
        self._components = components
        self.legacy_v1 = legacy_v1
        self.runtime = runtime

    @property
    def components(self) -> tuple[Component, ...]:
        """The given table, or the one for this stack's runtime (known once its settings exist)."""
        if self._components is not None:
            return self._components
        runtime = self.runtime
        if runtime is None and self.paths.settings.exists():
            runtime = str(json.loads(self.paths.settings.read_text()).get("runtime", "process"))
        return components_for(runtime or "process")

    def context(self, *, create: bool) -> StackContext | None:
        if not create and not self.paths.settings.exists():
            return None
        self.paths.ensure()
        return StackContext(self.paths, load_or_create_settings(self.paths, self.device_id, self.legacy_v1,
                                                                self.runtime))

    # -- up ---------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 90.0,
           progress: Callable[[ComponentStatus], None] | None = None) -> list[ComponentStatus]:
        ctx = self.context(create=True)
        assert ctx is not None
        ensure_credentials(ctx)
        results: dict[str, ComponentStatus] = {}
        remaining = list(self.components)
        deadline = time.monotonic() + timeout_s

        def settle(status: ComponentStatus) -> None:
            results[status.name] = status
            if progress is not None:
                progress(status)

        while remaining:
            wave: list[Component] = []
            for component in list(remaining):
                missing = component.missing(ctx)
                if missing is not None:
                    settle(ComponentStatus(component.name, NOT_INSTALLED, missing))
                    remaining.remove(component)
                    continue
                if any(dep not in results for dep in component.depends_on if dep in {c.name for c in remaining}):
                    continue
                unmet = [d for d in component.requires if results.get(d) is None or results[d].state != RUNNING]
                if unmet:
                    state = NOT_INSTALLED if all(results[d].state == NOT_INSTALLED for d in unmet
                                                 if d in results) else BLOCKED
                    settle(ComponentStatus(component.name, state, f"needs {', '.join(unmet)}"))
                    remaining.remove(component)
                    continue
                wave.append(component)
            if not wave:
                break
            for component in wave:
                remaining.remove(component)
            started = {c.name: self._start(ctx, c) for c in wave}
            for status in self._wait_healthy(ctx, wave, started, deadline):
                settle(status)
        write_local_env(ctx)  # now with the Key Vault stand-in's admin identity (AZURE_*)
        return [results[c.name] for c in self.components if c.name in results]

    def _start(self, ctx: StackContext, component: Component) -> ComponentStatus | None:
        """None when started (or already running); a final status when it could not start."""
        if running_record(self.paths.pid_file(component.name)) is not None:
            return None
        try:
            check_ports_free(ctx.settings, list(component.ports))
            if component.prepare is not None:
                component.prepare(ctx)
            # a component gets only the Azure identity the stack gives it, never the operator's
            inherited = {k: v for k, v in os.environ.items() if k not in AZURE_IDENTITY_VARIABLES}
            env = {**inherited, **(component.env(ctx) if component.env else {})}
            spawn_detached(component.command(ctx), log_path=self.paths.log_file(component.name),
                           pid_path=self.paths.pid_file(component.name), cwd=self.paths.root.resolve(), env=env)
        except (EdbError, OSError) as exc:
            return ComponentStatus(component.name, FAILED, str(exc))
        return None

    def _wait_healthy(self, ctx: StackContext, wave: list[Component], started: dict[str, ComponentStatus | None],
                      deadline: float) -> list[ComponentStatus]:
        done: dict[str, ComponentStatus] = {name: s for name, s in started.items() if s is not None}
        while len(done) < len(wave):
            for component in wave:
                if component.name in done:
                    continue
                pid_file = self.paths.pid_file(component.name)
                record = running_record(pid_file)
                if record is None:
                    tail = _log_tail(self.paths.log_file(component.name))
                    done[component.name] = ComponentStatus(component.name, EXITED, f"exited at start: {tail}")
                    continue
                health = component.health(ctx)
                if health.ok:
                    done[component.name] = ComponentStatus(component.name, RUNNING, health.detail, record.pid)
                elif time.monotonic() > deadline:
                    done[component.name] = ComponentStatus(component.name, UNHEALTHY,
                                                           f"not healthy in time: {health.detail}", record.pid)
            if len(done) < len(wave):
                time.sleep(0.2)
        return [done[c.name] for c in wave]

    # -- down / status ----------------------------------------------------------------------------

    def down(self, *, volumes: bool = False) -> list[ComponentStatus]:
        results: list[ComponentStatus] = []
        for component in reversed(self.components):
            pid_file = self.paths.pid_file(component.name)
            was_running = stop_process_group(pid_file, component.stop_timeout_s)
            results.append(ComponentStatus(component.name, STOPPED, "stopped" if was_running else "was not running"))
        for pid_file in sorted(self.paths.run.glob("module.*.pid")):  # modules the agent left behind
            stop_process_group(pid_file, 10.0)
        if self.paths.settings.exists() and (volumes or self.components is not COMPONENTS):
            from edb_local.supervisor.docker_device import remove_stack_objects

            # containers the agent left behind (it removes its own), and --volumes: the device's state
            removed = remove_stack_objects(self.paths.root, volumes=volumes)
            if removed:
                results.append(ComponentStatus("containers", STOPPED, ", ".join(
                    f"{count} {kind} removed" for kind, count in removed.items())))
        return list(reversed(results))

    def status(self) -> list[ComponentStatus]:
        ctx = self.context(create=False)
        results: list[ComponentStatus] = []
        not_installed: set[str] = set()
        for component in self.components:
            if ctx is None:
                results.append(ComponentStatus(component.name, STOPPED, "no stack in this state directory"))
                continue
            missing = component.missing(ctx)
            absent = [d for d in component.requires if d in not_installed]
            if missing is not None or absent:
                not_installed.add(component.name)
                results.append(ComponentStatus(component.name, NOT_INSTALLED, missing or f"needs {', '.join(absent)}"))
                continue
            pid_file = self.paths.pid_file(component.name)
            record = running_record(pid_file)
            if record is None:
                if read_pid_file(pid_file) is not None:
                    tail = _log_tail(self.paths.log_file(component.name), 2)
                    results.append(ComponentStatus(component.name, EXITED, f"died: {tail}"))
                else:
                    results.append(ComponentStatus(component.name, STOPPED))
                continue
            health = component.health(ctx)
            results.append(ComponentStatus(component.name, RUNNING if health.ok else UNHEALTHY, health.detail,
                                           record.pid))
        return results
