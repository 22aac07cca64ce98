"""``edb fleet simulate|status|down``: start, inspect and stop a simulated fleet on the local stack.

``simulate`` provisions each device's TEE state (``edb_tee.provisioning.provision``: its own HUK,
attestation key and manufacturer certificate, the stack's publisher root pinned), registers its edge
identity and module identities in the hub (tagged ``fleet=<tag>``), then starts the TEE host
processes (``--tees-per-process`` devices each) and the device host processes
(``--devices-per-process`` devices each). Everything is recorded in ``<state>/fleet/fleet.json``
(mode 0600: it holds the module keys) so ``status`` and ``down`` find it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edb.errors import ConfigError
from edb_local.fleet.spec import MODULES, Faults, FleetSpec, SimDevice, chunks, pick


def fleet_file(state_dir: Path) -> Path:
    return state_dir / "fleet" / "fleet.json"


@dataclass(frozen=True)
class FaultPlan:
    fail_load_fraction: float = 0.0
    fail_load_version: str = "*"
    offline_fraction: float = 0.0
    slow_fraction: float = 0.0
    slow_s: float = 0.5


def assign_faults(ids: list[str], faults: FaultPlan) -> dict[str, Faults]:
    failing = pick(ids, faults.fail_load_fraction, "fail-load")
    offline = pick(ids, faults.offline_fraction, "offline")
    slow = pick(ids, faults.slow_fraction, "slow")
    return {d: Faults(faults.fail_load_version if d in failing else None, d in offline,
                      faults.slow_s if d in slow else 0.0) for d in ids}


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def simulate(state_dir: Path, config: Any, count: int, *, prefix: str = "sim", tag: str = "sim",
             faults: FaultPlan = FaultPlan(), devices_per_process: int = 50, tees_per_process: int = 50,
             frame_interval_s: float = 2.0, log_dir: Path | None = None) -> FleetSpec:
    from azure.iot.hub import IoTHubRegistryManager
    from azure.iot.hub.models import Twin
    from cryptography import x509

    from edb.iothub_ca import pin_ca
    from edb_tee.paths import DeviceLayout
    from edb_tee.provisioning import provision

    if fleet_file(state_dir).exists():
        raise ConfigError(f"a fleet is already recorded in {fleet_file(state_dir)}; `edb fleet down` first",
                          code="FLEET_RUNNING")
    if not 1 <= count <= 5000:
        raise ConfigError("--devices must be 1..5000", code="CONFIG_INVALID")
    gateway = config.require("EDB_IOTHUB_GATEWAY", "hub gateway address")
    hub_name = config.require("EDB_IOTHUB_HOSTNAME", "hub host name")
    ca = str(config.ca_cert)
    key_release_url = config.require("EDB_KEY_RELEASE_URL", "key release URL")
    root = x509.load_pem_x509_certificate((state_dir / "pki" / "root.pem").read_bytes())
    registry = pin_ca(IoTHubRegistryManager.from_connection_string(config.iothub_connection_string), config.ca_cert)
    ids = [f"{prefix}-{n:04d}" for n in range(count)]
    fault_of = assign_faults(ids, faults)
    devices = []
    for device_id in ids:
        layout = DeviceLayout.for_device(state_dir, device_id)
        if not layout.provisioned():
            provision(state_dir, device_id, publisher_roots=[root])
        keys = {m: _key() for m in MODULES}
        # a device left by an earlier fleet is taken over with new module keys
        with contextlib.suppress(Exception):
            registry.create_device_with_sas(device_id, _key(), _key(), "enabled", iot_edge=True)
        for module_id, module_key in keys.items():
            try:
                registry.create_module_with_sas(device_id, module_id, None, module_key, module_key)
            except Exception:
                module = registry.get_module(device_id, module_id)
                registry.update_module_with_sas(device_id, module_id, None, module.etag, module_key, module_key)
        registry.update_twin(device_id, Twin(tags={"fleet": tag}), "*")
        devices.append(SimDevice(device_id, str(layout.root), keys, fault_of[device_id]))
    spec = FleetSpec(hub_name, gateway, ca, key_release_url, tag, devices, frame_interval_s=frame_interval_s,
                     package_hosts=config.get("EDB_PACKAGE_HOSTS") or "")
    path = fleet_file(state_dir)
    spec.save(path)
    logs = log_dir or path.parent
    pids: dict[str, int] = {}
    for index, group in enumerate(chunks(devices, tees_per_process)):
        argv = [sys.executable, "-m", "edb_local.fleet.tee_host", *(d.device_dir for d in group)]
        pids[f"tee-{index}"] = _spawn(argv, logs / f"tee-{index}.log")
    for device in devices:  # the TEEs' sockets exist before any device loop dials them
        _wait(lambda d=device: DeviceLayout(Path(d.device_dir)).socket.exists(), 60.0, f"{device.device_id}'s TEE")
    for index, first in enumerate(range(0, len(devices), devices_per_process)):
        size = min(devices_per_process, len(devices) - first)
        pids[f"devices-{index}"] = _spawn([sys.executable, "-m", "edb_local.fleet.device_host", str(path), str(first),
                                           str(size), str(path.parent / "keyrelease.jsonl")],
                                          logs / f"devices-{index}.log")
    spec = replace(spec, pids=pids)
    spec.save(path)
    return spec


def _spawn(argv: list[str], log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return process.pid


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ConfigError(f"timed out waiting for {what}", code="FLEET_START_FAILED")
        time.sleep(0.05)


def status(state_dir: Path, hub: Any | None = None) -> dict[str, Any]:
    path = fleet_file(state_dir)
    if not path.exists():
        return {"running": False, "devices": 0, "processes": {}}
    spec = FleetSpec.load(path)
    doc: dict[str, Any] = {"running": True, "devices": len(spec.devices), "tag": spec.tag,
                           "processes": {name: {"pid": pid, "alive": _alive(pid)} for name, pid in spec.pids.items()},
                           "faults": {"failLoad": sum(1 for d in spec.devices if d.faults.fail_load),
                                      "offline": sum(1 for d in spec.devices if d.faults.offline),
                                      "slow": sum(1 for d in spec.devices if d.faults.slow_s)}}
    if hub is not None:
        ids = {d.device_id for d in spec.devices}
        serving: dict[str, int] = {}
        for twin in hub.module_twins("inference_runner"):
            model = twin.reported.get("model") or {}
            # "failed" with a version: a runner of before model.lastLoadFailure, whose wanted version
            # failed to load while this one still served (now: "serving", the failure apart)
            if twin.device_id in ids and model.get("state") in ("serving", "failed") and model.get("version"):
                key = f"{model.get('name')} {model.get('version')}"
                serving[key] = serving.get(key, 0) + 1
        connected = sum(1 for t in hub.module_twins("package_installer")
                        if t.device_id in ids and t.connection_state == "Connected")
        doc.update({"serving": serving, "installersConnected": connected,
                    "notServing": len(ids) - sum(serving.values())})
    return doc


def down(state_dir: Path, registry: Any | None = None, *, timeout: float = 20.0) -> dict[str, Any]:
    """Stop the fleet's processes (by the pids it recorded) and remove its hub identities."""
    path = fleet_file(state_dir)
    if not path.exists():
        return {"stopped": 0, "removed": 0}
    spec = FleetSpec.load(path)
    for pid in spec.pids.values():  # device hosts first would be nicer; SIGTERM to all, they stop cleanly
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in spec.pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in spec.pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    removed = 0
    if registry is not None:
        for device in spec.devices:
            with contextlib.suppress(Exception):  # already gone
                registry.delete_device(device.device_id)
                removed += 1
    path.unlink()
    return {"stopped": len(spec.pids), "removed": removed}
