"""``edb cloud rollout`` / ``rollback``: point devices at a published package version.

One device: a module twin desired patch ``packages.<name> = {version, url, sha256, size}`` on
``package_installer`` (and, with ``--min-version``, ``model.minVersion`` on ``inference_runner``).
A ring: a layered deployment that sets ``properties.desired.packages.<name>`` on every device whose
twin tags match (``tags.ring = '<ring>'``), above the base deployment's priority; refused where
a device has no base or would lose a package (``edb_cloud.composition``, docs/orchestrator.md).
Only a pointer travels: never a key, never the model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edb.schemas import PackageState, ReportedPackage
from edb_cloud.composition import (
    DeploymentView,
    DevicePackages,
    check_device_rollout,
    check_layer_rollout,
)
from edb_cloud.iothub import CloudError, HubService, ModuleTwin
from edb_cloud.releases import Release

INSTALLER = "package_installer"
RUNNER = "inference_runner"
_RING = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def installer_patch(release: Release) -> dict[str, Any]:
    return {"packages": {release.name: release.desired().to_twin()}}


def missing_module_error(device_id: str, module_id: str, agent: ModuleTwin | None) -> CloudError:
    """Why a module twin of an existing device is missing, from its ``$edgeAgent`` twin (pure): the
    module identity appears only once the device's edge agent applied a deployment that has it."""
    if agent is None:
        return CloudError(f"device {device_id} not found (or not an IoT Edge device)", code="CLOUD_NOT_FOUND")
    status = agent.reported.get("lastDesiredStatus") or {}
    code = status.get("code") if isinstance(status, dict) else None
    if isinstance(code, int) and code != 200:
        return CloudError(
            f"{module_id} is not running on {device_id}: its edge agent refused the last deployment (version "
            f"{agent.reported.get('lastDesiredVersion')}: {code} {str(status.get('description', ''))[:300]}); "
            "fix it and run `edb cloud deploy` again", code="CLOUD_DEPLOYMENT_NOT_APPLIED")
    modules = (agent.desired.get("modules") or {}) if isinstance(agent.desired.get("modules"), dict) else {}
    if module_id not in modules:
        return CloudError(f"{module_id} is not in the deployment of {device_id}: run `edb cloud deploy` first",
                          code="CLOUD_MODULE_NOT_DEPLOYED")
    return CloudError(f"{module_id} on {device_id} has not been created by its edge agent yet (is the agent "
                      "running and connected?)", code="CLOUD_DEPLOYMENT_NOT_APPLIED")


def _patch_module(hub: HubService, device_id: str, module_id: str, patch: dict[str, Any]) -> None:
    try:
        hub.patch_module_desired(device_id, module_id, patch)
    except CloudError as exc:
        if exc.code != "CLOUD_NOT_FOUND":
            raise
        try:
            agent: ModuleTwin | None = hub.module_twin(device_id, "$edgeAgent")
        except CloudError as inner:
            if inner.code != "CLOUD_NOT_FOUND":
                raise
            agent = None
        raise missing_module_error(device_id, module_id, agent) from None


def rollout_to_device(hub: HubService, device_id: str, release: Release, *, min_version: str | None = None,
                      check: bool = True) -> None:
    """A module twin patch; refused on a device whose installer automatic deployments manage
    (IoT Hub would overwrite the patch: CLOUD_ROLLOUT_DEVICE_MANAGED)."""
    if check:
        check_device_rollout(device_id, deployment_views(hub))
    _patch_module(hub, device_id, INSTALLER, installer_patch(release))
    if min_version is not None:
        _patch_module(hub, device_id, RUNNER, {"model": {"name": release.name, "minVersion": min_version}})


def ring_deployment_id(name: str, ring: str, version: str | None = None) -> str:
    """A deployment's content is immutable in IoT Hub: each version gets its own id (the old one is
    deleted after the new one exists, so the package is desired at every moment)."""
    base = f"edb-rollout-{name}-{ring}"
    return (base if version is None else f"{base}-v{re.sub(r'[^A-Za-z0-9]', '-', version)}").lower()[:128]


def _quoted(value: str) -> str:
    return value.replace("'", "''")


def rollout_metrics(release: Release) -> dict[str, str]:
    """Custom metric queries of a rollout's deployment (IoT Hub counts the rows; <= 5 per configuration)."""
    name, version = f"[[{release.name}]]", _quoted(release.version)
    # names and versions are checked shapes (check_package_name, semver) and quoted: no injection
    installer = f"SELECT deviceId FROM devices.modules WHERE moduleId = '{INSTALLER}'"  # noqa: S608
    runner = (f"SELECT deviceId FROM devices.modules WHERE moduleId = '{RUNNER}' "  # noqa: S608
              f"AND properties.reported.model.name = '{_quoted(release.name)}' "
              "AND properties.reported.model.state = 'serving'")
    return {
        "installed": f"{installer} AND properties.reported.packages.{name}.state = 'installed' "
                     f"AND properties.reported.packages.{name}.version = '{version}'",
        "failed": f"{installer} AND properties.reported.packages.{name}.state = 'failed' "
                  f"AND properties.reported.packages.{name}.version = '{version}'",
        "serving": f"{runner} AND properties.reported.model.version = '{version}'",
        "servingOther": f"{runner} AND properties.reported.model.version != '{version}'",
    }


