"""The orchestrator's IoT Hub side against the hub stand-in, with the real azure-iot-hub SDK:
one-device deploy keeping package pointers, fleet deployment by tags, ring rollout as a layered
deployment, the status table from module twins, and the CLI's JSON output."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.device.aio import IoTHubModuleClient
from click.testing import CliRunner

from edb_cloud.cli import cloud
from edb_cloud.config import CloudConfig
from edb_cloud.deploy import default_template, deploy_to_device, deploy_to_fleet, render_manifest
from edb_cloud.iothub import HubService
from edb_cloud.releases import Release, ReleaseRegistry
from edb_cloud.rollout import rollout_to_device, rollout_to_ring
from edb_cloud.status import fleet_status
from edb_local.hub import HubConfig, HubThread
from edb_local.stack_ca import StackCA

SHA = "cd" * 32


def key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def hub(stack_ca: StackCA, loopback_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> \
        Iterator[HubThread]:
    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    config = HubConfig(state_dir=tmp_path / "hub", address=loopback_address,
                       hub_name="edb-cloud-test.azure-devices.net", cert_path=creds.cert_path,
                       key_path=creds.key_path, owner_key=key())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    with HubThread(config) as running:
        yield running


@pytest.fixture
def config(hub: HubThread, stack_ca: StackCA, tmp_path: Path) -> CloudConfig:
    env = {"EDB_IOTHUB_CONNECTION_STRING": hub.config.service_connection_string, "EDB_CA_CERT": str(stack_ca.ca_path),
           "EDB_KEY_RELEASE_URL": "https://kr.example/api", "EDB_DEVICE_ID": "dev-a", "PATH": "/usr/bin"}
    return CloudConfig.load(tmp_path / "state", environ=env)


def release(version: str) -> Release:
    return Release("digits", "digits", version, int(version[0]), f"https://blob.example/{version}.cpk?sig=x", SHA,
                   1234, f"digits/{version}/{SHA}.cpk", "2026-11-26T00:00:00Z")


def edge_device(hub_service: HubService, hub: HubThread, device_id: str, tags: dict[str, str] | None = None,
                modules: tuple[str, ...] = ()) -> None:
    """An IoT Edge device (and module identities, as the edge agent would create them)."""
    from azure.iot.hub import IoTHubRegistryManager

    registry = IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string)
    registry.create_device_with_sas(device_id, None, None, "enabled", iot_edge=True)
    for module in modules:
        registry.create_module_with_sas(device_id, module, None, key(), key())
    if tags:
        hub_service.set_device_tags(device_id, tags)


def test_fleet_deployment_and_ring_rollout_follow_tags(hub: HubThread, config: CloudConfig) -> None:
    service = HubService(config.iothub_connection_string)
    modules = ("package_installer", "inference_runner")
    edge_device(service, hub, "canary-1", {"ring": "canary"}, modules)
    edge_device(service, hub, "prod-1", {"ring": "prod"}, modules)
    manifest = render_manifest(config, default_template(), "amd64")
    deploy_to_fleet(service, "edb-base", manifest, target_condition="tags.ring='canary' OR tags.ring='prod'",
                    priority=10)
    for device in ("canary-1", "prod-1"):
        agent = service.module_twin(device, "$edgeAgent").desired
        assert set(agent["modules"]) == {"tee_service", "package_installer", "inference_runner",
                                         "telemetry_reporter", "simulated_sensor"}
    assert service.edge_devices("tags.ring = 'canary'") == ["canary-1"]
    assert service.edge_devices() == ["canary-1", "prod-1"]

    deployment = rollout_to_ring(service, "canary", release("2.0.0"))
    assert deployment == "edb-rollout-digits-canary-v2-0-0"
    canary = service.module_twin("canary-1", "package_installer").desired
    assert canary["packages"]["digits"] == release("2.0.0").desired().to_twin()
    assert "digits" not in (service.module_twin("prod-1", "package_installer").desired.get("packages") or {})
    # the runner keeps the base deployment's settings under the layer
    assert service.module_twin("canary-1", "inference_runner").desired["model"] == {"name": "digits"}
    with pytest.raises(ValueError):
        rollout_to_ring(service, "bad ring'", release("2.0.0"))


def test_device_deploy_keeps_desired_packages_unless_reset(hub: HubThread, config: CloudConfig) -> None:
    service = HubService(config.iothub_connection_string)
    edge_device(service, hub, "dev-a", modules=("package_installer", "inference_runner"))
    manifest = render_manifest(config, default_template(), "amd64")
    deploy_to_device(service, "dev-a", manifest)
    rollout_to_device(service, "dev-a", release("1.0.0"), min_version="1.0.0")
    assert service.module_twin("dev-a", "inference_runner").desired["model"]["minVersion"] == "1.0.0"
    deploy_to_device(service, "dev-a", manifest)  # a redeploy of the suite
    assert service.module_twin("dev-a", "package_installer").desired["packages"]["digits"]["version"] == "1.0.0"
    deploy_to_device(service, "dev-a", manifest, keep_packages=False)
    assert "packages" not in service.module_twin("dev-a", "package_installer").desired


async def test_status_rows_come_from_reported_module_twins(hub: HubThread, config: CloudConfig,
                                                           stack_ca: StackCA) -> None:
    from azure.iot.hub import IoTHubRegistryManager

    service = HubService(config.iothub_connection_string)
    edge_device(service, hub, "dev-a")
    registry = IoTHubRegistryManager.from_connection_string(config.iothub_connection_string)
    clients = []
    try:
        for module, reported in (
            ("package_installer", {"packages": {"digits": {
                "state": "failed", "version": "1.0.0", "securityVersion": None, "sha256": SHA,
                "error": {"code": "CPK_ROLLBACK", "message": "below the floor"}, "updatedAt": "2026-11-26T00:00:00Z",
                "installedVersion": "2.0.0", "attempts": 1}}}),
            ("inference_runner", {"model": {"name": "digits", "version": "2.0.0", "state": "serving",
                                            "lastLoadFailure": {"name": "digits", "version": "3.0.0", "at": "",
                                                                "error": {"code": "TEE_MODEL_INVALID",
                                                                          "message": "x"}}},
                                  "stats": {"count": 42, "p50Ms": 3.5}}),
        ):
            module_key = key()
            registry.create_module_with_sas("dev-a", module, None, module_key, module_key)
            client = IoTHubModuleClient.create_from_connection_string(
                hub.config.module_connection_string("dev-a", module, module_key),
                server_verification_cert=stack_ca.ca_pem)
            clients.append(client)
            await client.connect()
            await client.patch_twin_reported_properties(reported)
        rollout_to_device(service, "dev-a", release("1.0.0"))
        (row,) = fleet_status(service, ["dev-a"])
        assert row.to_json() == {"deviceId": "dev-a", "package": "digits", "desiredVersion": "1.0.0",
                                 "state": "failed", "installedVersion": "2.0.0", "securityVersion": None,
                                 "error": "CPK_ROLLBACK", "servingVersion": "2.0.0", "modelState": "serving",
                                 "p50Ms": 3.5, "answered": 42, "lastLoadFailure": "3.0.0 TEE_MODEL_INVALID"}
        out = CliRunner().invoke(cloud, ["--state-dir", str(config.state_dir), "status", "--json"],
                                 env=dict(config.env), catch_exceptions=False)
        doc = json.loads(out.output)
        assert doc["ok"] and doc["devices"] == ["dev-a"] and doc["rows"][0]["error"] == "CPK_ROLLBACK"
    finally:
        for client in clients:
            await client.shutdown()


def test_cli_rollout_uses_the_release_registry_and_reports_json_errors(hub: HubThread, config: CloudConfig) -> None:
    registry = ReleaseRegistry(config.cloud_dir / "releases.json")
    runner = CliRunner()
    args = ["--state-dir", str(config.state_dir)]
    out = runner.invoke(cloud, [*args, "rollout", "digits", "--json"], env=dict(config.env))
    assert out.exit_code == 2 and json.loads(out.output)["error"]["code"] == "CONFIG_RELEASE_UNKNOWN"
    registry.add(release("1.0.0"))
    registry.add(release("2.0.0"))
    assert registry.find("digits").version == "2.0.0" and registry.previous("digits", "2.0.0").version == "1.0.0"
    service = HubService(config.iothub_connection_string)
    edge_device(service, hub, "dev-a")
    from azure.iot.hub import IoTHubRegistryManager

    IoTHubRegistryManager.from_connection_string(config.iothub_connection_string).create_module_with_sas(
        "dev-a", "package_installer", None, key(), key())
    out = runner.invoke(cloud, [*args, "rollout", "digits", "--no-wait", "--json"], env=dict(config.env))
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["version"] == "2.0.0"
    assert service.module_twin("dev-a", "package_installer").desired["packages"]["digits"]["version"] == "2.0.0"
    out = runner.invoke(cloud, [*args, "rollback", "digits", "--no-wait", "--json"], env=dict(config.env))
    assert out.exit_code == 0, out.output
    assert service.module_twin("dev-a", "package_installer").desired["packages"]["digits"]["version"] == "1.0.0"


def test_cli_deploy_fails_unless_the_device_reports_it_applied(hub: HubThread, config: CloudConfig) -> None:
    """No edge agent answers for dev-a: `deploy` does not print ok (CLOUD_DEPLOY_TIMEOUT); `--no-wait`
    only hands the manifest to IoT Hub. The agent's side (applied, refused) is tests/agent/test_deploy_waits.py."""
    edge_device(HubService(config.iothub_connection_string), hub, "dev-a")
    runner = CliRunner()
    args = ["--state-dir", str(config.state_dir), "deploy", "--json"]
    out = runner.invoke(cloud, [*args, "--timeout", "0"], env=dict(config.env))
    assert out.exit_code == 2, out.output
    error = json.loads(out.output)["error"]
    assert error["code"] == "CLOUD_DEPLOY_TIMEOUT" and "dev-a" in error["message"]
    out = runner.invoke(cloud, [*args, "--no-wait"], env=dict(config.env))
    assert out.exit_code == 0 and json.loads(out.output)["ok"] is True and "applied" not in json.loads(out.output)
