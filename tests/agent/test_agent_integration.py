"""The edge agent against the hub stand-in, with real SDK clients on both sides."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from agent_harness import FIXTURE_SCRIPT, EdgeDevice, eventually, module

from edb_local.supervisor.pidfile import process_start_time


def alive(pid: int) -> bool:
    return process_start_time(pid) is not None


async def test_module_connects_through_the_workload_api_and_round_trips_its_twin(edge: EdgeDevice) -> None:
    await edge.deploy({"twinmod": module("twin")})

    async def agent_running() -> dict[str, Any] | None:
        rep = await edge.reported()
        mod = rep.get("modules", {}).get("twinmod", {})
        return rep if mod.get("runtimeStatus") == "running" and rep["lastDesiredStatus"]["code"] == 200 else None

    rep = await eventually(agent_running)
    assert rep["lastDesiredVersion"] >= 1 and rep["schemaVersion"] == "1.1"
    assert rep["modules"]["twinmod"]["settings"]["image"] == "localhost:5000/fixture:0.1.0-amd64"
    assert rep["modules"]["twinmod"]["lastStartTimeUtc"].endswith("Z")

    await edge.set_desired("twinmod", {"greeting": "hello"})

    async def greeted() -> dict[str, Any] | None:
        fixture = (await edge.reported("twinmod")).get("fixture") or {}
        return fixture if fixture.get("greeting") == "hello" else None

    fixture = await eventually(greeted)
    # The production path's variables, all of them; and no key in the environment.
    assert fixture["iotedgeEnv"].split(",") == sorted([
        "IOTEDGE_APIVERSION", "IOTEDGE_AUTHSCHEME", "IOTEDGE_DEVICEID", "IOTEDGE_GATEWAYHOSTNAME",
        "IOTEDGE_IOTHUBHOSTNAME", "IOTEDGE_MODULEGENERATIONID", "IOTEDGE_MODULEID", "IOTEDGE_WORKLOADURI"])
    environ = Path(f"/proc/{fixture['pid']}/environ").read_bytes().split(b"\0")
    assert not any(b"SharedAccessKey" in e or b"EdgeHubConnectionString" in e for e in environ)
    await edge.set_desired("twinmod", {"greeting": "again"})
    await eventually(lambda: _greeting_is(edge, "again"))


async def _greeting_is(edge: EdgeDevice, value: str) -> bool:
    return ((await edge.reported("twinmod")).get("fixture") or {}).get("greeting") == value


async def test_restart_policies_and_backoff(edge: EdgeDevice, tmp_path: Any) -> None:
    health_file = tmp_path / "healthy"
    unhealthy_opts = {"Healthcheck": {"Test": ["CMD", "test", "-f", str(health_file)],
                                      "Interval": 200_000_000, "Timeout": 2_000_000_000, "Retries": 1}}
    await edge.deploy({
        "crash-never": module("exit", policy="never", env={"FIXTURE_EXIT_CODE": "3"}),
        "crash-onfailure": module("exit", policy="on-failure", env={"FIXTURE_EXIT_CODE": "3"}),
        "clean-onfailure": module("exit", policy="on-failure", env={"FIXTURE_EXIT_CODE": "0"}),
        "clean-always": module("exit", policy="always", env={"FIXTURE_EXIT_CODE": "0"}),
        "sick-onunhealthy": module("sleep", policy="on-unhealthy", create_options=unhealthy_opts),
        "sick-onfailure": module("sleep", policy="on-failure", create_options=unhealthy_opts),
    })
    # Restarting modules come back again and again (with backoff in between)...
    await eventually(lambda: len(edge.starts_of("crash-onfailure")) >= 3
                     and len(edge.starts_of("clean-always")) >= 3
                     and len(edge.starts_of("sick-onunhealthy")) >= 2)
    # ...while by then the others have run exactly once.
    assert len(edge.starts_of("crash-never")) == 1
    assert len(edge.starts_of("clean-onfailure")) == 1
    assert len(edge.starts_of("sick-onfailure")) == 1

    async def statuses() -> dict[str, Any] | None:
        mods = (await edge.reported())["modules"]
        ok = (mods["crash-never"]["runtimeStatus"] == "failed" and mods["crash-never"].get("exitCode") == 3
              and mods["clean-onfailure"]["runtimeStatus"] == "stopped"
              and mods["clean-onfailure"].get("exitCode") == 0
              and mods["sick-onfailure"]["runtimeStatus"] == "unhealthy"
              and mods["crash-onfailure"]["restartCount"] >= 2)
        return mods if ok else None

    mods = await eventually(statuses)
    assert mods["crash-onfailure"]["runtimeStatus"] in ("backoff", "running", "failed")
    assert mods["crash-onfailure"]["lastRestartTimeUtc"] != "0001-01-01T00:00:00Z"
    # A healthy check again: the on-unhealthy module stays up from then on.
    health_file.write_text("ok")
    await eventually(lambda: _runtime_status_is(edge, "sick-onunhealthy", "running"))
    await eventually(lambda: _runtime_status_is(edge, "sick-onfailure", "running"))


async def _runtime_status_is(edge: EdgeDevice, module_id: str, status: str) -> bool:
    mods = (await edge.reported()).get("modules", {})
    return mods.get(module_id, {}).get("runtimeStatus") == status


async def test_startup_order_changes_removal_status_and_invalid_deployments(edge: EdgeDevice) -> None:
    await edge.deploy({
        "third": module("sleep", order=2), "first": module("sleep", order=0),
        "second": module("sleep", order=1, env={"FIXTURE_TAG": "v1"}), "keeper": module("sleep", order=3),
        "goner": module("sleep", order=3), "pausable": module("sleep", order=3),
    })
    names = ("first", "second", "third", "keeper", "goner", "pausable")

    async def all_running() -> dict[str, Any] | None:
        mods = (await edge.reported()).get("modules", {})
        return mods if all(mods.get(n, {}).get("runtimeStatus") == "running" for n in names) else None

    mods = await eventually(all_running)
    # startupOrder: each started after the one before it (the agent starts them one by one).
    starts = [mods[n]["lastStartTimeUtc"] for n in ("first", "second", "third", "keeper")]
    assert starts == sorted(starts) and len(set(starts)) == 4
    await eventually(lambda: {s[0] for s in edge.starts()} >= set(names))  # each has written its start line
    pids = {s[0]: int(s[1]) for s in edge.starts()}

    # Change one module's env, remove one, stop one: the change restarts only that module.
    await edge.deploy({
        "third": module("sleep", order=2), "first": module("sleep", order=0),
        "second": module("sleep", order=1, env={"FIXTURE_TAG": "v2"}), "keeper": module("sleep", order=3),
        "pausable": module("sleep", order=3, status="stopped"),
    })

    async def converged() -> dict[str, Any] | None:
        mods = (await edge.reported()).get("modules", {})
        ok = ("goner" not in mods and mods.get("pausable", {}).get("runtimeStatus") == "stopped"
              and any(s[0] == "second" and s[2] == "v2" for s in edge.starts()))
        return mods if ok else None

    await eventually(converged)
    await eventually(lambda: not alive(pids["goner"]) and not alive(pids["pausable"]) and not alive(pids["second"]))
    assert alive(pids["first"]) and alive(pids["third"]) and alive(pids["keeper"])
    assert [s[2] for s in edge.starts_of("second")] == ["v1", "v2"]
    assert len(edge.starts_of("keeper")) == 1
    # The removed module's identity is gone from the hub; its socket too.
    from msrest.exceptions import HttpOperationError

    try:
        edge.registry.get_module("agent-test-device", "goner")
        raise AssertionError("identity of a removed module still exists")
    except HttpOperationError as exc:
        assert exc.response.status_code == 404
    assert not edge.agent.workload.socket_path("goner").exists()

    # An invalid deployment is refused with its status; what runs keeps running.
    await edge.deploy({"first": module("sleep", order=0),
                       "bad": {"version": "1", "status": "running", "restartPolicy": "always",
                               "settings": {"image": "mcr.microsoft.com/unknown-image:1"}}})

    async def refused() -> dict[str, Any] | None:
        rep = await edge.reported()
        return rep if rep["lastDesiredStatus"]["code"] == 400 else None

    rep = await refused_or_fail(refused)
    assert "LOCAL_AGENT_IMAGE_NOT_MAPPED" in rep["lastDesiredStatus"]["description"]
    assert alive(pids["third"]) and alive(pids["keeper"])
    assert rep["modules"]["third"]["runtimeStatus"] == "running"


async def refused_or_fail(probe: Any) -> dict[str, Any]:
    result: dict[str, Any] = await eventually(probe)
    return result


def test_fixture_script_is_where_the_map_points() -> None:
    assert os.path.isfile(FIXTURE_SCRIPT)


async def test_hub_restart_keeps_modules_running_and_the_agent_recovers(edge: EdgeDevice) -> None:
    await edge.deploy({"steady": module("sleep")})
    await eventually(lambda: _runtime_status_is(edge, "steady", "running"))
    await eventually(lambda: edge.starts_of("steady"))
    pid = int(edge.starts_of("steady")[0][1])

    await asyncio.to_thread(edge.hub.stop)
    await eventually(lambda: not edge.agent._connected, timeout=30)
    assert alive(pid)  # the device keeps running its modules while the hub is away
    await asyncio.to_thread(edge.hub.start)

    # A deployment made after the restart reaches the agent: it reconnected and gets patches again.
    await edge.deploy({"steady": module("sleep"), "newcomer": module("sleep")})
    await eventually(lambda: _runtime_status_is(edge, "newcomer", "running"), timeout=60)
    assert alive(pid) and len(edge.starts_of("steady")) == 1


async def test_agent_restarted_while_the_hub_is_down_runs_the_last_deployment(edge: EdgeDevice) -> None:
    await edge.deploy({"durable": module("sleep", env={"FIXTURE_TAG": "first-run"})})
    await eventually(lambda: edge.starts_of("durable"))
    first_pid = int(edge.starts_of("durable")[0][1])
    await edge.stop_agent()
    assert not alive(first_pid)  # the agent stops its modules when it stops
    backup = edge.agent.config.deployment_backup
    assert backup.stat().st_mode & 0o777 == 0o600 and "runtime" not in backup.read_text()

    await asyncio.to_thread(edge.hub.stop)
    edge.start_agent()  # offline: only the backup tells it what to run
    await eventually(lambda: len(edge.starts_of("durable")) == 2)
    assert not edge.agent._connected
    assert edge.agent.current_reported()["modules"]["durable"]["runtimeStatus"] == "running"

    await asyncio.to_thread(edge.hub.start)
    await eventually(lambda: _runtime_status_is(edge, "durable", "running"), timeout=60)
    assert len(edge.starts_of("durable")) == 2  # reconnecting to the same deployment restarts nothing
