"""Never lose a package (issue 12, item 1): how desired ``packages`` is composed on a device, the
hub stand-in's layering rules and the orchestrator's refusals, with the real azure-iot-hub SDK.

The first test is the issue's reproduction: a per-device deploy, a second package by twin patch,
then a ring rollout with no base automatic deployment under it. It used to exit 0 and silently
drop ``other`` from the device's desired packages (the installer then uninstalled it)."""

from __future__ import annotations

from typing import Any

import pytest
from test_orchestrator_hub import SHA, config, edge_device, hub  # noqa: F401 - fixtures

from edb_cloud.composition import (
    CompositionError,
    DeploymentView,
    DevicePackages,
    check_layer_rollout,
    composed_packages,
    removals,
)
from edb_cloud.config import CloudConfig
from edb_cloud.deploy import default_template, deploy_to_device, deploy_to_fleet, render_manifest
from edb_cloud.iothub import CloudError, HubService
from edb_cloud.releases import Release
from edb_cloud.rollout import INSTALLER, deployment_views, rollout_metrics, rollout_to_device, rollout_to_ring
from edb_local.hub import HubThread
from edb_local.stack_ca import StackCA

MODULES = ("package_installer", "inference_runner")


def release(name: str, version: str) -> Release:
    return Release(name, name, version, 1, f"https://blob.example/{name}/{version}.cpk?sig=x", SHA, 1234,
                   f"{name}/{version}/{SHA}.cpk", "2026-11-26T00:00:00Z")


def packages(service: HubService, device: str) -> dict[str, Any]:
    return dict(service.module_twin(device, INSTALLER).desired.get("packages") or {})


def test_issue_reproduction_ring_rollout_without_base_is_refused_and_loses_nothing(
        hub: HubThread, config: CloudConfig) -> None:  # noqa: F811
    service = HubService(config.iothub_connection_string)
    edge_device(service, hub, "edge-device-1", modules=MODULES)
    manifest = render_manifest(config, default_template(), "amd64")
    deploy_to_device(service, "edge-device-1", manifest)                  # edb cloud deploy
    service.set_device_tags("edge-device-1", {"ring": "canary"})          # edb cloud tag ... ring=canary
    rollout_to_device(service, "edge-device-1", release("other", "1.0.0"))  # rollout other --version 1.0.0
    rollout_to_device(service, "edge-device-1", release("digits", "1.1.0"))
    before = packages(service, "edge-device-1")
    assert set(before) == {"other", "digits"}

    with pytest.raises(CompositionError) as refused:                      # rollout digits 2.0.0 --ring canary
        rollout_to_ring(service, "canary", release("digits", "2.0.0"))
    assert refused.value.code == "CLOUD_ROLLOUT_NO_BASE"
    assert "edge-device-1" in refused.value.message and "edb cloud deploy --target-condition" in refused.value.message
    assert packages(service, "edge-device-1") == before
    assert deployment_views(service) == []  # nothing was created

    # The hub stand-in: a layer that bypasses the orchestrator does not apply without a base either
    # (Targeted, not Applied) and leaves the twin alone instead of replacing ``packages``.
    content = {"$edgeAgent": {}, INSTALLER: {"properties.desired.packages.digits":
                                             release("digits", "2.0.0").desired().to_twin()}}
    service.put_deployment("raw-layer", content, target_condition="tags.ring='canary'", priority=20)
    assert packages(service, "edge-device-1") == before
    applied = service.query("SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' "
                            "AND configurations.[[raw-layer]].status = 'Applied'")
    targeted = service.query("SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' "
                             "AND configurations.[[raw-layer]].status = 'Targeted'")
    assert applied == [] and [row.device_id for row in targeted] == ["edge-device-1"]


