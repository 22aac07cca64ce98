"""The stack's stable settings (``<state>/stack.json``) and the state directory layout.

Chosen once by the first ``edb local up`` and reused by every later one, so addresses, names and
URLs (and everything configured with them: certificates, connection strings, twins) stay valid
across restarts.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edb_local.net import free_loopback_address
from edb_local.supervisor.errors import ADDRESS_IN_USE, STATE_MISMATCH, SupervisorError

DEFAULT_DEVICE_ID = "edge-device-1"
DEFAULT_HUB_NAME = "edb-local-hub.azure-devices.local"
# The device SDK hard-codes 8883 (MQTT) and 443 (HTTPS gateway); the rest are conventional.
DEFAULT_PORTS = {"mqtt": 8883, "https": 443, "keyvault": 8443, "keyrelease": 7071, "azurite": 10000,
                 "azurite_table": 10002,
                 "oip": 8000}  # the inference runner's Open Inference Protocol endpoint (a module's, not the stack's)


@dataclass(frozen=True)
class StackSettings:
    address: str
    device_id: str = DEFAULT_DEVICE_ID
    hub_name: str = DEFAULT_HUB_NAME
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    #: LEGACY v1 key flow (weaker): device provisioned with --allow-legacy-v1, the key release
    #: service's WrapKey/ProvisionKey routes on. Chosen at the first `up --legacy-v1`, never changed.
    legacy_v1: bool = False
    #: where the edge agent runs modules: "process" or "docker" (containers through the Docker Engine
    #: API, the TEE included). Chosen at the first `up --runtime`, never changed: the device's TEE
    #: state lives in .edb/devices for one and in a Docker volume for the other.
    runtime: str = "process"

    def url(self, port_name: str) -> str:
        return f"https://{self.address}:{self.ports[port_name]}"


@dataclass(frozen=True)
class StackPaths:
    """Contract 5 (docs/architecture.md): the state directory."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "stack.json"

    @property
    def local_env(self) -> Path:
        return self.root / "local.env"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.pem"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def component_dir(self, name: str) -> Path:
        return self.root / name

    def device_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def ensure(self) -> None:
        for path in (self.root, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # keys and the owner connection string live here


def load_or_create_settings(paths: StackPaths, device_id: str | None, legacy_v1: bool = False,
                            runtime: str | None = None) -> StackSettings:
    """``legacy_v1``: this `up` asks for the legacy v1 key flow (only a new stack can start with it:
    the device's TEE measurement depends on it)."""
    if paths.settings.exists():
        doc = json.loads(paths.settings.read_text())
        settings = StackSettings(address=doc["address"], device_id=doc["device_id"], hub_name=doc["hub_name"],
                                 ports={**DEFAULT_PORTS, **doc.get("ports", {})},
                                 legacy_v1=bool(doc.get("legacy_v1", False)),
                                 runtime=str(doc.get("runtime", "process")))
        if runtime is not None and runtime != settings.runtime:
            raise SupervisorError(f"{paths.root} was set up with the {settings.runtime} runtime; use another "
                                  f"--state-dir for --runtime {runtime}", code=STATE_MISMATCH)
        if device_id is not None and device_id != settings.device_id:
            raise SupervisorError(
                f"{paths.root} holds device {settings.device_id!r}; use another --state-dir for {device_id!r}",
                code=STATE_MISMATCH)
        if legacy_v1 and not settings.legacy_v1:
            raise SupervisorError(f"{paths.root} was set up without the legacy v1 key flow (its device is "
                                  "provisioned without it); use another --state-dir for --legacy-v1",
                                  code=STATE_MISMATCH)
        return settings
    address = free_loopback_address(tuple(DEFAULT_PORTS.values()))
    settings = StackSettings(address=address, device_id=device_id or DEFAULT_DEVICE_ID, legacy_v1=legacy_v1,
                             runtime=runtime or "process")
    paths.ensure()
    tmp = paths.settings.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=2) + "\n")
    tmp.replace(paths.settings)
    return settings


def check_ports_free(settings: StackSettings, ports: list[str]) -> None:
    for name in ports:
        port = settings.ports[name]
        if not _port_is_free(settings.address, port):
            raise SupervisorError(
                f"{settings.address}:{port} ({name}) is taken by a process this stack did not start; "
                "stop it, or use another --state-dir", code=ADDRESS_IN_USE)


def _port_is_free(address: str, port: int) -> bool:
    # SO_REUSEADDR, as the servers themselves use: connections in TIME_WAIT from the previous run
    # of the stack must not count as "in use".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