def deployment_views(hub: HubService) -> list[DeploymentView]:
    """Every edge deployment with the devices its condition targets now (one query each)."""
    views = []
    for config in hub.deployments():
        content = getattr(getattr(config, "content", None), "modules_content", None)
        if not content:
            continue
        created = getattr(config, "created_time_utc", None)
        views.append(DeploymentView(
            id=config.id, priority=int(config.priority or 0), created=str(created or ""),
            layered=DeploymentView.is_layered_content(content), modules_content=content,
            targets=frozenset(hub.edge_devices(config.target_condition or "")), labels=dict(config.labels or {})))
    return views


def device_packages(hub: HubService) -> list[DevicePackages]:
    """What every device's installer wants and has installed now (one paged module twin query)."""
    found = []
    for twin in hub.module_twins(INSTALLER):
        desired = twin.desired.get("packages") if isinstance(twin.desired.get("packages"), dict) else {}
        installed = {}
        for name, value in (twin.reported.get("packages") or {}).items():
            reported = ReportedPackage.from_twin(value)
            if reported is None:
                continue
            version = reported.installed_version or (
                reported.version if reported.state is PackageState.INSTALLED else None)
            if version:
                installed[name] = version
        found.append(DevicePackages(twin.device_id, {k: v for k, v in (desired or {}).items()
                                                     if not k.startswith("$")}, installed))
    return found


def put_layer(hub: HubService, deployment_id: str, target_condition: str, release: Release, *, priority: int,
              labels: dict[str, str], allow_remove: bool = False,
              current: list[DeploymentView] | None = None) -> DeploymentView:
    """Check, then create, a layered deployment that points the targeted devices at ``release``."""
    current = deployment_views(hub) if current is None else current
    content = {"$edgeAgent": {},  # IoT Hub: every layered deployment carries an $edgeAgent object
               INSTALLER: {f"properties.desired.packages.{release.name}": release.desired().to_twin()}}
    layer = DeploymentView(deployment_id, priority, "~", True, content,
                           frozenset(hub.edge_devices(target_condition)), labels)
    check_layer_rollout(layer, device_packages(hub), [d for d in current if d.id != deployment_id],
                        allow_remove=allow_remove)
    hub.put_deployment(deployment_id, content, target_condition=target_condition, priority=priority,
                       labels=labels, metrics=rollout_metrics(release))
    return layer


def rollout_to_ring(hub: HubService, ring: str, release: Release, *, priority: int = 20,
                    allow_remove: bool = False) -> str:
    """A layered deployment for devices tagged ``ring=<ring>``; refused without a base under every
    targeted device (CLOUD_ROLLOUT_NO_BASE) or when a device would lose a package."""
    if not _RING.match(ring):
        raise ValueError("a ring is a tag value of letters, digits, '-' and '_'")
    deployment_id = ring_deployment_id(release.name, ring, release.version)
    current = deployment_views(hub)
    older = [d for d in current if d.labels.get("package") == release.name and d.labels.get("ring") == ring
             and d.id != deployment_id]
    # the new layer must win over the ring's previous one on every device both target
    priority = max([priority, *(d.priority + 1 for d in older)])
    labels = {"app": "edb", "kind": "rollout", "package": release.name, "version": release.version, "ring": ring}
    put_layer(hub, deployment_id, f"tags.ring='{ring}'", release, priority=priority, labels=labels,
              allow_remove=allow_remove, current=current)
    for old in older:  # the new layer is in place: the old one can go without a gap
        hub.delete_deployment(old.id)
    return deployment_id


@dataclass(frozen=True)
class Outcome:
    device_id: str
    state: str  # installed / failed / timeout
    reported: ReportedPackage | None
    serving: str | None  # the runner's serving version


def wait_for_install(hub: HubService, device_id: str, release: Release, *, timeout_s: float = 120.0,
                     poll_s: float = 1.0, on_update: Callable[[str], None] | None = None,
                     require_serving: bool = False) -> Outcome:
    """Poll the installer's reported state (and the runner's) until this version is installed
    (and serving) or failed, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    reported: ReportedPackage | None = None
    serving: str | None = None
    while True:
        twin = hub.module_twin(device_id, INSTALLER)
        reported = ReportedPackage.from_twin((twin.reported.get("packages") or {}).get(release.name))
        if require_serving:
            model = hub.module_twin(device_id, RUNNER).reported.get("model") or {}
            serving = model.get("version") if model.get("state") == "serving" else None
        if reported is not None and on_update is not None:
            on_update(f"{reported.state.value} {reported.version or ''}".strip()
                      + (f" ({reported.error.code})" if reported.error else "")
                      + (f", serving {serving}" if require_serving else ""))
        # The same version may be installed already from another package file (a re-publish, or a
        # tampered copy): only a report about *this* file counts.
        if reported is not None and reported.version == release.version and reported.sha256 == release.sha256:
            if reported.state is PackageState.FAILED:
                return Outcome(device_id, "failed", reported, serving)
            if reported.state is PackageState.INSTALLED and (not require_serving or serving == release.version):
                return Outcome(device_id, "installed", reported, serving)
        if time.monotonic() >= deadline:
            return Outcome(device_id, "timeout", reported, serving)
        time.sleep(poll_s)
