"""The service REST API with the real azure-iot-hub managers: identities, twins and tags, configurations
and automatic deployments, the query endpoint, service authentication; and the edb CLI on top."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import Configuration, ConfigurationContent, QuerySpecification, Twin, TwinProperties
from click.testing import CliRunner
from hub_helpers import new_key
from msrest.exceptions import HttpOperationError

from edb.cli.main import root
from edb_local.hub import HubThread
from edb_local.hub.sas import make_token

pytestmark = pytest.mark.timeout(60)


def _status(call: Callable[[], Any]) -> int:
    with pytest.raises(HttpOperationError) as err:
        call()
    return int(err.value.response.status_code)


def test_identities_crud_with_etags(registry: IoTHubRegistryManager) -> None:
    key = new_key()
    device = registry.create_device_with_sas("dev-1", key, new_key(), "enabled")
    assert device.authentication.symmetric_key.primary_key == key
    assert device.capabilities.iot_edge is False
    assert _status(lambda: registry.create_device_with_sas("dev-1", None, None, "enabled")) == 409
    assert _status(lambda: registry.update_device_with_sas("dev-1", '"stale"', None, None, "disabled")) == 412
    updated = registry.update_device_with_sas("dev-1", device.etag, key, new_key(), "disabled")
    assert updated.status == "disabled" and updated.etag != device.etag
    module = registry.create_module_with_sas("dev-1", "mod", None, None, None)
    assert len(module.authentication.symmetric_key.primary_key) == 44   # generated: 32 random bytes
    assert [m.module_id for m in registry.get_modules("dev-1")] == ["mod"]
    assert _status(lambda: registry.create_module_with_sas("nope", "mod", None, None, None)) == 404
    assert _status(lambda: registry.create_device_with_sas("bad/id", None, None, "enabled")) in (400, 404)
    assert [d.device_id for d in registry.get_devices()] == ["dev-1"]
    registry.delete_module("dev-1", "mod")
    assert _status(lambda: registry.get_module("dev-1", "mod")) == 404
    registry.delete_device("dev-1")
    assert _status(lambda: registry.get_device("dev-1")) == 404
    assert _status(lambda: registry.get_module_twin("dev-1", "mod")) == 404


def test_disabled_device_cannot_connect(hub: HubThread, registry: IoTHubRegistryManager) -> None:

    from edb_local.hub.mqtt.codec import Connect

    key = new_key()
    registry.create_device_with_sas("dev-off", key, key, "disabled")
    registry.create_module_with_sas("dev-off", "m", None, key, key)
    token = make_token(f"{hub.config.hub_name}/devices/dev-off/modules/m", key, expiry=int(time.time()) + 60)
    connect = Connect("dev-off/m", username=f"{hub.config.hub_name}/dev-off/m/?api-version=1", password=token.encode())
    with pytest.raises(Exception) as err:
        hub.call(hub.server.core.authenticate_device, connect)
    assert getattr(err.value, "code", None) == "HUB_AUTH_DISABLED_IDENTITY"


def test_service_authentication_is_checked(hub: HubThread, stack_ca: Any) -> None:
    base = f"https://{hub.config.address}/devices?api-version=2021-04-12"
    now = int(time.time())

    def get(token: str | None) -> requests.Response:
        headers = {"Authorization": token} if token else {}
        return requests.get(base, headers=headers, verify=str(stack_ca.ca_path), timeout=10)

    good = make_token(hub.config.address, hub.config.owner_key, expiry=now + 60, key_name="iothubowner",
                      quote_plus=True)
    assert get(good).status_code == 200
    cases = {
        None: "HUB_AUTH_MISSING",
        make_token(hub.config.address, new_key(), expiry=now + 60, key_name="iothubowner"): "HUB_AUTH_BAD_SIGNATURE",
        make_token(hub.config.address, hub.config.owner_key, expiry=now - 1, key_name="iothubowner"):
            "HUB_AUTH_TOKEN_EXPIRED",
        make_token(hub.config.address, hub.config.owner_key, expiry=now + 60, key_name="registryRead"):
            "HUB_AUTH_UNKNOWN_POLICY",
        make_token("elsewhere.net", hub.config.owner_key, expiry=now + 60, key_name="iothubowner"):
            "HUB_AUTH_WRONG_RESOURCE",
        "Basic abc": "HUB_AUTH_BAD_TOKEN",
    }
    for token, code in cases.items():
        response = get(token)
        assert response.status_code == 401 and response.json()["error"]["code"] == code
    assert requests.get(f"https://{hub.config.address}/edb/health", verify=str(stack_ca.ca_path),
                        timeout=10).json()["status"] == "ok"


def _deployment(cid: str, condition: str, priority: int, module_desired: dict[str, Any],
                metrics: dict[str, str] | None = None) -> Configuration:
    content = ConfigurationContent(modules_content={
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"installer": {"version": cid}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /* INTO $upstream"}}},
        "installer": {"properties.desired": module_desired},
    })
    return Configuration(id=cid, content=content, target_condition=condition, priority=priority,
                         labels={"app": "edb"}, metrics={"queries": metrics or {}})


def test_automatic_deployments_follow_tags_and_priority(hub: HubThread, registry: IoTHubRegistryManager) -> None:
    configs = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    for device_id in ("edge-1", "edge-2"):
        registry.create_device_with_sas(device_id, None, None, "enabled", iot_edge=True)
    registry.update_twin("edge-1", Twin(tags={"env": "prod"}), "*")
    registry.update_twin("edge-2", Twin(tags={"env": "dev"}), "*")
    created = configs.create_configuration(_deployment(
        "prod-v1", "tags.env='prod'", 10, {"packages": {"model": {"version": "1"}}},
        {"installed": "SELECT deviceId FROM devices.modules WHERE moduleId = 'installer' "
                      "AND properties.reported.packages.model.state = 'installed'"}))
    assert created.etag and created.system_metrics.results["targetedCount"] == 1

    def installer_desired(device_id: str) -> dict[str, Any]:
        return {k: v for k, v in registry.get_module_twin(device_id, "installer").properties.desired.items()
                if not k.startswith("$")}

    # desired properties exist before the module identity (the edge agent creates it later)
    registry.create_module_with_sas("edge-1", "installer", None, None, None)
    assert installer_desired("edge-1") == {"packages": {"model": {"version": "1"}}}
    agent = registry.get_module_twin("edge-1", "$edgeAgent")
    assert agent.properties.desired["modules"] == {"installer": {"version": "prod-v1"}}

    # a higher-priority deployment wins; a lower one changes nothing
    configs.create_configuration(_deployment("prod-v2", "tags.env = 'prod'", 20,
                                             {"packages": {"model": {"version": "2"}}}))
    configs.create_configuration(_deployment("prod-old", "tags.env = 'prod'", 1,
                                             {"packages": {"model": {"version": "0"}}}))
    assert installer_desired("edge-1") == {"packages": {"model": {"version": "2"}}}
    # retagging a device moves it
    registry.create_module_with_sas("edge-2", "installer", None, None, None)
    assert installer_desired("edge-2") == {}
    registry.update_twin("edge-2", Twin(tags={"env": "prod"}), "*")
    assert installer_desired("edge-2") == {"packages": {"model": {"version": "2"}}}

    # metrics: system counts and custom queries over reported properties
    twin = registry.get_module_twin("edge-1", "$edgeAgent")
    hub.call(hub.server.core.state.set_reported, _identity("edge-1", "$edgeAgent"),
             {"lastDesiredVersion": twin.properties.desired["$version"], "lastDesiredStatus": {"code": 200}})
    hub.call(hub.server.core.state.set_reported, _identity("edge-1", "installer"),
             {"packages": {"model": {"state": "installed"}}})
    v1 = configs.get_configuration("prod-v1")
    assert v1.metrics.results == {"installed": 1}
    v2 = configs.get_configuration("prod-v2")
    assert v2.system_metrics.results == {"targetedCount": 2, "appliedCount": 2, "reportedSuccessfulCount": 1,
                                         "reportedFailedCount": 0}
    assert {c.id for c in configs.get_configurations()} == {"prod-v1", "prod-v2", "prod-old"}
    # the query language sees which deployment a device runs
    result = registry.query_iot_hub(QuerySpecification(
        query="SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent' "
              "AND configurations.[[prod-v2]].status = 'Applied'"))
    assert sorted(t.device_id for t in result.items) == ["edge-1", "edge-2"]

    # deleting the winner falls back to the next one
    configs.delete_configuration("prod-v2")
    assert installer_desired("edge-1") == {"packages": {"model": {"version": "1"}}}
    assert _status(lambda: configs.get_configuration("prod-v2")) == 404
    assert _status(lambda: configs.create_configuration(_deployment("bad", "tags.env = ", 1, {}))) == 400


def test_layered_deployment_adds_a_module_and_a_route(hub: HubThread, registry: IoTHubRegistryManager) -> None:
    configs = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    registry.create_device_with_sas("edge-l", None, None, "enabled", iot_edge=True)
    registry.update_twin("edge-l", Twin(tags={"site": "lab"}), "*")
    configs.create_configuration(_deployment("base", "tags.site='lab'", 1, {"a": 1}))
    layer = Configuration(id="layer", target_condition="tags.site='lab'", priority=5, content=ConfigurationContent(
        modules_content={"$edgeAgent": {"properties.desired.modules.reporter": {"version": "1", "type": "docker"}},
                         "$edgeHub": {"properties.desired.routes.reporter":
                                      "FROM /messages/modules/reporter/* INTO $upstream"},
                         "reporter": {"properties.desired": {"interval": 5}}}))
    configs.create_configuration(layer)
    agent = registry.get_module_twin("edge-l", "$edgeAgent").properties.desired
    assert set(agent["modules"]) == {"installer", "reporter"}
    routes = registry.get_module_twin("edge-l", "$edgeHub").properties.desired["routes"]
    assert set(routes) == {"up", "reporter"}
    assert [r.name for r in hub.call(lambda: hub.server.core.route_tables["edge-l"].routes)] == ["reporter", "up"]


def test_query_paging_and_errors(registry: IoTHubRegistryManager) -> None:
    for n in range(5):
        registry.create_device_with_sas(f"q-{n}", None, None, "enabled")
        registry.create_module_with_sas(f"q-{n}", "installer", None, None, None)
    first = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices.modules"), None, 3)
    assert first.type == "twin" and len(first.items) == 3 and first.continuation_token
    rest = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices.modules"),
                                  first.continuation_token, 3)
    assert len(rest.items) == 2 and rest.continuation_token is None
    devices = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE deviceId = 'q-3'"))
    assert [t.device_id for t in devices.items] == ["q-3"]
    assert _status(lambda: registry.query_iot_hub(QuerySpecification(query="SELECT * FROM nowhere"))) == 400


def test_device_twin_tags_and_module_twin_replace(registry: IoTHubRegistryManager) -> None:
    registry.create_device_with_sas("t-1", None, None, "enabled")
    twin = registry.update_twin("t-1", Twin(tags={"env": "prod", "loc": {"b": 1}}), "*")
    assert twin.tags == {"env": "prod", "loc": {"b": 1}}
    twin = registry.update_twin("t-1", Twin(tags={"loc": None}), twin.etag)
    assert twin.tags == {"env": "prod"}
    assert _status(lambda: registry.update_twin("t-1", Twin(tags={"bad.key": 1}), "*")) == 400
    registry.create_module_with_sas("t-1", "m", None, None, None)
    module_twin = registry.get_module_twin("t-1", "m")
    module_twin.properties = TwinProperties(desired={"a": 1})
    replaced = registry.replace_module_twin("t-1", "m", module_twin, module_twin.etag)
    assert replaced.properties.desired["a"] == 1 and replaced.properties.desired["$version"] == 2


def test_monitor_and_twin_cli(hub: HubThread, registry: IoTHubRegistryManager, stack_ca: Any, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    registry.create_device_with_sas("cli-dev", None, None, "enabled")
    registry.create_module_with_sas("cli-dev", "m", None, None, None)
    for n, kind in enumerate(["event", "alert", "event"]):
        hub.call(_ingest, hub, "cli-dev", "m", {"n": n}, kind)
    hub.call(_ingest, hub, "cli-dev", None, {"n": 9}, "event")
    state = tmp_path / "state"
    state.mkdir()
    (state / "local.env").write_text(f'EDB_IOTHUB_CONNECTION_STRING="{hub.config.service_connection_string}"\n'
                                     f'EDB_EVENTHUB_CONNECTION_STRING="{hub.config.eventhub_connection_string}"\n'
                                     f"EDB_CA_CERT={stack_ca.ca_path}\n")
    monkeypatch.delenv("EDB_IOTHUB_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("EDB_CA_CERT", raising=False)
    runner = CliRunner()
    result = runner.invoke(root, ["monitor", "--state-dir", str(state), "--json", "--module", "m"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [e["event"]["payload"]["n"] for e in events] == [0, 1, 2]
    assert all(e["event"]["origin"] == "cli-dev" for e in events)
    result = runner.invoke(root, ["monitor", "--state-dir", str(state), "--json", "-p", "messageType=alert"])
    assert [json.loads(line)["event"]["payload"] for line in result.output.splitlines()] == [{"n": 1}]
    result = runner.invoke(root, ["monitor", "--state-dir", str(state), "--json", "--tail", "1"])
    assert [json.loads(line)["event"]["payload"] for line in result.output.splitlines()] == [{"n": 9}]
    result = runner.invoke(root, ["monitor", "--state-dir", str(state), "--json", "--follow", "--timeout", "0.5",
                                  "--device", "nobody"])
    assert result.exit_code == 0 and result.output == ""
    result = runner.invoke(root, ["monitor", "--state-dir", str(state)])            # az-like pretty output
    assert result.output.startswith('{\n    "event": {')

    monkeypatch.setenv("EDB_IOTHUB_CONNECTION_STRING", hub.config.service_connection_string)
    monkeypatch.setenv("EDB_CA_CERT", str(stack_ca.ca_path))
    result = runner.invoke(root, ["twin", "show", "cli-dev", "m", "--json", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    twin = json.loads(result.output)
    assert twin["deviceId"] == "cli-dev" and twin["moduleId"] == "m"
    result = runner.invoke(root, ["twin", "show", "cli-dev", "nope", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code != 0 and "HUB_NOT_FOUND" in str(result.exception)
    monkeypatch.delenv("EDB_IOTHUB_CONNECTION_STRING")
    result = runner.invoke(root, ["twin", "show", "cli-dev", "m", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code != 0 and "HUB_CONFIG_INVALID" in str(result.exception)


def test_monitor_follow_long_polls_new_events(hub: HubThread, stack_ca: Any) -> None:
    import threading

    from edb_local.hub.client import ServiceClient, resolve_settings

    client = ServiceClient(resolve_settings(hub.config.service_connection_string, str(stack_ca.ca_path),
                                            environ={}, env_file={}))
    start = client.messages().last
    timer = threading.Timer(0.3, lambda: hub.call(_ingest, hub, "late", None, {"late": True}, "event"))
    timer.start()
    page = client.messages(since=start, wait=10)
    timer.join()
    assert [e["event"]["payload"] for e in page.events] == [{"late": True}]


def _identity(device: str, module: str | None) -> Any:
    from edb_local.hub.topics import Identity

    return Identity(device, module)


def _ingest(hub: HubThread, device: str, module: str | None, body: dict[str, Any], kind: str) -> None:
    from edb_local.hub.topics import PropertyBag

    bag = PropertyBag({"contentType": "application/json", "contentEncoding": "utf-8"}, {"messageType": kind})
    hub.server.core.ingest(_identity(device, module), bag, json.dumps(body).encode())


def test_manual_content_is_replaced_by_the_next_automatic_evaluation(hub: HubThread,
                                                                     registry: IoTHubRegistryManager) -> None:
    configs = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    registry.create_device_with_sas("edge-m", None, None, "enabled", iot_edge=True)
    registry.update_twin("edge-m", Twin(tags={"env": "prod"}), "*")
    configs.create_configuration(_deployment("auto", "tags.env='prod'", 1, {"v": "auto"}))
    registry.create_module_with_sas("edge-m", "installer", None, None, None)
    manual = _deployment("manual", "*", 0, {"v": "manual"}).content
    configs.apply_configuration_on_edge_device("edge-m", manual)
    assert registry.get_module_twin("edge-m", "installer").properties.desired["v"] == "manual"
    registry.update_twin("edge-m", Twin(tags={"env": "prod", "rack": 2}), "*")
    assert registry.get_module_twin("edge-m", "installer").properties.desired["v"] == "auto"
