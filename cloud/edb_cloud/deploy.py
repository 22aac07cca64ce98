"""``edb cloud deploy``: the expanded deployment manifest to one device or to a fleet.

To one device it then waits until the device's edge agent has applied it: ``$edgeAgent`` reports
``lastDesiredVersion`` >= the deployment's desired ``$version`` with ``lastDesiredStatus.code`` 200.
Any other code is the device refusing it (``CLOUD_DEPLOY_REFUSED`` with the device's code and
description, e.g. 400 for a module image the agent cannot run); no answer in time is
``CLOUD_DEPLOY_TIMEOUT``. IoT Hub accepting the manifest says nothing about the device.

One device: ``applyConfigurationContent`` (what ``az iot edge set-modules`` does). A fleet: an
automatic deployment (``targetCondition`` over device twin tags, ``priority``). Because a
manifest's desired properties *replace* the module twins' desired properties, a redeploy to one
device keeps the package pointers currently desired (``packages``) unless told to reset them:
redeploying the module suite must not uninstall models by accident.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edb_cloud.config import CloudConfig
from edb_cloud.iothub import CloudError, HubService
from edb_cloud.manifest import project_endpoints, require_valid
from edb_cloud.template import expand_template_file

INSTALLER = "package_installer"
AGENT = "$edgeAgent"


@dataclass(frozen=True)
class DeviceVerdict:
    """What the device's edge agent says about a deployment: ``applied``, ``refused`` or ``pending``."""

    state: str
    code: int | None = None
    description: str = ""
    reported_version: int | None = None


def deployment_verdict(desired_version: int, reported: Mapping[str, Any]) -> DeviceVerdict:
    """Judge ``$edgeAgent``'s reported properties against the desired ``$version`` we deployed (pure).
    A report about an older desired version is pending: the agent has not seen ours yet."""
    last = reported.get("lastDesiredVersion")
    status = reported.get("lastDesiredStatus")
    if isinstance(last, bool) or not isinstance(last, int) or last < desired_version or not isinstance(status, Mapping):
        return DeviceVerdict("pending", reported_version=last if isinstance(last, int) else None)
    code = status.get("code")
    description = str(status.get("description") or "")[:500]
    if code == 200:
        return DeviceVerdict("applied", 200, description, last)
    if isinstance(code, int) and not isinstance(code, bool):
        return DeviceVerdict("refused", code, description, last)
    return DeviceVerdict("pending", reported_version=last)


def wait_for_deployment(hub: HubService, device_id: str, desired_version: int, *, timeout_s: float,
                        poll_s: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic) -> DeviceVerdict:
    """Poll ``$edgeAgent`` until the device applied or refused ``desired_version``; raises
    CLOUD_DEPLOY_REFUSED or CLOUD_DEPLOY_TIMEOUT."""
    deadline = clock() + timeout_s
    while True:
        verdict = deployment_verdict(desired_version, hub.module_twin(device_id, AGENT).reported)
        if verdict.state == "applied":
            return verdict
        if verdict.state == "refused":
            raise CloudError(f"device {device_id} refused deployment version {verdict.reported_version}: "
                             f"{verdict.code} {verdict.description}".rstrip(), code="CLOUD_DEPLOY_REFUSED",
                             device_code=verdict.code, device_description=verdict.description)
        if clock() >= deadline:
            seen = ("no report" if verdict.reported_version is None
                    else f"last report for version {verdict.reported_version}")
            raise CloudError(f"device {device_id} did not report deployment version {desired_version} within "
                             f"{timeout_s:g} s ({seen}; is its edge agent running and connected?)",
                             code="CLOUD_DEPLOY_TIMEOUT")
        sleep(poll_s)


def default_template() -> Path:
    return Path(__file__).resolve().parents[2] / "deployment.template.json"


