"""Module containers: create, start, watch, stop and remove them through the Docker Engine API.

The container counterpart of :mod:`edb_local.agent.processes` (same record, same planner): the
agent's loop decides, this runner does it with the ``docker`` SDK. Blocking SDK calls run in a
thread pool of their own (one long ``wait`` per running container, so they never starve the
loop's default executor). What Docker says when it refuses something (a missing image, a
createOptions it rejects, an engine that is not there) becomes the module's ``statusDescription``
and counts as a failed start, so the restart policy and its backoff apply and the rest of the
deployment keeps running. Container output is appended to the module's log file, as for processes.
Docker runs a container's health check; its verdict (``State.Health``) is read back and becomes the
module's ``healthy``, so the planner applies ``on-unhealthy`` exactly as in process mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from edb_local.agent.containers import LABEL_FINGERPRINT, LABEL_STACK, ContainerRequest, stack_labels
from edb_local.agent.processes import ModuleRecord
from edb_local.agent.reconcile import StopReason

log = logging.getLogger(__name__)

#: Errors that mean "the Docker Engine is not answering" rather than "Docker refused this".
ENGINE_DOWN = (requests.exceptions.ConnectionError, docker.errors.DockerException)


def describe_docker_error(exc: BaseException, *, engine_answers: bool = True) -> str:
    """Docker's own message, prefixed with what kind of refusal it is (no secrets: messages only).

    ``engine_answers=False``: the engine accepts no new connection any more. A dockerd that is
    stopping has closed its listener but still answers, with server errors about its own state
    (``failed to update store ...``), on the connections it had: that is the engine going away, not
    a refusal of the container."""
    if isinstance(exc, docker.errors.ImageNotFound):
        return f"image not found locally (never pulled; build it with `edb images build`): {exc.explanation}"
    if isinstance(exc, docker.errors.APIError):
        if exc.is_server_error() and not engine_answers:
            return f"Docker Engine unreachable (it is stopping): {exc.explanation or exc}"
        return f"Docker refused the container: {exc.explanation or exc}"
    if isinstance(exc, requests.exceptions.ConnectionError | docker.errors.DockerException):
        return f"Docker Engine unreachable: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


class ContainerRunner:
    def __init__(self, stack: str, log_dir: Path, on_change: Callable[[], None], stop_timeout_s: float = 10.0,
                 client_factory: Callable[[], docker.DockerClient] | None = None, health_poll_s: float = 1.0) -> None:
        self.stack = stack
        self.log_dir = log_dir
        self.on_change = on_change
        self.stop_timeout_s = stop_timeout_s
        self.health_poll_s = health_poll_s
        self._factory = client_factory or (lambda: docker.from_env(timeout=60))
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker")

    def _api(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client.api

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def container_user(self, image: str, create_user: str | None) -> str | None:
        """The user a container will run as: createOptions ``User``, else the image's ``USER``."""
        if create_user:
            return create_user
        try:
            return str(self._api().inspect_image(image)["Config"].get("User") or "")
        except ENGINE_DOWN:
            return None

    # -- start ------------------------------------------------------------------------------------

    async def start(self, record: ModuleRecord, request: ContainerRequest) -> None:
        module_id = record.spec.module_id
        record.mark_starting()
        try:
            container_id = await self._call(self._create_and_start, request)
        except Exception as exc:  # Docker's refusal is the module's failure, never the agent's
            answers = not (isinstance(exc, docker.errors.APIError) and exc.is_server_error()) \
                or await self._call(self._engine_answers)
            record.running = False
            record.container_id = None
            record.exited_at = time.monotonic()
            record.last_exit = dt.datetime.now(dt.UTC)
            record.description = f"cannot start: {describe_docker_error(exc, engine_answers=answers)}"
            log.error("module %s could not start: %s", module_id, record.description)
            return
        record.container_id = container_id
        record.running = True
        record.description = "running"
        log.info("module %s started (container %s, image %s)", module_id, container_id[:12], request.body["Image"])
        record.tasks = [asyncio.create_task(self._watch(record, container_id)),
                        asyncio.create_task(self._follow_logs(module_id, container_id)),
                        asyncio.create_task(self._health(record, container_id))]

    def _create_and_start(self, request: ContainerRequest) -> str:
        api = self._api()
        for volume in request.volumes:
            try:
                api.inspect_volume(volume)
            except docker.errors.NotFound:
                api.create_volume(volume, labels=stack_labels(self.stack))
        existing = self._existing(request.name)
        fingerprint = request.body["Labels"][LABEL_FINGERPRINT]
        if existing is not None and existing["Config"]["Labels"].get(LABEL_FINGERPRINT) == fingerprint:
            container_id = str(existing["Id"])  # the same spec: restart the container (edgeAgent does)
        else:
            if existing is not None:
                api.remove_container(existing["Id"], force=True)
            container_id = str(api.create_container_from_config(request.body, request.name)["Id"])
        api.start(container_id)
        return container_id

    def _engine_answers(self) -> bool:
        """Whether the engine answers on a new connection (the pooled ones may outlive its listener)."""
        client: docker.DockerClient | None = None
        try:
            client = self._factory()
            return bool(client.ping())
        except Exception:
            return False
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def _existing(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._api().inspect_container(name))
        except docker.errors.NotFound:
            return None

    # -- watch ------------------------------------------------------------------------------------

    async def _watch(self, record: ModuleRecord, container_id: str) -> None:
        description: str | None = None
        try:
            result = await self._call(self._api().wait, container_id, timeout=None)
            code = int(result.get("StatusCode", -1))
            state = (await self._call(self._api().inspect_container, container_id))["State"]
            if state.get("OOMKilled"):
                description = f"killed: out of memory (exit code {code})"
        except Exception as exc:  # the engine went away (dockerd stopped) or the container vanished
            code = -1
            description = describe_docker_error(exc)
        if record.container_id != container_id:
            return
        record.mark_exited(code, description)
        log.info("module %s exited: %s", record.spec.module_id, record.description)
        self.on_change()

    async def _health(self, record: ModuleRecord, container_id: str) -> None:
        """Docker runs the health check (createOptions ``Healthcheck`` or the image's HEALTHCHECK);
        its verdict becomes the module's, as edgeAgent reports ``unhealthy`` from the container's
        ``State.Health``. Ends at once for a container without a health check."""
        while record.container_id == container_id and record.running:
            try:
                state = (await self._call(self._api().inspect_container, container_id))["State"]
            except Exception:  # the container went away or the engine did: _watch reports it
                return
            health = state.get("Health")
            if not isinstance(health, dict):
                return
            verdict = health_verdict(health)
            if verdict != record.healthy and record.container_id == container_id and record.running:
                record.healthy = verdict
                if verdict is not None:
                    record.description = "healthy" if verdict else health_failure(health)
                    log.info("module %s is %s", record.spec.module_id, "healthy" if verdict else "unhealthy")
                self.on_change()
            await asyncio.sleep(self.health_poll_s)

    async def _follow_logs(self, module_id: str, container_id: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"{module_id}.log"

        def copy() -> None:
            with open(path, "ab") as out:
                for chunk in self._api().logs(container_id, stream=True, follow=True, stdout=True, stderr=True,
                                              since=int(time.time()) - 1):
                    out.write(chunk)
                    out.flush()

        with contextlib.suppress(Exception):  # logs are best effort; the exit is what _watch reports
            await self._call(copy)

    # -- stop -------------------------------------------------------------------------------------

    async def stop(self, record: ModuleRecord, reason: StopReason) -> None:
        record.stop_reason = reason
        record.description = f"stopped ({reason})"
        container_id = record.container_id
        if container_id is None:
            record.running = False
            return
        try:
            await self._call(self._api().stop, container_id, timeout=int(self.stop_timeout_s))
        except Exception as exc:
            log.warning("module %s: stop: %s", record.spec.module_id, describe_docker_error(exc))
        for task in record.tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=self.stop_timeout_s)
        record.running = False
        if reason != "stopped":  # a changed or removed module's container goes; a stopped one stays
            await self.remove(record)

    async def remove(self, record: ModuleRecord) -> None:
        container_id, record.container_id = record.container_id, None
        if container_id is not None:
            with contextlib.suppress(Exception):
                await self._call(self._api().remove_container, container_id, force=True)

    # -- whole-stack housekeeping -----------------------------------------------------------------

    def sweep(self) -> int:
        """Remove every container of this stack (a previous agent's, which cannot be adopted)."""
        return remove_stack_containers(self._api(), self.stack)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()


def health_verdict(health: dict[str, Any]) -> bool | None:
    """Docker's ``State.Health.Status``: healthy -> True, unhealthy -> False, starting (or else) -> None."""
    return {"healthy": True, "unhealthy": False}.get(str(health.get("Status")))


def health_failure(health: dict[str, Any]) -> str:
    """The unhealthy verdict as a status description, with the last probe's exit code and output."""
    streak = health.get("FailingStreak", 0)
    last = (health.get("Log") or [{}])[-1]
    output = " ".join(str(last.get("Output") or "").split())[:200]
    return f"health check failed {streak} times (exit code {last.get('ExitCode')}" + (f": {output})" if output else ")")


def remove_stack_containers(api: Any, stack: str) -> int:
    removed = 0
    for container in api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(container["Id"], force=True)
            removed += 1
    return removed


def remove_stack_volumes(api: Any, stack: str) -> int:
    removed = 0
    for volume in (api.volumes(filters={"label": f"{LABEL_STACK}={stack}"}) or {}).get("Volumes") or []:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_volume(volume["Name"], force=True)
            removed += 1
    return removed
