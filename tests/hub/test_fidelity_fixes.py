"""Fidelity fixes found by the official SDK samples and the Azure CLI (issue 11 item 7): method timeouts
as numeric strings, device twin change events on the built-in endpoint, no desired patch without a
change, bulk registry operations, and 501 (never an auth error) for what the stand-in lacks."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import ssl
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
import requests
from azure.iot.device import MethodResponse
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import (
    AuthenticationMechanism,
    ExportImportDevice,
    SymmetricKey,
    Twin,
    TwinProperties,
)
from hub_helpers import eventually, new_key

from edb_local.hub import HubThread
from edb_local.hub.sas import make_token
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(60)


def _service_headers(hub: HubThread) -> dict[str, str]:
    token = make_token(hub.config.address, hub.config.owner_key, expiry=int(time.time()) + 300,
                       key_name="iothubowner", quote_plus=True)
    return {"Authorization": token, "Content-Type": "application/json"}


async def test_method_timeouts_given_as_numeric_strings_are_accepted(
        hub: HubThread, stack_ca: StackCA, make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    key = make_module("dev-t", "runner")
    client = await module_clients("dev-t", "runner", key, connect=False)

    async def handler(request: Any) -> None:
        await client.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": 1}))

    client.on_method_request_received = handler
    await client.connect()
    url = f"https://{hub.config.address}/twins/dev-t/modules/runner/methods?api-version=2021-04-12"

    def post(body: dict[str, Any]) -> requests.Response:
        return requests.post(url, json=body, headers=_service_headers(hub), verify=str(stack_ca.ca_path), timeout=30)

    # what `az iot hub invoke-module-method` sends
    answer = await asyncio.to_thread(post, {"methodName": "ping", "payload": {}, "responseTimeoutInSeconds": "30",
                                            "connectTimeoutInSeconds": "5"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": 200, "payload": {"ok": 1}}
    for bad in ("thirty", "-1", "1.5e3", True, [30]):
        refused = await asyncio.to_thread(post, {"methodName": "ping", "responseTimeoutInSeconds": bad})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "HUB_BAD_REQUEST", bad


def _twin_events(hub: HubThread) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    rows = hub.call(hub.server.core.upstream_since, 0, 1000)
    return [(row.device_id, row.props, json.loads(row.body)) for row in rows
            if row.props["system"].get("messageSource") == "twinChangeEvents"]


async def test_device_twin_changes_reach_the_built_in_endpoint(
        hub: HubThread, registry: IoTHubRegistryManager, stack_ca: StackCA) -> None:
    key = new_key()
    registry.create_device_with_sas("dev-tw", key, key, "enabled")
    client = IoTHubDeviceClient.create_from_connection_string(
        hub.config.device_connection_string("dev-tw", key), server_verification_cert=stack_ca.ca_pem)
    await client.connect()
    try:
        twin = registry.get_twin("dev-tw")
        registry.update_twin("dev-tw", Twin(properties=TwinProperties(desired={"rate": 5})), twin.etag)
        await client.patch_twin_reported_properties({"rate": 5, "fw": "1.0"})
        twin = registry.get_twin("dev-tw")
        registry.replace_twin("dev-tw", Twin(tags={"site": "a"}, properties=TwinProperties(desired={"mode": "x"})))
        events = await eventually(lambda: len(_twin_events(hub)), 3)
        assert events == 3
    finally:
        await client.shutdown()
    (d1, p1, b1), (d2, p2, b2), (d3, p3, b3) = _twin_events(hub)
    assert d1 == d2 == d3 == "dev-tw"
    assert p1["application"]["opType"] == "updateTwin" and p1["application"]["hubName"] == hub.config.hub_name
    assert p1["application"]["deviceId"] == "dev-tw" and "moduleId" not in p1["application"]
    assert p1["application"]["iothub-message-schema"] == "twinChangeNotification"
    assert p1["system"]["contentType"] == "application/json" and p1["system"]["contentEncoding"] == "utf-8"
    assert b1["properties"] == {"desired": {"rate": 5, "$version": 2}}
    assert p2["application"]["opType"] == "updateTwin"
    assert b2["properties"] == {"reported": {"rate": 5, "fw": "1.0", "$version": 2}}
    assert p3["application"]["opType"] == "replaceTwin"
    assert b3["tags"] == {"site": "a"} and b3["properties"] == {"desired": {"rate": None, "mode": "x", "$version": 3}}
    assert b1["version"] < b2["version"] < b3["version"]
    # and the monitor view (REST) names the source as IoT Hub does
    response = requests.get(f"https://{hub.config.address}/edb/messages?since=0", headers=_service_headers(hub),
                            verify=str(stack_ca.ca_path), timeout=10)
    sources = [m["event"]["properties"]["system"]["iothub-message-source"] for m in response.json()["messages"]]
    assert sources == ["twinChangeEvents"] * 3


def _raw_module_client(hub: HubThread, stack_ca: StackCA, device: str, module: str,
                       key: str) -> tuple[paho.Client, queue.Queue[tuple[str, bytes]]]:
    """A plain MQTT client (not the device SDK, which synthesises a patch from its own twin GET on
    connect): shows exactly what the hub publishes."""
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = paho.Client(client_id=f"{device}/{module}", clean_session=False, protocol=paho.MQTTv311)
    client.username_pw_set(f"{hub.config.hub_name}/{device}/{module}/?api-version=2021-04-12",
                           make_token(f"{hub.config.hub_name}/devices/{device}/modules/{module}", key,
                                      expiry=int(time.time()) + 300))
    client.tls_set(ca_certs=str(stack_ca.ca_path), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_message = lambda _c, _u, msg: received.put((msg.topic, msg.payload))
    client.connect(hub.config.address, 8883)
    client.loop_start()
    client.subscribe([("$iothub/twin/PATCH/properties/desired/#", 1), ("$iothub/twin/res/#", 1)])
    return client, received


def _twin_get(client: paho.Client, received: queue.Queue[tuple[str, bytes]], rid: str) -> list[str]:
    """Ask for the twin and return the topics received up to its answer (the hub answers in order, so
    anything it published before the GET is in the list)."""
    client.publish(f"$iothub/twin/GET/?$rid={rid}", b" ", qos=1)
    topics = []
    while True:
        topic, _payload = received.get(timeout=10)
        topics.append(topic)
        if topic.startswith("$iothub/twin/res/200/") and f"$rid={rid}" in topic:
            return topics


def test_no_desired_patch_without_a_change(hub: HubThread, stack_ca: StackCA, registry: IoTHubRegistryManager,
                                           make_module: Callable[..., str]) -> None:
    key = make_module("dev-np", "runner")
    registry.update_module_twin("dev-np", "runner", Twin(properties=TwinProperties(desired={"a": 1})), "*")
    client, received = _raw_module_client(hub, stack_ca, "dev-np", "runner", key)
    try:
        topics = _twin_get(client, received, "1")   # a newly connected module: no patch, only the answer
        assert [t for t in topics if "PATCH" in t] == []
        before = registry.get_module_twin("dev-np", "runner").properties.desired["$version"]
        registry.update_module_twin("dev-np", "runner", Twin(properties=TwinProperties(desired={"a": 1})), "*")
        registry.update_module_twin("dev-np", "runner", Twin(properties=TwinProperties(desired={})), "*")
        assert registry.get_module_twin("dev-np", "runner").properties.desired["$version"] == before
        registry.update_module_twin("dev-np", "runner", Twin(properties=TwinProperties(desired={"a": 2})), "*")
        topic, payload = received.get(timeout=10)
        assert "PATCH/properties/desired" in topic   # the first patch is the real change
        assert json.loads(payload) == {"a": 2, "$version": before + 1}
    finally:
        client.loop_stop()
        client.disconnect()


def _bulk_entry(device_id: str, mode: str, key: str | None = None, **kwargs: Any) -> ExportImportDevice:
    auth = AuthenticationMechanism(type="sas", symmetric_key=SymmetricKey(primary_key=key, secondary_key=key)) \
        if key else None
    return ExportImportDevice(id=device_id, import_mode=mode, authentication=auth, **kwargs)


def test_bulk_registry_create_update_delete(hub: HubThread, registry: IoTHubRegistryManager) -> None:
    keys = {f"bulk-{i}": new_key() for i in range(3)}
    result = registry.bulk_create_or_update_devices(
        [_bulk_entry(d, "create", k, status="enabled") for d, k in keys.items()])
    assert result.is_successful is True and result.errors == []
    assert registry.get_device("bulk-1").authentication.symmetric_key.primary_key == keys["bulk-1"]

    # one good update, one create of an existing device: applied one by one, the failure reported
    # (HTTP 400 with the result, which the SDK returns rather than raises)
    result = registry.bulk_create_or_update_devices([_bulk_entry("bulk-0", "update", status="disabled"),
                                                     _bulk_entry("bulk-1", "create", new_key())])
    assert result.is_successful is False
    assert [(e.device_id, e.error_code) for e in result.errors] == [("bulk-1", "DeviceAlreadyExists")]
    assert registry.get_device("bulk-0").status == "disabled"
    assert registry.get_device("bulk-1").authentication.symmetric_key.primary_key == keys["bulk-1"]

    stale = _bulk_entry("bulk-2", "deleteIfMatchETag", e_tag='"stale"')
    result = registry.bulk_create_or_update_devices([_bulk_entry("bulk-0", "delete"), stale])
    assert [e.error_code for e in result.errors] == ["PreconditionFailed"]
    assert sorted(d.device_id for d in registry.get_devices()) == ["bulk-1", "bulk-2"]

    url = f"https://{hub.config.address}/devices?api-version=2021-04-12"
    for bad in ([{"id": "x", "importMode": "create"}] * 2, [{"id": f"d{i}"} for i in range(101)], {"id": "x"}, []):
        response = requests.post(url, json=bad, headers=_service_headers(hub), verify=os.environ["REQUESTS_CA_BUNDLE"],
                                 timeout=10)
        assert response.status_code == 400 and response.json()["error"]["code"] == "HUB_BAD_REQUEST"
    assert sorted(d.device_id for d in registry.get_devices()) == ["bulk-1", "bulk-2"]


@pytest.mark.parametrize("method,path", [("GET", "/jobs/v2"), ("POST", "/jobs/v2/import"),
                                         ("GET", "/digitaltwins/dev"),
                                         ("GET", "/messages/serviceBound/filenotifications")])
def test_unsupported_apis_answer_501_never_an_auth_error(hub: HubThread, stack_ca: StackCA, method: str,
                                                         path: str) -> None:
    url = f"https://{hub.config.address}{path}?api-version=2021-04-12"
    for headers in ({}, _service_headers(hub), {"Authorization": "SharedAccessSignature sr=x&sig=y&se=1"}):
        response = requests.request(method, url, headers=headers, verify=str(stack_ca.ca_path), timeout=10)
        assert response.status_code == 501, (headers, response.text)
        assert response.json()["error"]["code"] == "HUB_NOT_IMPLEMENTED"
