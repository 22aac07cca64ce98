"""The edge agent's Docker runtime against the hub stand-in and the machine's Docker Engine: modules
as containers of this tree's images, reaching the hub exactly as on a device, and every bad input
the issue names reported in `$edgeAgent` while the rest of the deployment runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_harness import eventually
from docker_edge import EngineRelay, cmodule, docker_edge

from edb_local.agent.containers import LABEL_STACK
from edb_local.agent.docker_runner import remove_stack_volumes
from edb_local.stack_ca import StackCA

# The first test may build the images on a cold machine (base image, wheelhouse, five modules).
pytestmark = pytest.mark.timeout(1800)


def _modules(reported: dict[str, Any]) -> dict[str, Any]:
    return reported.get("modules") or {}


def _remove_stack(client: Any, stack: str) -> None:
    """A failed test leaves nothing behind either."""
    from edb_local.agent.docker_runner import remove_stack_containers

    remove_stack_containers(client.api, stack)
    remove_stack_volumes(client.api, stack)


@pytest.fixture
def stacks(docker_client: Any) -> Iterator[list[str]]:
    """Stacks a test made: whatever the outcome, their containers and volumes go afterwards."""
    made: list[str] = []
    yield made
    for stack in made:
        _remove_stack(docker_client, stack)


def _stack_objects(client: Any, stack: str) -> tuple[list[Any], list[Any]]:
    containers = client.api.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"})
    volumes = client.api.volumes(filters={"label": f"{LABEL_STACK}={stack}"}).get("Volumes") or []
    return containers, volumes


async def test_a_module_container_reaches_the_hub_through_the_gateway_and_workload_api(
        tmp_path: Path, stack_ca: StackCA, loopback_address: str, docker_client: Any,
        module_images: dict[str, str], monkeypatch: pytest.MonkeyPatch, stacks: list[str]) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    image = module_images["telemetry_reporter"]
    async with docker_edge(tmp_path, stack_ca, loopback_address) as (edge, log_dir, stack):
        stacks.append(stack)
        await edge.deploy({"twin": cmodule(image, "twin", log_dir=log_dir,
                                           host={"Binds": [f"{Path(__file__).parents[1] / 'agent' / 'fixtures'}"
                                                           ":/fixture:ro", f"{log_dir}:/fixture-log",
                                                           "edb-scratch:/scratch"]})})

        async def running() -> bool:
            return (_modules(await edge.reported()).get("twin") or {}).get("runtimeStatus") == "running"

        await eventually(running, timeout=60)  # its identity exists once the agent started it
        await edge.set_desired("twin", {"greeting": "from the cloud"})

        async def greeted() -> Any:
            fixture = (await edge.reported("twin")).get("fixture") or {}
            return fixture if fixture.get("greeting") == "from the cloud" else None

        fixture = await eventually(greeted, timeout=60)
        assert "IOTEDGE_WORKLOADURI" in fixture["iotedgeEnv"]
        reported = await edge.reported()
        twin = _modules(reported)["twin"]
        assert reported["runtime"]["type"] == "docker"
        assert twin["runtimeStatus"] == "running" and twin["lastStartTimeUtc"] != "0001-01-01T00:00:00Z"
        (container,), (volume,) = _stack_objects(docker_client, stack)
        details = docker_client.api.inspect_container(container["Id"])
        assert details["HostConfig"]["ReadonlyRootfs"] is True and details["HostConfig"]["CapDrop"] == ["ALL"]
        assert details["HostConfig"]["NetworkMode"] == "host" and details["Config"]["User"].startswith("10005")
        assert volume["Name"] == f"edb-{stack}-edb-scratch"
    # the agent's shutdown removed its containers; the declared volume is kept
    assert _stack_objects(docker_client, stack)[0] == []
    assert remove_stack_volumes(docker_client.api, stack) == 1
    assert _stack_objects(docker_client, stack) == ([], [])


async def test_bad_inputs_are_reported_and_the_rest_of_the_deployment_runs(
        tmp_path: Path, stack_ca: StackCA, loopback_address: str, docker_client: Any,
        module_images: dict[str, str], monkeypatch: pytest.MonkeyPatch, stacks: list[str]) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    image = module_images["telemetry_reporter"]
    async with docker_edge(tmp_path, stack_ca, loopback_address) as (edge, log_dir, stack):
        stacks.append(stack)
        await edge.deploy({
            "good": cmodule(image, "sleep", log_dir=log_dir),
            "missing": cmodule("localhost:5000/no_such_module:0.0.0-amd64", log_dir=log_dir),
            "refused": cmodule(image, log_dir=log_dir, host={"CapAdd": ["CAP_NOT_A_CAPABILITY"]}),
            "crashing": cmodule(image, "exit", env={"FIXTURE_EXIT_CODE": "3"}, log_dir=log_dir),
            "writer": cmodule(image, policy="never", log_dir=log_dir, cmd=[
                "python", "-c", "open('/app/written-at-run-time', 'w')"]),
        })

        async def settled() -> Any:
            modules = _modules(await edge.reported())
            crashing = modules.get("crashing") or {}
            return modules if crashing.get("restartCount", 0) >= 2 and crashing.get("exitCode") == 3 and (
                modules.get("writer") or {}).get(
                "exitCode") is not None and (modules.get("good") or {}).get("runtimeStatus") == "running" else None

        modules = await eventually(settled, timeout=90)
        assert modules["good"]["runtimeStatus"] == "running"
        assert modules["missing"]["runtimeStatus"] in ("backoff", "failed")
        assert "image not found locally" in modules["missing"]["statusDescription"]
        assert "no_such_module" in modules["missing"]["statusDescription"]
        assert modules["refused"]["runtimeStatus"] in ("backoff", "failed")
        assert "Docker refused the container" in modules["refused"]["statusDescription"]
        assert "CAP_NOT_A_CAPABILITY" in modules["refused"]["statusDescription"]  # Docker's own message
        assert modules["crashing"]["runtimeStatus"] == "backoff"  # reported between restarts, exit code 3
        assert modules["writer"]["runtimeStatus"] == "failed" and modules["writer"]["exitCode"] == 1
        writer_log = (tmp_path / "state" / "logs" / "modules" / "writer.log").read_text()
        assert "Read-only file system" in writer_log  # visible, not silent
        starts = [line.split()[0] for line in (log_dir / "starts.log").read_text().splitlines()]
        assert starts.count("crashing") >= 3 and starts.count("good") == 1  # backoff restarts, good untouched
    assert _stack_objects(docker_client, stack)[0] == []


async def test_an_unreachable_engine_is_reported_and_the_agent_recovers(
        tmp_path: Path, stack_ca: StackCA, loopback_address: str, docker_client: Any,
        module_images: dict[str, str], monkeypatch: pytest.MonkeyPatch, stacks: list[str]) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    relay = EngineRelay(tmp_path / "engine.sock")
    await relay.restore()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{relay.path}")
    image = module_images["telemetry_reporter"]
    try:
        async with docker_edge(tmp_path, stack_ca, loopback_address) as (edge, log_dir, stack):
            stacks.append(stack)
            await edge.deploy({"worker": cmodule(image, "sleep", log_dir=log_dir)})

            async def status(wanted: str, text: str = "") -> Any:
                worker = _modules(await edge.reported()).get("worker") or {}
                return worker if worker.get("runtimeStatus") == wanted and text in worker.get(
                    "statusDescription", "") else None

            await eventually(lambda: status("running"), timeout=60)
            await relay.cut()  # the engine goes away under the agent
            down = await eventually(lambda: status("backoff", "Docker Engine unreachable"), timeout=60)
            assert down["restartCount"] >= 0
            await relay.restore()
            back = await eventually(lambda: status("running"), timeout=60)
            assert back["restartCount"] >= 1
            # the same container again (restarted, not a second one)
            assert len(_stack_objects(docker_client, stack)[0]) == 1
    finally:
        await relay.cut()
    assert _stack_objects(docker_client, stack)[0] == []


def _with_healthcheck(module: dict[str, Any], test: list[str]) -> dict[str, Any]:
    """Docker's Healthcheck in createOptions (durations in nanoseconds, as the Engine API has them)."""
    options = json.loads(module["settings"]["createOptions"])
    options["Healthcheck"] = {"Test": test, "Interval": 300_000_000, "Timeout": 5_000_000_000, "Retries": 1}
    module["settings"]["createOptions"] = json.dumps(options)
    return module


