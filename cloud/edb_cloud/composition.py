"""How a device's desired ``packages`` is composed, and the checks that keep a rollout from losing one.

Pure code: the orchestrator reads the configurations and twins at the edges (``edb_cloud.iothub``),
these functions decide. The model (docs/orchestrator.md, "Where a device's packages come from"):

- A device is **per-device** (no automatic deployment targets it): its ``package_installer``
  desired ``packages`` is whatever ``edb cloud deploy --device`` (set-modules) and module twin
  patches (``rollout --device``) wrote.
- A device is **automatic** (some automatic deployment targets it): its desired properties are the
  base deployment's (highest priority, ties to the newest) with every layered deployment that outranks
  the base merged on top in ascending priority. IoT Hub overwrites per-device twin edits of a module a
  deployment manages, so a twin patch does not last there.
- A layer applies only over an applied base it outranks. Without a base it is merely *Targeted*.

The checks: a ring/phase rollout needs a base on every device it targets (``CLOUD_ROLLOUT_NO_BASE``);
a per-device rollout on an automatic device is refused (``CLOUD_ROLLOUT_DEVICE_MANAGED``); any change
after which a device would no longer be desired a package it serves or wants now is refused unless
the caller allows removals (``CLOUD_ROLLOUT_WOULD_REMOVE``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edb.errors import EdbError

INSTALLER = "package_installer"
DESIRED = "properties.desired"
_PACKAGES = DESIRED + ".packages"


class CompositionError(EdbError):
    code = "CLOUD_ROLLOUT_REFUSED"


@dataclass(frozen=True)
class DeploymentView:
    """An automatic deployment as the orchestrator sees it: what it is and which devices it targets."""

    id: str
    priority: int
    created: str
    layered: bool
    modules_content: Mapping[str, Any]
    targets: frozenset[str]
    labels: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def is_layered_content(modules_content: Mapping[str, Any]) -> bool:
        agent = modules_content.get("$edgeAgent")
        return not (isinstance(agent, Mapping) and DESIRED in agent)


@dataclass(frozen=True)
class DevicePackages:
    """What one device wants and serves now."""

    device_id: str
    desired: Mapping[str, Any]            # installer desired packages (name -> pointer)
    installed: Mapping[str, str]          # name -> installed version the installer reports


def installer_packages(modules_content: Mapping[str, Any], into: dict[str, Any]) -> None:
    """Apply one deployment's installer content to a ``packages`` map, in place (IoT Hub's merge)."""
    content = modules_content.get(INSTALLER)
    if not isinstance(content, Mapping):
        return
    if DESIRED in content:  # a whole properties.desired replaces what lower deployments set
        whole = content[DESIRED]
        into.clear()
        packages = whole.get("packages") if isinstance(whole, Mapping) else None
        if isinstance(packages, Mapping):
            into.update(copy.deepcopy(dict(packages)))
    for key in sorted(content):
        if key == _PACKAGES:
            into.clear()
            if isinstance(content[key], Mapping):
                into.update(copy.deepcopy(dict(content[key])))
        elif key.startswith(_PACKAGES + "."):
            name = key[len(_PACKAGES) + 1:].split(".", 1)[0]
            into[name] = copy.deepcopy(content[key])


def _order(d: DeploymentView) -> tuple[int, str]:
    return d.priority, d.created


def applying(device_id: str, deployments: Iterable[DeploymentView]) -> tuple[DeploymentView | None,
                                                                               list[DeploymentView]]:
    """The base and the layers (ascending priority) that apply to a device, by IoT Hub's rules."""
    targeting = [d for d in deployments if device_id in d.targets]
    bases = [d for d in targeting if not d.layered]
    if not bases:
        return None, []
    base = max(bases, key=_order)
    layers = sorted((d for d in targeting if d.layered and d.priority > base.priority), key=_order)
    return base, layers


def is_automatic(device_id: str, deployments: Iterable[DeploymentView]) -> bool:
    return any(device_id in d.targets for d in deployments)


