"""The edge agent's loop (imperative shell): twin in, processes out, reported properties back.

One asyncio task owns all state. Everything that can change the plan (a desired patch, a
(re)connection, a process exit, a health verdict, a backoff expiry, the periodic resync) only sets
``_wake``; the loop then re-reads what changed, asks :func:`reconcile.plan` what to do, does it in
order, and reports. The last valid deployment is kept in ``agent/deployment.json`` (0600) so the
device runs its modules after a restart while the hub is unreachable, as edgeAgent does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from azure.iot.device.aio import IoTHubModuleClient

from edb import __version__
from edb.errors import EdbError
from edb_local.agent.config import AGENT_MODULE_ID, AgentConfig
from edb_local.agent.containers import container_request, numeric_user
from edb_local.agent.deployment import Deployment, ModuleSpec, desired_version_of, parse_deployment
from edb_local.agent.docker_runner import ContainerRunner
from edb_local.agent.environment import EdgeModuleIdentity, module_environment
from edb_local.agent.errors import DeploymentError
from edb_local.agent.identities import IdentityRegistry
from edb_local.agent.processes import ModuleRecord, ProcessRunner
from edb_local.agent.reconcile import ForgetModule, StartModule, StopModule, StopReason, plan, runtime_status
from edb_local.agent.reported import (
    DesiredStatus,
    ModuleReport,
    agent_reported,
    apply_patch,
    reported_patch,
)
from edb_local.agent.resolve import ResolvedModule, resolve_deployment
from edb_local.supervisor.health import unix_socket_accepts
from edb_local.supervisor.pidfile import is_alive, read_pid_file, remove_pid_file
from edb_local.workload.server import WorkloadServer
from edb_local.workload.signer import WorkloadSigner

log = logging.getLogger(__name__)


class EdgeAgent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.identities = IdentityRegistry(config.service_connection_string, config.device_id,
                                           config.identity_cache, ca_path=config.ca_path)
        self.signer = WorkloadSigner(config.hub_hostname, config.device_id)
        self.workload = WorkloadServer(self.signer, config.ca_path.read_text(), config.workload_socket_dir)
        self.records: dict[str, ModuleRecord] = {}
        self.resolved: dict[str, ResolvedModule] = {}
        self.desired_status = DesiredStatus(417, "no deployment yet")
        self.last_desired_version: int | None = None
        self.started = dt.datetime.now(dt.UTC)
        self._client: IoTHubModuleClient | None = None
        self._connected = False
        self._disconnected_since: float | None = None
        self._twin_dirty = True
        self._twin_read_at = 0.0
        self._reported: dict[str, Any] = {}
        self._reported_synced = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.runner = ProcessRunner(config.module_log_dir, config.run_dir, config.work_root, self.wake,
                                    config.stop_timeout_s)
        self.containers: ContainerRunner | None = None
        if config.runtime == "docker":
            self.containers = ContainerRunner(config.stack, config.module_log_dir, self._wake_threadsafe,
                                              config.stop_timeout_s)

    # -- events ---------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def _wake_threadsafe(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_patch(self, _patch: object) -> None:  # runs in the SDK's handler thread
        self._twin_dirty = True
        self._wake_threadsafe()

    def _on_connection_state_change(self, *_: object) -> None:
        self._twin_dirty = True
        self._reported_synced = False  # re-read and re-send what the hub holds
        self._wake_threadsafe()

    # -- main loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._sweep_orphans)  # blocking: process waits, Docker Engine calls
        self._load_backup()
        stop_task = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                # Cleared before the pass, so a wake-up during the pass (a process exiting while
                # others start) makes the next pass run at once instead of being lost.
                self._wake.clear()
                await self._ensure_connected()
                wake_at = await self._reconcile_once()
                timeout = self.config.resync_interval_s
                if wake_at is not None:
                    timeout = max(0.0, min(timeout, wake_at - time.monotonic()))
                if not self._connected:
                    timeout = min(timeout, 2.0)
                wake_task = asyncio.create_task(self._wake.wait())
                await asyncio.wait({wake_task, stop_task}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
                wake_task.cancel()
        finally:
            stop_task.cancel()
            await self._shutdown()

    async def _reconcile_once(self) -> float | None:
        # Re-read the twin on patches and reconnections, and every resync interval anyway: the SDK
        # is known to miss a patch now and then (azure-iot-sdk-python #573, #737).
        if time.monotonic() - self._twin_read_at >= self.config.resync_interval_s:
            self._twin_dirty = True
        if self._twin_dirty and self._connected:
            await self._read_deployment()
        desired = {m: r.spec for m, r in self.resolved.items()}
        host = frozenset(m for m, r in self.resolved.items() if r.host_provided)
        observed = {m: r.observation() for m, r in self.records.items()}
        decision = plan(desired, observed, time.monotonic(), self.config.backoff, host)
        for action in decision.actions:
            if isinstance(action, StopModule):
                await self._stop(self.records[action.module_id], action.reason)
            elif isinstance(action, ForgetModule):
                await self._forget(action.module_id)
            elif isinstance(action, StartModule):
                await self._start(self.resolved[action.module_id], action)
        wake_at = decision.wake_at
        if decision.actions:
            # Starts and stops change observations (a start that failed is a failure now).
            observed = {m: r.observation() for m, r in self.records.items()}
            decision = plan(desired, observed, time.monotonic(), self.config.backoff, host)
            wake_at = time.monotonic() if decision.actions else decision.wake_at
        await self._report()
        self._write_health()
        return wake_at

    # -- hub connection -------------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        if self._client is not None:
            connected = bool(self._client.connected)
            if connected != self._connected:
                self._connected = connected
                self._twin_dirty = True
                self._reported_synced = False
            if connected:
                self._disconnected_since = None
                return
            now = time.monotonic()
            self._disconnected_since = self._disconnected_since or now
            if now - self._disconnected_since < self.config.reconnect_after_s:
                return
            log.warning("no connection to the hub for %.0f s: recreating the client", now - self._disconnected_since)
            await self._drop_client()
        client: IoTHubModuleClient | None = None
        try:
            credential = await self.identities.ensure_module(AGENT_MODULE_ID)
            key = base64.b64encode(credential.primary_key).decode()
            client = IoTHubModuleClient.create_from_connection_string(
                f"HostName={self.config.hub_hostname};DeviceId={self.config.device_id};"
                f"ModuleId={AGENT_MODULE_ID};SharedAccessKey={key};"
                f"GatewayHostName={self.config.gateway_hostname}",
                server_verification_cert=self.config.ca_path.read_text(),
            )
            client.on_twin_desired_properties_patch_received = self._on_patch
            client.on_connection_state_change = self._on_connection_state_change
            await asyncio.wait_for(client.connect(), timeout=30)
        except Exception as exc:  # any failure: stay offline, retry later
            log.warning("cannot connect to the hub as %s yet: %s", AGENT_MODULE_ID, _describe(exc))
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.shutdown(), timeout=10)
            self._connected = False
            return
        self._client = client
        self._connected = True
        self._disconnected_since = None
        self._twin_dirty = True
        self._reported_synced = False
        log.info("connected to the hub at %s as %s/%s", self.config.gateway_hostname,
                 self.config.device_id, AGENT_MODULE_ID)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown(), timeout=10)

    async def _read_deployment(self) -> None:
        assert self._client is not None
        try:
            twin = await asyncio.wait_for(self._client.get_twin(), timeout=30)
        except Exception as exc:  # offline: keep the current deployment
            log.warning("cannot read the $edgeAgent twin: %s", _describe(exc))
            return
        self._twin_dirty = False
        self._twin_read_at = time.monotonic()
        if not self._reported_synced:
            self._reported = dict(twin.get("reported") or {})
            self._reported.pop("$version", None)
            self._reported_synced = True
        self._apply_desired(twin.get("desired") or {}, persist=True)

    def _apply_desired(self, desired: Mapping[str, Any], *, persist: bool) -> None:
        version = desired_version_of(desired)
        if version is not None and version == self.last_desired_version:
            return  # the same document gives the same result (a resync, or the backup's version)
        self.last_desired_version = version
        try:
            deployment = parse_deployment(desired)
            resolved = resolve_deployment(deployment, self.config.module_map,
                                          containers=self.containers is not None)
        except DeploymentError as exc:
            # Fail closed on the new deployment, keep the previous one running (edgeAgent does).
            self.desired_status = DesiredStatus(exc.status_code, f"{exc.code}: {exc.message}")
            log.log(logging.INFO if exc.status_code == 417 else logging.ERROR, "deployment %s not applied: %s",
                    version, exc)
            return
        self.resolved = resolved
        self.desired_status = DesiredStatus(200, "")
        log.info("deployment %s accepted: %s", version, ", ".join(sorted(resolved)) or "(no modules)")
        if persist:
            self._save_backup(desired, deployment)

    # -- module actions ---------------------------------------------------------------------------

    async def _start(self, resolved: ResolvedModule, action: StartModule) -> None:
        spec = resolved.spec
        record = self.records.get(spec.module_id)
        if record is None:
            record = self.records[spec.module_id] = ModuleRecord(spec=spec)
        if action.reason == "restart":
            record.restart_count += 1
            record.last_restart = dt.datetime.now(dt.UTC)
        else:
            record.restart_count = 0
        record.spec = spec
        try:
            owner = None
            if self.containers is not None:  # the container's uid gets its workload socket
                user = await asyncio.to_thread(self.containers.container_user, spec.image,
                                               spec.create_options.get("User"))
                owner = numeric_user(user)
            credential = await self.identities.ensure_module(spec.module_id)
            self.signer.set_credential(credential)
            workload_uri = await self.workload.add_module(spec.module_id, owner)
        except (EdbError, OSError) as exc:
            record.running = False
            record.exit_code = None
            record.stop_reason = None
            record.exited_at = time.monotonic()
            record.last_exit = dt.datetime.now(dt.UTC)
            record.description = f"cannot start: {_describe(exc)}"
            log.error("module %s cannot start: %s", spec.module_id, _describe(exc))
            return
        identity = EdgeModuleIdentity(
            hub_hostname=self.config.hub_hostname, device_id=self.config.device_id,
            module_id=spec.module_id, gateway_hostname=self.config.gateway_hostname,
            generation_id=credential.generation_id, workload_uri=workload_uri,
        )
        if self.containers is not None:
            await self._start_container(record, identity)
            return
        env = module_environment(
            agent_env=os.environ, host_defaults=self.config.host_defaults, options=resolved.options,
            manifest_env=spec.env_dict, identity=identity, volume_root=str(self.config.volume_root),
        )
        for mount in resolved.options.mounts:
            if mount.is_volume:
                (self.config.volume_root / mount.host).mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [*resolved.entry.argv(self.config.python), *resolved.options.args]
        await self.runner.start(record, argv, env, resolved.options.health_check)

    async def _start_container(self, record: ModuleRecord, identity: EdgeModuleIdentity) -> None:
        assert self.containers is not None
        spec = record.spec
        try:
            request = container_request(
                module_id=spec.module_id, image=spec.image, fingerprint=spec.fingerprint,
                create_options=spec.create_options, manifest_env=spec.env_dict,
                host_defaults=self.config.host_defaults, identity=identity, stack=self.config.stack,
                workload_socket=self.workload.socket_path(spec.module_id), ca_file=self.config.ca_path)
        except DeploymentError as exc:  # this module's options only: the others still run
            record.running, record.exit_code, record.stop_reason = False, None, None
            record.exited_at = time.monotonic()
            record.last_exit = dt.datetime.now(dt.UTC)
            record.description = f"cannot start: {exc.code}: {exc.message}"
            log.error("module %s cannot start: %s", spec.module_id, exc)
            return
        await self.containers.start(record, request)

    async def _stop(self, record: ModuleRecord, reason: StopReason) -> None:
        if self.containers is not None:
            await self.containers.stop(record, reason)
        else:
            await self.runner.stop(record, reason)

    async def _forget(self, module_id: str) -> None:
        record = self.records.get(module_id)
        if record is not None and self.containers is not None:
            await self.containers.remove(record)
        self.records.pop(module_id, None)
        self.signer.remove(module_id)
        await self.workload.remove_module(module_id)
        try:
            await self.identities.delete_module(module_id)
        except EdbError as exc:
            log.warning("identity of removed module %s not deleted: %s", module_id, exc)

    # -- reporting --------------------------------------------------------------------------------

    def current_reported(self) -> dict[str, Any]:
        now = time.monotonic()
        modules: dict[str, ModuleReport] = {}
        for module_id, resolved in self.resolved.items():
            if resolved.host_provided:
                modules[module_id] = self._host_service_report(resolved.spec, resolved.entry.target)
                continue
            record = self.records.get(module_id)
            status = runtime_status(resolved.spec, record.observation() if record else None, now,
                                    self.config.backoff)
            modules[module_id] = record.report(status, resolved.spec) if record else ModuleReport(
                status, resolved.spec.status, resolved.spec.version, resolved.spec.restart_policy,
                resolved.spec.image)
        for module_id, record in self.records.items():  # still stopping after a removal
            if module_id not in modules:
                modules[module_id] = record.report("stopped", None)
        return agent_reported(
            desired_status=self.desired_status, last_desired_version=self.last_desired_version,
            modules=modules, agent_started=self.started, agent_version=__version__,
            hub_connected=self._connected, runtime_type=self.config.runtime,
        )

    def _host_service_report(self, spec: ModuleSpec, service: str) -> ModuleReport:
        path = self.config.host_services.get(service)
        healthy = path is not None and _unix_socket_accepts(path)
        description = (f"host-provided service {service!r}: "
                       + ("reachable" if healthy else f"not reachable at {path}" if path else "not configured"))
        return ModuleReport("running" if healthy else "failed", spec.status, spec.version, spec.restart_policy,
                            spec.image, status_description=description)

    async def _report(self) -> None:
        if not self._connected or self._client is None or not self._reported_synced:
            return
        current = self.current_reported()
        patch = reported_patch(self._reported, current)
        if not patch:
            return
        try:
            await asyncio.wait_for(self._client.patch_twin_reported_properties(patch), timeout=30)
        except Exception as exc:  # retried on the next pass
            log.warning("cannot report $edgeAgent properties: %s", _describe(exc))
            self._wake_later()
            return
        self._reported = apply_patch(self._reported, patch)

    def _write_health(self) -> None:
        """``agent/health.json``: what ``edb local status`` shows (no secrets: statuses only)."""
        reported = self.current_reported()
        doc = {
            "pid": os.getpid(),
            "connected": self._connected,
            "updatedAt": time.time(),
            "lastDesiredVersion": self.last_desired_version,
            "lastDesiredStatus": reported["lastDesiredStatus"],
            "modules": {m: r["runtimeStatus"] for m, r in reported["modules"].items()},
        }
        path = self.config.health_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    def _wake_later(self) -> None:
        if self._loop is not None:
            self._loop.call_later(2.0, self._wake.set)

    # -- persistence and cleanup ----------------------------------------------------------------

    def _save_backup(self, desired: Mapping[str, Any], deployment: Deployment) -> None:
        # Only what the agent needs; registry credentials in `runtime` are never written.
        doc = {"schemaVersion": deployment.schema_version, "modules": desired.get("modules") or {},
               "$version": deployment.desired_version}
        path = self.config.deployment_backup
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        tmp.replace(path)

    def _load_backup(self) -> None:
        path = self.config.deployment_backup
        if not path.exists():
            return
        try:
            desired = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable deployment backup %s: %s", path, exc)
            return
        self._apply_desired(desired, persist=False)

    def _sweep_orphans(self) -> None:
        """Module processes of a previous agent that died without stopping them: a process cannot
        be adopted (only its parent can wait for it), so stop them and start afresh. Containers of
        this stack left by a previous agent are removed alike (their workload sockets are gone)."""
        if self.containers is not None:
            try:
                swept = self.containers.sweep()
                if swept:
                    log.warning("removed %d container(s) of a previous agent", swept)
            except Exception as exc:  # an engine that is not there yet: the starts will say so
                log.warning("cannot sweep old containers: %s", _describe(exc))
        for pid_file in sorted(self.config.run_dir.glob("module.*.pid")):
            record = read_pid_file(pid_file)
            if record is not None and is_alive(record):
                log.warning("stopping orphaned module process %d (%s)", record.pid, pid_file.name)
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(record.pid, sig)
                    deadline = time.monotonic() + self.config.stop_timeout_s
                    while is_alive(record) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if not is_alive(record):
                        break
            remove_pid_file(pid_file)

    async def _shutdown(self) -> None:
        ordered = sorted(self.records.values(), key=lambda r: (r.spec.startup_order, r.spec.module_id),
                         reverse=True)
        for record in ordered:
            if record.running:
                await self._stop(record, "stopped")
            if self.containers is not None:  # `edb local down` leaves no container behind
                await self.containers.remove(record)
        if self._connected:
            await self._report()
        await self._drop_client()
        await self.workload.close()
        if self.containers is not None:
            self.containers.close()


def _unix_socket_accepts(path: Path) -> bool:
    return unix_socket_accepts(path).ok


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EdbError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

