"""The agent's configuration: where things live and how it reaches the hub."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edb_local.agent.module_map import ModuleMap
from edb_local.agent.reconcile import BackoffPolicy

AGENT_MODULE_ID = "$edgeAgent"
# sockaddr_un holds 108 bytes; keep room for "/<module-id>.sock" with a module id of 40 characters.
_MAX_SOCKET_DIR = 60


@dataclass(frozen=True)
class AgentConfig:
    state_dir: Path
    device_id: str
    hub_hostname: str  # IOTEDGE_IOTHUBHOSTNAME: the name in SAS resource URIs
    gateway_hostname: str  # IOTEDGE_GATEWAYHOSTNAME: the address modules connect to
    ca_path: Path
    service_connection_string: str = field(repr=False)
    host_defaults: Mapping[str, str] = field(default_factory=dict)
    host_services: Mapping[str, Path] = field(default_factory=dict)  # host service name -> Unix socket
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    stop_timeout_s: float = 10.0
    resync_interval_s: float = 30.0
    # The device SDK can hang in its own reconnect after the hub restarts (azure-iot-sdk-python
    # #713, #990): after this long disconnected the agent drops the client and makes a new one.
    reconnect_after_s: float = 30.0
    python: str = sys.executable
    module_map: ModuleMap = field(default_factory=ModuleMap)
    #: "process" (modules as local processes) or "docker" (containers through the Docker Engine API)
    runtime: str = "process"
    #: the Docker runtime's label and name prefix for this stack's containers and volumes
    stack: str = ""

    @property
    def agent_dir(self) -> Path:
        return self.state_dir / "agent"

    @property
    def module_log_dir(self) -> Path:
        return self.state_dir / "logs" / "modules"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def work_root(self) -> Path:
        return self.agent_dir / "modules"

    @property
    def volume_root(self) -> Path:
        return self.agent_dir / "volumes"

    @property
    def deployment_backup(self) -> Path:
        return self.agent_dir / "deployment.json"

    @property
    def identity_cache(self) -> Path:
        return self.agent_dir / "identities.json"

    @property
    def health_file(self) -> Path:
        return self.agent_dir / "health.json"

    @property
    def workload_socket_dir(self) -> Path:
        return workload_socket_dir(self.state_dir)


def workload_socket_dir(state_dir: Path) -> Path:
    """``<state>/agent/workload`` when short enough for Unix socket paths, else a per-state-dir
    directory under the temp dir (created 0700 and ownership-checked by the workload server)."""
    preferred = state_dir.resolve() / "agent" / "workload"
    if len(str(preferred)) <= _MAX_SOCKET_DIR:
        return preferred
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"edb-workload-{os.getuid()}-{digest}"
