"""The fleet's description on disk (``<state>/fleet/fleet.json``) and fault assignment. Pure code.

A simulated device is an IoT Hub edge identity with its installer, runner and reporter module
identities (SAS keys), a provisioned TEE state directory (its own HUK, attestation key, sealed
identity and rollback floors), and the faults injected into it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODULES = ("package_installer", "inference_runner", "telemetry_reporter")
FAULTS = ("fail_load", "offline", "slow")


@dataclass(frozen=True)
class Faults:
    fail_load: str | None = None   # the runner fails to load this version ("*": any version)
    offline: bool = False          # the device never connects (registered, never reports)
    slow_s: float = 0.0            # delay added before every install and every inference


@dataclass(frozen=True)
class SimDevice:
    device_id: str
    device_dir: str
    keys: dict[str, str]           # module id -> SAS key (stays in the 0600 fleet file, never logged)
    faults: Faults = field(default_factory=Faults)

    @staticmethod
    def from_json(doc: dict[str, Any]) -> SimDevice:
        return SimDevice(doc["device_id"], doc["device_dir"], dict(doc["keys"]), Faults(**doc.get("faults", {})))


@dataclass
class FleetSpec:
    hub_name: str
    gateway: str
    ca_cert: str
    key_release_url: str
    tag: str
    devices: list[SimDevice]
    pids: dict[str, int] = field(default_factory=dict)   # process name -> pid
    frame_interval_s: float = 2.0
    package_hosts: str = ""  # the devices' EDB_PACKAGE_HOSTS (the stack's blob address): empty allows no HTTPS

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> FleetSpec:
        doc = json.loads(path.read_text())
        doc["devices"] = [SimDevice.from_json(d) for d in doc["devices"]]
        return FleetSpec(**doc)

    def connection_string(self, device: SimDevice, module_id: str) -> str:
        return (f"HostName={self.hub_name};DeviceId={device.device_id};ModuleId={module_id};"
                f"SharedAccessKey={device.keys[module_id]};GatewayHostName={self.gateway}")


def pick(device_ids: list[str], fraction: float, salt: str) -> set[str]:
    """A stable choice of ceil(fraction * N) devices (fault injection), independent of list order."""
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ValueError("a fault fraction is between 0 and 1")
    count = math.ceil(len(device_ids) * fraction - 1e-9)
    ranked = sorted(device_ids, key=lambda d: hashlib.sha256(f"{salt}\0{d}".encode()).hexdigest())
    return set(ranked[:count])


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    if size < 1:
        raise ValueError("a process hosts at least one device")
    return [items[i:i + size] for i in range(0, len(items), size)]
