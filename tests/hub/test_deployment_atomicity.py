"""A deployment the hub refuses changes nothing: `applyConfigurationContent` and automatic
deployments validate every module's desired properties before any twin is touched (with the real
azure-iot-hub SDK, whose 400 the orchestrator would see)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import Configuration, ConfigurationContent, Twin
from msrest.exceptions import HttpOperationError

from edb_local.hub import HubThread

pytestmark = pytest.mark.timeout(60)
DEVICE = "edge-atomic"
MODULES = ("$edgeAgent", "$edgeHub", "installer", "runner")


def _content(agent_version: str, installer: dict[str, Any], runner: dict[str, Any]) -> dict[str, Any]:
    return {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1",
                                              "modules": {"installer": {"version": agent_version}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
                                            "routes": {"up": f"FROM /* WHERE v = '{agent_version}' INTO $upstream"}}},
        "installer": {"properties.desired": installer},
        "runner": {"properties.desired": runner},
    }


def _refused(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(HttpOperationError) as err:
        call()
    assert err.value.response.status_code == 400
    body: dict[str, Any] = err.value.response.json()
    return body


def _snapshot(registry: IoTHubRegistryManager) -> dict[str, tuple[dict[str, Any], str]]:
    out = {}
    for module_id in MODULES:
        twin = registry.get_module_twin(DEVICE, module_id)
        out[module_id] = (twin.properties.desired, twin.etag)
    return out


@pytest.fixture
def edge_device(hub: HubThread, registry: IoTHubRegistryManager) -> IoTHubConfigurationManager:
    registry.create_device_with_sas(DEVICE, None, None, "enabled", iot_edge=True)
    for module_id in ("installer", "runner"):
        registry.create_module_with_sas(DEVICE, module_id, None, None, None)
    configs = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    configs.apply_configuration_on_edge_device(
        DEVICE, ConfigurationContent(modules_content=_content("1", {"packages": {"a": {"version": "1"}}}, {"k": 1})))
    return configs


@pytest.mark.parametrize("installer, runner, what", [
    ({"packages": {"a": None}}, {"k": 2}, "null in the first user module"),
    ({"packages": {"a": {"version": "2"}}}, {"k": None}, "null in the last module"),
    ({"packages": {"a": {"version": "2"}}}, {"bad key": 1}, "a key IoT Hub refuses"),
    ({"packages": {"a": {"version": "2"}}}, {"big": "x" * 5000}, "a string over 4 KB"),
])
def test_refused_apply_configuration_content_changes_nothing(
        edge_device: IoTHubConfigurationManager, registry: IoTHubRegistryManager,
        installer: dict[str, Any], runner: dict[str, Any], what: str) -> None:
    before = _snapshot(registry)
    body = _refused(lambda: edge_device.apply_configuration_on_edge_device(
        DEVICE, ConfigurationContent(modules_content=_content("2", installer, runner))))
    assert body["error"]["code"] == "HUB_TWIN_INVALID", what
    assert _snapshot(registry) == before, what   # $edgeAgent and $edgeHub included: not applied first
    # and a valid request still applies everything
    edge_device.apply_configuration_on_edge_device(
        DEVICE, ConfigurationContent(modules_content=_content("3", {"packages": {}}, {"k": 3})))
    after = _snapshot(registry)
    assert after["$edgeAgent"][0]["modules"]["installer"]["version"] == "3"
    assert after["runner"][0]["k"] == 3


def test_refused_automatic_deployment_is_not_stored_and_changes_nothing(
        edge_device: IoTHubConfigurationManager, registry: IoTHubRegistryManager) -> None:
    registry.update_twin(DEVICE, Twin(tags={"env": "prod"}), "*")
    before = _snapshot(registry)
    bad = Configuration(id="bad-auto", content=ConfigurationContent(
        modules_content=_content("9", {"packages": {"a": None}}, {"k": 9})),
        target_condition="tags.env='prod'", priority=5)
    body = _refused(lambda: edge_device.create_configuration(bad))
    assert body["error"]["code"] == "HUB_TWIN_INVALID"
    with pytest.raises(HttpOperationError) as missing:
        edge_device.get_configuration("bad-auto")
    assert missing.value.response.status_code == 404
    assert _snapshot(registry) == before
    layered = Configuration(id="bad-layer", content=ConfigurationContent(modules_content={
        "$edgeAgent": {"properties.desired.modules.extra": {"version": "x"}},
        "runner": {"properties.desired": {"k": None}}}), target_condition="tags.env='prod'", priority=6)
    assert _refused(lambda: edge_device.create_configuration(layered))["error"]["code"] == "HUB_TWIN_INVALID"
    assert _snapshot(registry) == before