def test_base_with_carried_packages_then_layers_keep_every_package(
        hub: HubThread, config: CloudConfig) -> None:  # noqa: F811
    service = HubService(config.iothub_connection_string)
    for device in ("c-1", "c-2"):
        edge_device(service, hub, device, {"ring": "canary"}, MODULES)
    manifest = render_manifest(config, default_template(), "amd64")
    for device in ("c-1", "c-2"):
        deploy_to_device(service, device, manifest)
        rollout_to_device(service, device, release("other", "1.0.0"))
    rollout_to_device(service, "c-2", release("extra", "1.0.0"))  # only c-2 wants it

    # a base replaces per-device content: refused while a device would lose a package
    with pytest.raises(CompositionError) as refused:
        deploy_to_fleet(service, "edb-base", manifest, target_condition="tags.ring='canary'", priority=10)
    assert refused.value.code == "CLOUD_ROLLOUT_WOULD_REMOVE" and "c-1: other" in refused.value.message
    with pytest.raises(CompositionError) as still:  # carrying the common pointer is not enough for c-2
        deploy_to_fleet(service, "edb-base", manifest, target_condition="tags.ring='canary'", priority=10,
                        carry_packages=True)
    assert still.value.code == "CLOUD_ROLLOUT_WOULD_REMOVE" and "c-2: extra" in still.value.message
    assert "c-1" not in still.value.message
    assert deployment_views(service) == []
    deploy_to_fleet(service, "edb-base", manifest, target_condition="tags.ring='canary'", priority=10,
                    carry_packages=True, allow_remove=True)
    assert packages(service, "c-1") == {"other": release("other", "1.0.0").desired().to_twin()}
    assert set(packages(service, "c-2")) == {"other"}

    # ring rollouts are layers over the base: every other package stays, each version its own layer
    first = rollout_to_ring(service, "canary", release("digits", "2.0.0"))
    assert set(packages(service, "c-1")) == {"other", "digits"}
    second = rollout_to_ring(service, "canary", release("digits", "3.0.0"))
    assert first != second and packages(service, "c-1")["digits"]["version"] == "3.0.0"
    assert set(packages(service, "c-1")) == {"other", "digits"}
    ids = {d.id: d for d in deployment_views(service)}
    assert set(ids) == {"edb-base", second} and ids[second].priority > 20  # the old layer went after
    # a twin patch on a device automatic deployments manage would be overwritten by IoT Hub: refused
    with pytest.raises(CompositionError) as managed:
        rollout_to_device(service, "c-1", release("digits", "4.0.0"))
    assert managed.value.code == "CLOUD_ROLLOUT_DEVICE_MANAGED"
    with pytest.raises(CloudError) as set_modules:  # and so is set-modules (module-deployment-monitoring)
        deploy_to_device(service, "c-1", manifest)
    assert set_modules.value.code == "CLOUD_ROLLOUT_DEVICE_MANAGED"
    assert packages(service, "c-1")["digits"]["version"] == "3.0.0"


async def test_rollout_deployment_metrics_as_iot_hub_fills_them(hub: HubThread, config: CloudConfig,  # noqa: F811
                                                                 stack_ca: StackCA) -> None:
    """systemMetrics (queries + results) and the rollout's custom metrics, read with the service SDK,
    follow what the devices' $edgeAgent, installer and runner report."""
    from azure.iot.device.aio import IoTHubModuleClient
    from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager

    from edb.iothub_ca import pin_ca

    service = HubService(config.iothub_connection_string)
    for device in ("m-1", "m-2"):
        edge_device(service, hub, device, {"ring": "canary"}, MODULES)
    edge_device(service, hub, "m-out", {"ring": "prod"}, MODULES)
    manifest = render_manifest(config, default_template(), "amd64")
    deploy_to_fleet(service, "edb-base", manifest, target_condition="tags.ring='canary' OR tags.ring='prod'",
                    priority=10)
    deployment_id = rollout_to_ring(service, "canary", release("digits", "2.0.0"))
    configs = pin_ca(IoTHubConfigurationManager.from_connection_string(config.iothub_connection_string),
                     config.ca_cert)
    deployment = configs.get_configuration(deployment_id)
    assert deployment.metrics.queries == rollout_metrics(release("digits", "2.0.0"))
    assert deployment.metrics.results == {"installed": 0, "failed": 0, "serving": 0, "servingOther": 0}
    assert deployment.system_metrics.queries["appliedCount"] == (
        "select deviceId from devices.modules where moduleId = '$edgeAgent' "  # noqa: S608
        f"and configurations.[[{deployment_id}]].status = 'Applied'")
    assert deployment.system_metrics.results == {"targetedCount": 2, "appliedCount": 2,
                                                 "reportedSuccessfulCount": 0, "reportedFailedCount": 0}

    registry = IoTHubRegistryManager.from_connection_string(config.iothub_connection_string)
    agent_version = service.module_twin("m-1", "$edgeAgent").desired["$version"]
    reports = [("m-1", "$edgeAgent", {"lastDesiredVersion": agent_version, "lastDesiredStatus": {"code": 200}}),
               ("m-2", "$edgeAgent", {"lastDesiredVersion": service.module_twin("m-2", "$edgeAgent").desired[
                   "$version"], "lastDesiredStatus": {"code": 500}}),
               ("m-1", INSTALLER, {"packages": {"digits": {"state": "installed", "version": "2.0.0"}}}),
               ("m-2", INSTALLER, {"packages": {"digits": {"state": "failed", "version": "2.0.0"}}}),
               ("m-1", "inference_runner", {"model": {"name": "digits", "version": "2.0.0", "state": "serving"}}),
               ("m-2", "inference_runner", {"model": {"name": "digits", "version": "1.0.0", "state": "serving"}})]
    for device, module, reported in reports:
        keys = registry.get_module(device, module).authentication.symmetric_key
        client = IoTHubModuleClient.create_from_connection_string(
            hub.config.module_connection_string(device, module, keys.primary_key),
            server_verification_cert=stack_ca.ca_pem)
        try:
            await client.connect()
            await client.patch_twin_reported_properties(reported)
        finally:
            await client.shutdown()
    deployment = configs.get_configuration(deployment_id)
    assert deployment.system_metrics.results == {"targetedCount": 2, "appliedCount": 2,
                                                 "reportedSuccessfulCount": 1, "reportedFailedCount": 1}
    assert deployment.metrics.results == {"installed": 1, "failed": 1, "serving": 1, "servingOther": 1}
    base = configs.get_configuration("edb-base")
    assert base.system_metrics.results["targetedCount"] == 3 and base.system_metrics.results["appliedCount"] == 3


