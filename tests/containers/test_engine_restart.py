"""dockerd stopped mid-run, for real: the agent runs a module in a private Docker Engine
(private_engine.py), that dockerd is stopped (SIGTERM to its pid: it stops its containers, live restore
being off) and started again on the same data root. The agent reports the module down with the
engine named as the cause, keeps running and reporting, and starts the module again when the engine
answers: the same container (now ``exited`` in the engine), restarted, not a second one.

test_docker_runtime.py's relay test only cuts the agent's connection: there the containers keep
running. Here they really stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from agent_harness import eventually
from docker_edge import cmodule, docker_edge
from private_engine import PrivateEngine, private_engine  # noqa: F401 - the fixture

from edb_local.agent.containers import LABEL_STACK
from edb_local.agent.docker_runner import remove_stack_containers, remove_stack_volumes
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(600)


def _stack_objects(client: docker.DockerClient, stack: str) -> tuple[list[Any], list[Any]]:
    containers = client.api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"})
    volumes = client.api.volumes(filters={"label": f"{LABEL_STACK}={stack}"}).get("Volumes") or []
    return containers, volumes


def _docker_time(text: str) -> dt.datetime:
    """Docker's RFC 3339 timestamps carry nanoseconds; microseconds are enough to compare."""
    head, _, rest = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


async def test_dockerd_stopped_mid_run_is_reported_and_the_agent_recovers_when_it_is_back(
        tmp_path: Path, stack_ca: StackCA, loopback_address: str, docker_client: Any,
        module_images: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        private_engine: PrivateEngine) -> None:  # noqa: F811
    engine = private_engine
    image = module_images["telemetry_reporter"]
    seconds = await asyncio.to_thread(engine.copy_image_from, docker_client, image)
    print(f"{image} copied into the private engine in {seconds:.1f} s")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    client = engine.client()
    stack = ""
    try:
        async with docker_edge(tmp_path, stack_ca, loopback_address) as (edge, log_dir, stack):
            await edge.deploy({"worker": cmodule(image, "sleep", log_dir=log_dir)})

            seen: list[tuple[str, str, int]] = []  # each (status, description, restarts) polled, in order

            async def worker() -> dict[str, Any]:
                report = dict((await edge.reported()).get("modules", {}).get("worker") or {})
                state = (report.get("runtimeStatus", ""), report.get("statusDescription", ""),
                         report.get("restartCount", 0))
                if not seen or seen[-1] != state:
                    seen.append(state)
                return report

            async def status(wanted: str, text: str = "", *, more_restarts_than: int = -1) -> Any:
                report = await worker()
                return report if report.get("runtimeStatus") == wanted and text in report.get(
                    "statusDescription", "") and report.get("restartCount", 0) > more_restarts_than else None

            up = await eventually(lambda: status("running"), timeout=60)
            assert up["restartCount"] == 0
            (container,) = (await asyncio.to_thread(_stack_objects, client, stack))[0]
            first = await asyncio.to_thread(client.api.inspect_container, container["Id"])
            assert first["State"]["Status"] == "running" and first["HostConfig"]["RestartPolicy"]["Name"] == "no"

            # its process runs (and handles SIGTERM: else dockerd waits 10 s before it kills it)
            await eventually(lambda: edge.starts_of("worker"), timeout=30)

            # dockerd really stops: SIGTERM to its pid, and it is gone before we go on
            client.close()
            before_stop = len(seen)
            stopped_at = time.monotonic()
            assert await asyncio.to_thread(engine.stop) == 0
            print(f"dockerd stopped in {time.monotonic() - stopped_at:.1f} s")
            assert not engine.running and not engine.socket.exists()

            down = await eventually(lambda: status("backoff", "Docker Engine unreachable"), timeout=60)
            print(f"reported down {time.monotonic() - stopped_at:.1f} s after the stop: {down['statusDescription']}")
            assert down["statusDescription"].startswith("cannot start: Docker Engine unreachable")
            assert down["restartCount"] >= 1  # the policy's restarts were tried and failed, with backoff
            # The agent keeps going while the engine is away: its loop runs, it stays connected to the
            # hub, and it keeps retrying and reporting each failed start.
            still = await eventually(lambda: status("backoff", "Docker Engine unreachable",
                                                    more_restarts_than=down["restartCount"]), timeout=30)
            assert edge._task is not None and not edge._task.done() and edge.agent._connected
            health = edge.agent.config.health_file
            health_before = health.stat().st_mtime
            await eventually(lambda: health.stat().st_mtime > health_before, timeout=15)

            # the same dockerd again, same data root: the stopped container is there, exited
            await asyncio.to_thread(engine.start)
            client = engine.client()
            back = await eventually(lambda: status("running", more_restarts_than=still["restartCount"]), timeout=60)
            assert back["statusDescription"] == "running" and back.get("exitCode") is None
            (again,) = (await asyncio.to_thread(_stack_objects, client, stack))[0]
            assert again["Id"] == container["Id"]  # the same spec: the same container restarted, not replaced
            restarted = await asyncio.to_thread(client.api.inspect_container, again["Id"])
            assert restarted["State"]["Status"] == "running"
            assert _docker_time(restarted["State"]["StartedAt"]) > _docker_time(first["State"]["StartedAt"])
            assert _docker_time(restarted["State"]["FinishedAt"]) > _docker_time(first["State"]["StartedAt"])
            print("reported:", *seen, sep="\n  ")
            # Every report seen from the stop until it ran again named the engine (or, at first, the exit
            # of the container the engine stopped): a restart that reached the stopping dockerd on a
            # connection it still served got a server error about its own state, which is the engine
            # going away, not a refusal of the container (docker_runner.describe_docker_error).
            outage = list(itertools.takewhile(lambda s: s[0] != "running", seen[before_stop:]))
            assert outage, seen
            for state, description, _ in outage:
                assert state == "backoff" and (description.startswith("cannot start: Docker Engine unreachable")
                                               or description.startswith("exited with code")), seen
            # its process ran again (it logs its start once it runs), and only once more
            await eventually(lambda: len(edge.starts_of("worker")) >= 2, timeout=30)
            await asyncio.sleep(1)
            assert [s[0] for s in edge.starts()] == ["worker", "worker"]
        # the agent's shutdown removed its container; no volume was declared
        assert await asyncio.to_thread(_stack_objects, client, stack) == ([], [])
    finally:
        if stack and engine.running:  # a failed test leaves nothing behind either
            remove_stack_containers(client.api, stack)
            remove_stack_volumes(client.api, stack)
        client.close()
