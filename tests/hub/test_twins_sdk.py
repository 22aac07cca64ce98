"""Twins with the real SDKs: azure-iot-device module clients over MQTT/TLS, azure-iot-hub service calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import Twin, TwinProperties
from hub_helpers import threadsafe_queue
from msrest.exceptions import HttpOperationError

from edb_local.hub import HubThread

pytestmark = pytest.mark.timeout(60)


async def test_twin_round_trip(registry: IoTHubRegistryManager, make_module: Callable[..., str],
                               module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-a", "installer")
    client = await module_clients("dev-a", "installer", key)
    twin = await client.get_twin()
    assert twin == {"desired": {"$version": 1}, "reported": {"$version": 1}}

    await client.patch_twin_reported_properties({"packages": {"model": {"state": "installed", "version": "1.0"}}})
    await client.patch_twin_reported_properties({"packages": {"model": {"version": None}}, "other": 1})
    service_twin = registry.get_module_twin("dev-a", "installer")
    reported = {k: v for k, v in service_twin.properties.reported.items() if not k.startswith("$")}
    assert reported == {"packages": {"model": {"state": "installed"}}, "other": 1}
    assert service_twin.properties.reported["$version"] == 3
    assert (await client.get_twin())["reported"]["$version"] == 3


async def test_desired_patch_reaches_connected_module_with_version(
        registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-b", "runner")
    client = await module_clients("dev-b", "runner", key, connect=False)
    patches, client.on_twin_desired_properties_patch_received = threadsafe_queue()
    await client.connect()
    # on connect the SDK GETs the twin and hands the whole desired document over as a patch
    first = await asyncio.wait_for(patches.get(), 10)
    assert first["$version"] == 1

    etag = registry.get_module_twin("dev-b", "runner").etag
    updated = registry.update_module_twin(
        "dev-b", "runner", Twin(properties=TwinProperties(desired={"model": {"name": "m", "minVersion": "2"}})), etag)
    assert updated.properties.desired["$version"] == 2
    patch = await asyncio.wait_for(patches.get(), 10)
    assert patch == {"model": {"name": "m", "minVersion": "2"}, "$version": 2}

    # a stale etag is refused with 412 and changes nothing
    with pytest.raises(HttpOperationError) as err:
        registry.update_module_twin("dev-b", "runner", Twin(properties=TwinProperties(desired={"x": 1})), etag)
    assert err.value.response.status_code == 412
    assert "x" not in (await client.get_twin())["desired"]

    # replace (PUT) removes keys: the client gets them as null
    twin = registry.get_module_twin("dev-b", "runner")
    twin.properties.desired = {"batching": {"maxBatch": 4}}
    registry.replace_module_twin("dev-b", "runner", twin)
    patch = await asyncio.wait_for(patches.get(), 10)
    assert patch == {"model": None, "batching": {"maxBatch": 4}, "$version": 3}


async def test_reconnecting_module_converges_on_missed_patches(
        registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-c", "installer")
    client = await module_clients("dev-c", "installer", key, connect=False)
    patches, client.on_twin_desired_properties_patch_received = threadsafe_queue()
    await client.connect()
    assert (await asyncio.wait_for(patches.get(), 10))["$version"] == 1
    await client.disconnect()

    # patches while the module is away are not queued (IoT Hub semantics) ...
    for version in ("1.0", "1.1", "1.2"):
        desired = {"packages": {"model": {"version": version}}}
        registry.update_module_twin("dev-c", "installer", Twin(properties=TwinProperties(desired=desired)))
    # ... but on reconnect the SDK fetches the twin and hands over the whole desired document
    await client.connect()
    converged = await asyncio.wait_for(patches.get(), 10)
    assert converged["packages"]["model"]["version"] == "1.2"
    assert converged["$version"] == 4
    assert patches.empty()


async def test_edge_device_has_system_module_twins(hub: HubThread, registry: IoTHubRegistryManager,
                                                   module_clients: Callable[..., Any]) -> None:
    registry.create_device_with_sas("edge-1", None, None, "enabled", iot_edge=True)
    agent = registry.get_module("edge-1", "$edgeAgent")
    key = agent.authentication.symmetric_key.primary_key
    client = await module_clients("edge-1", "$edgeAgent", key)
    registry.update_module_twin("edge-1", "$edgeAgent", Twin(properties=TwinProperties(desired={
        "schemaVersion": "1.1", "modules": {"sensor": {"status": "running"}}})))
    desired = (await client.get_twin())["desired"]
    assert desired["modules"] == {"sensor": {"status": "running"}}
    await client.patch_twin_reported_properties({"lastDesiredVersion": desired["$version"],
                                                 "modules": {"sensor": {"runtimeStatus": "running"}}})
    reported = registry.get_module_twin("edge-1", "$edgeAgent").properties.reported
    assert reported["modules"]["sensor"]["runtimeStatus"] == "running"
    assert registry.get_module_twin("edge-1", "$edgeHub").properties.desired["$version"] == 1


async def test_invalid_reported_patch_is_refused_and_twin_unchanged(
        hub: HubThread, registry: IoTHubRegistryManager, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-d", "m")
    client = await module_clients("dev-d", "m", key)
    await client.patch_twin_reported_properties({"good": 1})
    with pytest.raises(Exception):  # noqa: B017 - the SDK raises its ServiceError for status 400
        await client.patch_twin_reported_properties({"bad.key": 1})
    with pytest.raises(Exception):  # noqa: B017
        await client.patch_twin_reported_properties({"big": "x" * 5000})
    reported = registry.get_module_twin("dev-d", "m").properties.reported
    assert reported["good"] == 1 and "bad.key" not in reported and "big" not in reported
    assert reported["$version"] == 2
    codes = hub.call(hub.server.core.refusal_codes)
    assert codes.count("HUB_TWIN_INVALID") == 2
