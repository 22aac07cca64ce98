"""The environment a module process gets: what IoT Edge gives a module container (pure).

Precedence, lowest first:
1. a minimal base from the agent's own environment (PATH, HOME, LANG, ...): a container does not
   inherit the host's environment, so neither does a module (no stray credentials leak in);
2. host defaults: the stack's ``EDB_*`` settings (``.edb/local.env``: CA bundle, TEE socket, ...),
   the local counterpart of what an image bakes in;
3. createOptions ``Env``, then the manifest's ``env`` (edgeAgent gives the manifest precedence),
   both with container paths rewritten to host paths (``create_options.rewrite_container_paths``);
4. the ``IOTEDGE_*`` set, which nothing overrides: it is what makes
   ``IoTHubModuleClient.create_from_edge_environment()`` take its production path (trust bundle and
   SAS signatures from the workload API). No key is ever placed in the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edb_local.agent.create_options import ProcessOptions, rewrite_container_paths

#: The workload API version this stand-in serves (IoT Edge 1.2+ gives modules this one).
WORKLOAD_API_VERSION = "2019-01-30"

BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH",
                  "SYSTEMROOT")


@dataclass(frozen=True)
class EdgeModuleIdentity:
    """Who the module is, as IoT Edge tells it."""

    hub_hostname: str
    device_id: str
    module_id: str
    gateway_hostname: str
    generation_id: str
    workload_uri: str  # unix:///abs/path/to/<module>.sock
    api_version: str = WORKLOAD_API_VERSION

    def variables(self) -> dict[str, str]:
        return {
            "IOTEDGE_IOTHUBHOSTNAME": self.hub_hostname,
            "IOTEDGE_DEVICEID": self.device_id,
            "IOTEDGE_MODULEID": self.module_id,
            "IOTEDGE_GATEWAYHOSTNAME": self.gateway_hostname,
            "IOTEDGE_MODULEGENERATIONID": self.generation_id,
            "IOTEDGE_WORKLOADURI": self.workload_uri,
            "IOTEDGE_APIVERSION": self.api_version,
            "IOTEDGE_AUTHSCHEME": "sasToken",
        }


def module_environment(
    *,
    agent_env: Mapping[str, str],
    host_defaults: Mapping[str, str],
    options: ProcessOptions,
    manifest_env: Mapping[str, str],
    identity: EdgeModuleIdentity,
    volume_root: str,
) -> dict[str, str]:
    env = {name: agent_env[name] for name in BASE_VARIABLES if name in agent_env}
    env["PYTHONUNBUFFERED"] = "1"  # module logs reach the log file as they happen
    env.update(host_defaults)
    configured = {**dict(options.env), **dict(manifest_env)}
    env.update(rewrite_container_paths(configured, options.mounts, volume_root))
    env.update(identity.variables())
    return env