def composed_packages(device_id: str, deployments: Iterable[DeploymentView]) -> dict[str, Any] | None:
    """The desired ``packages`` the hub gives the device; None when no base applies (per-device)."""
    base, layers = applying(device_id, deployments)
    if base is None:
        return None
    packages: dict[str, Any] = {}
    for deployment in (base, *layers):
        installer_packages(deployment.modules_content, packages)
    return packages


@dataclass(frozen=True)
class Removal:
    device_id: str
    packages: tuple[str, ...]


def predicted_desired(device: DevicePackages, deployments: list[DeploymentView]) -> dict[str, Any]:
    """What the device's desired ``packages`` will be under these deployments."""
    composed = composed_packages(device.device_id, deployments)
    if composed is None:  # not under automatic deployments: per-device content stays
        return dict(device.desired)
    return composed


def removals(devices: Iterable[DevicePackages], after: list[DeploymentView]) -> list[Removal]:
    """Devices that would no longer be desired a package they want or serve now."""
    found = []
    for device in devices:
        keep = predicted_desired(device, after)
        lost = sorted((set(device.desired) | set(device.installed)) - set(keep))
        if lost:
            found.append(Removal(device.device_id, tuple(lost)))
    return found


def _name_devices(ids: Iterable[str], limit: int = 10) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:limit]) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def check_layer_rollout(layer: DeploymentView, devices: list[DevicePackages], current: list[DeploymentView], *,
                        allow_remove: bool = False) -> None:
    """Refuse a layered deployment that would not apply (no base) or would remove a package."""
    without_base = [d for d in sorted(layer.targets) if applying(d, current)[0] is None]
    if without_base:
        raise CompositionError(
            f"no base automatic deployment on {_name_devices(without_base)}: a layered deployment applies only on "
            "top of one (IoT Hub), and without it the devices' packages would be at risk. Fix: `edb cloud deploy "
            "--target-condition \"<condition>\" --carry-packages` first (a base at a priority below the rollout's), "
            "then roll out again", code="CLOUD_ROLLOUT_NO_BASE")
    base_priorities = {d: applying(d, current)[0].priority for d in layer.targets}  # type: ignore[union-attr]
    outranked = [d for d, p in base_priorities.items() if p >= layer.priority]
    if outranked:
        raise CompositionError(f"priority {layer.priority} does not outrank the base deployment on "
                               f"{_name_devices(outranked)}: the layer would not apply", code="CLOUD_ROLLOUT_PRIORITY")
    check_removals(devices, [*current, layer], allow_remove=allow_remove)


def check_removals(devices: list[DevicePackages], after: list[DeploymentView], *, allow_remove: bool) -> None:
    lost = removals(devices, after)
    if lost and not allow_remove:
        detail = "; ".join(f"{r.device_id}: {', '.join(r.packages)}" for r in lost[:10])
        raise CompositionError(f"this change would remove packages from {len(lost)} device(s) ({detail}); pass "
                               "--allow-remove to do it on purpose", code="CLOUD_ROLLOUT_WOULD_REMOVE")


def check_device_rollout(device_id: str, current: list[DeploymentView]) -> None:
    """A module twin patch on a device whose installer an automatic deployment manages does not last."""
    if is_automatic(device_id, current):
        ids = sorted(d.id for d in current if device_id in d.targets)
        raise CompositionError(
            f"{device_id} is managed by automatic deployments ({', '.join(ids)}): IoT Hub overwrites twin edits of "
            "the modules they manage, so a per-device rollout would not last. Use --ring/--plan (a layered "
            "deployment)", code="CLOUD_ROLLOUT_DEVICE_MANAGED")


def common_packages(devices: Iterable[DevicePackages]) -> dict[str, Any]:
    """The package pointers every given device desires identically (what a new base can carry)."""
    devices = list(devices)
    if not devices:
        return {}
    common = dict(devices[0].desired)
    for device in devices[1:]:
        common = {k: v for k, v in common.items() if device.desired.get(k) == v}
    return common