# -- the pure model ----------------------------------------------------------------------------

def view(cid: str, priority: int, content: dict[str, Any], targets: set[str], created: str = "1") -> DeploymentView:
    return DeploymentView(cid, priority, created, DeploymentView.is_layered_content(content), content,
                          frozenset(targets))


BASE = {"$edgeAgent": {"properties.desired": {}}, INSTALLER: {"properties.desired": {"packages": {"a": {"v": 1}}}}}


def layer(name: str, version: int) -> dict[str, Any]:
    return {"$edgeAgent": {}, INSTALLER: {f"properties.desired.packages.{name}": {"v": version}}}


def test_composition_follows_iot_hub_priority_rules() -> None:
    base, low_base = view("base", 10, BASE, {"d"}), view("low", 5, {**BASE, INSTALLER: {"properties.desired": {}}},
                                                           {"d"})
    deployments = [base, low_base, view("l1", 20, layer("b", 1), {"d"}), view("l2", 30, layer("b", 2), {"d"}),
                   view("under", 9, layer("c", 1), {"d"})]
    assert composed_packages("d", deployments) == {"a": {"v": 1}, "b": {"v": 2}}  # under the base: not applied
    assert composed_packages("x", deployments) is None
    whole = view("whole", 40, {"$edgeAgent": {}, INSTALLER: {"properties.desired": {"packages": {"z": {}}}}}, {"d"})
    assert composed_packages("d", [*deployments, whole]) == {"z": {}}  # a whole desired overwrites lower ones


def test_removals_count_installed_packages_not_only_desired_ones() -> None:
    device = DevicePackages("d", {"a": {"v": 1}}, {"a": "1", "legacy": "0.9"})
    assert [(r.device_id, r.packages) for r in removals([device], [view("base", 10, BASE, {"d"})])] == \
        [("d", ("legacy",))]
    per_device = DevicePackages("p", {"a": {"v": 1}}, {})
    assert removals([per_device], [view("base", 10, BASE, {"d"})]) == []  # untargeted: keeps its own content


def test_layer_below_the_base_is_refused() -> None:
    devices = [DevicePackages("d", {"a": {"v": 1}}, {"a": "1"})]
    with pytest.raises(CompositionError) as low:
        check_layer_rollout(view("l", 10, layer("b", 1), {"d"}), devices, [view("base", 10, BASE, {"d"})])
    assert low.value.code == "CLOUD_ROLLOUT_PRIORITY"
    check_layer_rollout(view("l", 11, layer("b", 1), {"d"}), devices, [view("base", 10, BASE, {"d"})])