async def test_dockers_health_verdict_is_the_modules_and_on_unhealthy_restarts(
        tmp_path: Path, stack_ca: StackCA, loopback_address: str, docker_client: Any,
        module_images: dict[str, str], monkeypatch: pytest.MonkeyPatch, stacks: list[str]) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    image = module_images["telemetry_reporter"]
    probe = "import os, sys; print('probe: no flag'); sys.exit(0 if os.path.exists('/fixture-log/healthy') else 4)"
    async with docker_edge(tmp_path, stack_ca, loopback_address) as (edge, log_dir, stack):
        stacks.append(stack)
        await edge.deploy({
            "probed": _with_healthcheck(cmodule(image, "sleep", policy="on-failure", log_dir=log_dir),
                                        ["CMD", "python", "-c", probe]),
            "sick": _with_healthcheck(cmodule(image, "sleep", policy="on-unhealthy", log_dir=log_dir),
                                      ["CMD", "python", "-c", "raise SystemExit(1)"]),
        })

        async def status(module_id: str, wanted: str, text: str = "") -> Any:
            module = _modules(await edge.reported()).get(module_id) or {}
            return module if module.get("runtimeStatus") == wanted and text in module.get(
                "statusDescription", "") else None

        unhealthy = await eventually(lambda: status("probed", "unhealthy", "health check failed"), timeout=60)
        assert "exit code 4" in unhealthy["statusDescription"] and "probe: no flag" in unhealthy["statusDescription"]
        (log_dir / "healthy").write_text("ok")
        await eventually(lambda: status("probed", "running", "healthy"), timeout=60)

        async def sick_restarted() -> Any:
            sick = _modules(await edge.reported()).get("sick") or {}
            return sick if sick.get("restartCount", 0) >= 1 else None

        await eventually(sick_restarted, timeout=90)
        starts = [line.split()[0] for line in (log_dir / "starts.log").read_text().splitlines()]
        assert starts.count("sick") >= 2 and starts.count("probed") == 1  # on-failure: unhealthy is not restarted
    assert _stack_objects(docker_client, stack)[0] == []
