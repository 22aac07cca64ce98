"""``edb cloud rollout`` / ``rollback``: point devices at a published package version.

One device: a module twin desired patch ``packages.<name> = {version, url, sha256, size}`` on
``package_installer`` (and, with ``--min-version``, ``model.minVersion`` on ``inference_runner``).
A ring: a layered deployment that sets ``properties.desired.packages.<name>`` on every device whose
twin tags match (``tags.ring = '<ring>'``), above the base deployment's priority.
Only a pointer travels: never a key, never the model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edb.schemas import PackageState, ReportedPackage
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


def rollout_to_device(hub: HubService, device_id: str, release: Release, *, min_version: str | None = None) -> None:
    _patch_module(hub, device_id, INSTALLER, installer_patch(release))
    if min_version is not None:
        _patch_module(hub, device_id, RUNNER, {"model": {"name": release.name, "minVersion": min_version}})


def ring_deployment_id(name: str, ring: str) -> str:
    return f"edb-rollout-{name}-{ring}".lower()


def rollout_to_ring(hub: HubService, ring: str, release: Release, *, priority: int = 20) -> str:
    if not _RING.match(ring):
        raise ValueError("a ring is a tag value of letters, digits, '-' and '_'")
    deployment_id = ring_deployment_id(release.name, ring)
    content = {INSTALLER: {f"properties.desired.packages.{release.name}": release.desired().to_twin()}}
    hub.put_deployment(deployment_id, content, target_condition=f"tags.ring='{ring}'", priority=priority,
                       labels={"app": "edb", "kind": "rollout", "package": release.name, "version": release.version})
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