def render_manifest(config: CloudConfig, template: Path, platform: str) -> dict[str, Any]:
    """Expand the template (iotedgedev rules), check IoT Edge's manifest rules, write config/."""
    modules_dir = template.resolve().parent / "modules"
    manifest = expand_template_file(template, config.template_env(), modules_dir=modules_dir, platform=platform)
    require_valid(manifest, project_endpoints())
    return manifest


def with_current_packages(manifest: dict[str, Any], current_desired: dict[str, Any]) -> dict[str, Any]:
    """The manifest with the device's currently desired ``packages`` carried over (pure)."""
    packages = current_desired.get("packages")
    if not isinstance(packages, dict) or not packages:
        return manifest
    out = copy.deepcopy(manifest)
    desired = out["modulesContent"].setdefault(INSTALLER, {}).setdefault("properties.desired", {})
    desired["packages"] = {**packages, **(desired.get("packages") or {})}
    return out


def deploy_to_device(hub: HubService, device_id: str, manifest: dict[str, Any], *, keep_packages: bool = True) -> \
        dict[str, Any]:
    """set-modules. Refused on a device automatic deployments target: "once you start targeting IoT Edge
    devices with automatic deployments, per-device deployments are no longer supported"
    (module-deployment-monitoring), and the next evaluation would replace what it wrote."""
    from edb_cloud.composition import is_automatic
    from edb_cloud.rollout import deployment_views

    views = deployment_views(hub)
    if is_automatic(device_id, views):
        ids = ", ".join(sorted(v.id for v in views if device_id in v.targets))
        raise CloudError(f"{device_id} is targeted by automatic deployments ({ids}); IoT Hub does not support "
                         "per-device deployments on it: change the base deployment (deploy --target-condition) "
                         "instead", code="CLOUD_ROLLOUT_DEVICE_MANAGED")
    if keep_packages:
        try:
            current = hub.module_twin(device_id, INSTALLER).desired
        except CloudError as exc:
            if exc.code != "CLOUD_NOT_FOUND":
                raise
            current = {}
        manifest = with_current_packages(manifest, current)
    hub.apply_deployment(device_id, manifest["modulesContent"])
    return manifest


def deployed_version(hub: HubService, device_id: str) -> int:
    """The desired ``$version`` of ``$edgeAgent`` right after a deployment: what the device must report."""
    version = hub.module_twin(device_id, AGENT).desired.get("$version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise CloudError(f"{AGENT} twin of {device_id} has no desired $version", code="CLOUD_IOTHUB_FAILED")
    return version


def deploy_to_fleet(hub: HubService, deployment_id: str, manifest: dict[str, Any], *, target_condition: str,
                    priority: int, carry_packages: bool = False, allow_remove: bool = False) -> dict[str, Any]:
    """A base automatic deployment. It replaces the per-device content of every device it targets, so
    it is refused when a device would lose a package (CLOUD_ROLLOUT_WOULD_REMOVE) unless removals are
    allowed; ``carry_packages`` puts into the base the pointers every targeted device desires alike."""
    from edb_cloud.composition import DeploymentView, check_removals, common_packages
    from edb_cloud.rollout import deployment_views, device_packages

    current = [d for d in deployment_views(hub) if d.id != deployment_id]
    devices = device_packages(hub)
    targets = frozenset(hub.edge_devices(target_condition))
    if carry_packages:
        carried = common_packages(d for d in devices if d.device_id in targets)
        if carried:
            manifest = with_current_packages(manifest, {"packages": carried})
    base = DeploymentView(deployment_id, priority, "~", False, manifest["modulesContent"], targets)
    check_removals(devices, [*current, base], allow_remove=allow_remove)
    hub.put_deployment(deployment_id, manifest["modulesContent"], target_condition=target_condition,
                       priority=priority, labels={"app": "edb", "kind": "base"})
    return manifest


def write_manifest(config: CloudConfig, manifest: dict[str, Any], platform: str) -> Path:
    """Like iotedgedev: ``config/deployment.<platform>.json`` (under the state dir; it is generated)."""
    import json

    path = config.state_dir / "config" / f"deployment.{platform}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path
