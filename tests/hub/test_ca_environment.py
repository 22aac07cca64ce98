"""Every service-side client of the hub trusts the CA it is given, whatever REQUESTS_CA_BUNDLE,
CURL_CA_BUNDLE or SSL_CERT_FILE say (CI and many machines point them at the system bundle, which
does not hold the stack CA; an attacker who can set them must not be able to add trust either).

The hub fixture here deliberately does NOT export the stack CA through the environment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.hub import IoTHubRegistryManager
from click.testing import CliRunner

from edb.cli.main import root
from edb_local.hub import HubConfig, HubThread
from edb_local.hub.errors import HubError
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(60)
_ENV_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


@pytest.fixture
def unrelated_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid PEM bundle of a CA that never issued anything the hub presents."""
    return StackCA.load_or_create(tmp_path_factory.mktemp("unrelated-ca")).ca_path


@pytest.fixture
def plain_hub(hub_config: HubConfig) -> Iterator[HubThread]:
    with HubThread(hub_config) as running:
        yield running


def _environment_points_at(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    for name in _ENV_CA_VARIABLES:
        monkeypatch.setenv(name, str(bundle))
    for name in ("EDB_IOTHUB_CONNECTION_STRING", "EDB_CA_CERT"):
        monkeypatch.delenv(name, raising=False)


def _state_dir(tmp_path: Path, hub: HubThread, ca: Path | None) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    lines = [f'EDB_IOTHUB_CONNECTION_STRING="{hub.config.service_connection_string}"',
             f'EDB_EVENTHUB_CONNECTION_STRING="{hub.config.eventhub_connection_string}"']
    if ca is not None:
        lines.append(f"EDB_CA_CERT={ca}")
    (state / "local.env").write_text("\n".join(lines) + "\n")
    return state


def _ingest(hub: HubThread, device: str, module: str, body: dict[str, Any]) -> None:
    from edb_local.hub.topics import Identity, PropertyBag

    bag = PropertyBag({"contentType": "application/json", "contentEncoding": "utf-8"}, {"messageType": "event"})
    hub.server.core.ingest(Identity(device, module), bag, json.dumps(body).encode())


def test_monitor_and_twin_show_use_the_stack_ca_not_the_environment(
        plain_hub: HubThread, stack_ca: StackCA, unrelated_bundle: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    registry = IoTHubRegistryManager.from_connection_string(plain_hub.config.service_connection_string)
    _environment_points_at(monkeypatch, stack_ca.ca_path)   # set-up only: the SDK as it used to be configured
    registry.create_device_with_sas("ca-dev", None, None, "enabled")
    registry.create_module_with_sas("ca-dev", "m", None, None, None)
    plain_hub.call(_ingest, plain_hub, "ca-dev", "m", {"n": 1})

    _environment_points_at(monkeypatch, unrelated_bundle)
    state = _state_dir(tmp_path, plain_hub, stack_ca.ca_path)
    runner = CliRunner()
    result = runner.invoke(root, ["monitor", "--state-dir", str(state), "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["event"]["payload"] for line in result.output.splitlines()] == [{"n": 1}]
    result = runner.invoke(root, ["twin", "show", "ca-dev", "m", "--json", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["moduleId"] == "m"
    # the option works the same way as local.env
    result = runner.invoke(root, ["twin", "show", "ca-dev", "--json", "--state-dir", str(tmp_path / "none"),
                                  "-c", plain_hub.config.service_connection_string,
                                  "--ca-cert", str(stack_ca.ca_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["deviceId"] == "ca-dev"


def test_monitor_and_twin_show_fail_closed_without_the_stack_ca(
        plain_hub: HubThread, stack_ca: StackCA, unrelated_bundle: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    # no CA configured: the system trust store (here: what the environment names) does not hold the stack CA
    _environment_points_at(monkeypatch, unrelated_bundle)
    state = _state_dir(tmp_path, plain_hub, None)
    for args in (["monitor", "--json"], ["twin", "show", "d", "m"]):
        result = runner.invoke(root, [*args, "--state-dir", str(state)])
        assert result.exit_code != 0
        assert isinstance(result.exception, HubError) and result.exception.code == "HUB_TLS_UNTRUSTED"

    # the environment trusts the stack CA but the configured CA is another one: the configured CA wins
    _environment_points_at(monkeypatch, stack_ca.ca_path)
    state = _state_dir(tmp_path, plain_hub, unrelated_bundle)
    for args in (["monitor", "--json"], ["twin", "show", "d", "m"]):
        result = runner.invoke(root, [*args, "--state-dir", str(state)])
        assert isinstance(result.exception, HubError) and result.exception.code == "HUB_TLS_UNTRUSTED"

    # a configured CA that does not exist is a configuration error, never a fallback to the system store
    state = _state_dir(tmp_path, plain_hub, tmp_path / "missing.pem")
    result = runner.invoke(root, ["monitor", "--state-dir", str(state)])
    assert isinstance(result.exception, HubError) and result.exception.code == "HUB_CONFIG_INVALID"


def test_azure_iot_hub_clients_pin_the_ca_they_are_given(
        plain_hub: HubThread, stack_ca: StackCA, unrelated_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestrator (HubService), the supervisor's registration and the agent's identities all
    use azure-iot-hub: each pins its CA on the SDK client."""
    from edb.errors import ConfigError
    from edb_cloud.iothub import CloudError, HubService
    from edb_local.supervisor.registration import register_edge_device_with

    cs = plain_hub.config.service_connection_string
    _environment_points_at(monkeypatch, unrelated_bundle)
    register_edge_device_with(cs, "edge-ca", str(stack_ca.ca_path))
    twin = HubService(cs, stack_ca.ca_path).module_twin("edge-ca", "$edgeAgent")
    assert (twin.device_id, twin.module_id) == ("edge-ca", "$edgeAgent")

    _environment_points_at(monkeypatch, stack_ca.ca_path)
    with pytest.raises(CloudError) as refused:
        HubService(cs, unrelated_bundle).module_twin("edge-ca", "$edgeAgent")
    assert refused.value.code == "CLOUD_IOTHUB_FAILED"
    from edb_local.supervisor.errors import SupervisorError

    with pytest.raises(SupervisorError) as not_registered:
        register_edge_device_with(cs, "edge-ca-2", str(unrelated_bundle))
    assert not_registered.value.code == "LOCAL_DEVICE_REGISTRATION"
    with pytest.raises(ConfigError) as missing:
        HubService(cs, Path("/nonexistent/ca.pem"))
    assert missing.value.code == "CONFIG_INVALID"
