"""`edb cloud deploy` to one device waits for the device (issue 11 item 8), against the hub stand-in and
the real edge agent: applied (200) succeeds, a deployment the agent refuses fails with the agent's code
and description, silence is a timeout, and the next rollout says why the installer is missing instead
of a bare CLOUD_NOT_FOUND."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from agent_harness import DEVICE, EdgeDevice, module

from edb_cloud.deploy import (
    DeviceVerdict,
    deploy_to_device,
    deployed_version,
    deployment_verdict,
    wait_for_deployment,
)
from edb_cloud.iothub import CloudError, HubService, ModuleTwin
from edb_cloud.releases import Release
from edb_cloud.rollout import missing_module_error, rollout_to_device
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(120)


def _manifest(modules: dict[str, Any]) -> dict[str, Any]:
    return {"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}},
                                              "systemModules": {}, "modules": modules}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
                                            "storeAndForwardConfiguration": {"timeToLiveSecs": 60}}}}}


def _deploy_and_wait(hub: HubService, modules: dict[str, Any], timeout_s: float = 60.0) -> DeviceVerdict:
    deploy_to_device(hub, DEVICE, _manifest(modules), keep_packages=False)
    return wait_for_deployment(hub, DEVICE, deployed_version(hub, DEVICE), timeout_s=timeout_s, poll_s=0.2)


async def test_deploy_waits_for_the_edge_agent(edge: EdgeDevice, stack_ca: StackCA) -> None:
    hub = HubService(edge.service_cs, stack_ca.ca_path)
    verdict = await asyncio.to_thread(_deploy_and_wait, hub, {"first": module("sleep")})
    assert verdict.state == "applied" and verdict.code == 200

    bad_image = {"version": "1", "type": "docker", "status": "running", "restartPolicy": "always",
                 "settings": {"image": "mcr.microsoft.com/unknown-image:1"}}
    with pytest.raises(CloudError) as refused:
        await asyncio.to_thread(_deploy_and_wait, hub, {"first": module("sleep"), "package_installer": bad_image})
    assert refused.value.code == "CLOUD_DEPLOY_REFUSED"
    assert "400" in refused.value.message and "LOCAL_AGENT_IMAGE_NOT_MAPPED" in refused.value.message
    assert refused.value.details["device_code"] == 400

    # the next rollout names the refused deployment, not a bare 404
    release = Release("digits", "digits", "1.0.0", 1, "https://blob.example/1.cpk?sig=x", "cd" * 32, 1,
                      "digits/1.0.0/x.cpk", "2026-11-26T00:00:00Z")
    with pytest.raises(CloudError) as rollout:
        await asyncio.to_thread(rollout_to_device, hub, DEVICE, release)
    assert rollout.value.code == "CLOUD_DEPLOYMENT_NOT_APPLIED"
    assert "refused" in rollout.value.message and "400" in rollout.value.message

    # an agent that does not answer: a timeout with its own code (a fake clock: no waiting here)
    await edge.stop_agent()
    deploy_to_device(hub, DEVICE, _manifest({"first": module("sleep", version="2.0")}), keep_packages=False)
    ticks = itertools.count(0.0, 10.0)
    with pytest.raises(CloudError) as silent:
        await asyncio.to_thread(wait_for_deployment, hub, DEVICE, deployed_version(hub, DEVICE), timeout_s=30,
                                sleep=lambda s: None, clock=lambda: next(ticks))
    assert silent.value.code == "CLOUD_DEPLOY_TIMEOUT"


@pytest.mark.parametrize("reported,state,code", [
    ({}, "pending", None),
    ({"lastDesiredVersion": 3, "lastDesiredStatus": {"code": 200}}, "pending", None),   # about an older version
    ({"lastDesiredVersion": 4, "lastDesiredStatus": {"code": 200, "description": ""}}, "applied", 200),
    ({"lastDesiredVersion": 5, "lastDesiredStatus": {"code": 200}}, "applied", 200),    # a newer one was applied
    ({"lastDesiredVersion": 4, "lastDesiredStatus": {"code": 400, "description": "bad"}}, "refused", 400),
    ({"lastDesiredVersion": 4, "lastDesiredStatus": {"code": 417}}, "refused", 417),
    ({"lastDesiredVersion": 4, "lastDesiredStatus": {"code": "200"}}, "pending", None),
    ({"lastDesiredVersion": True, "lastDesiredStatus": {"code": 200}}, "pending", None),
    ({"lastDesiredVersion": 4, "lastDesiredStatus": "ok"}, "pending", None),
])
def test_deployment_verdict(reported: dict[str, Any], state: str, code: int | None) -> None:
    verdict = deployment_verdict(4, reported)
    assert (verdict.state, verdict.code) == (state, code)


def test_missing_module_error_says_why() -> None:
    assert missing_module_error("d", "package_installer", None).code == "CLOUD_NOT_FOUND"
    refused = ModuleTwin("d", "$edgeAgent", {"modules": {"package_installer": {}}},
                         {"lastDesiredVersion": 7, "lastDesiredStatus": {"code": 400, "description": "X: no"}})
    error = missing_module_error("d", "package_installer", refused)
    assert error.code == "CLOUD_DEPLOYMENT_NOT_APPLIED" and "version 7: 400 X: no" in error.message
    absent = ModuleTwin("d", "$edgeAgent", {"modules": {"other": {}}}, {"lastDesiredStatus": {"code": 200}})
    assert missing_module_error("d", "package_installer", absent).code == "CLOUD_MODULE_NOT_DEPLOYED"
    pending = ModuleTwin("d", "$edgeAgent", {"modules": {"package_installer": {}}}, {})
    assert missing_module_error("d", "package_installer", pending).code == "CLOUD_DEPLOYMENT_NOT_APPLIED"
