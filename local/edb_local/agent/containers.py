"""A module's container, as the Docker Engine API's create request (pure).

edgeAgent creates a module's container from its ``createOptions`` merged with what the agent adds;
so does this one: the createOptions document is the Engine API ``ContainerCreate`` body (``Env``,
``User``, ``Labels``, ``HostConfig.Binds/Mounts/ReadonlyRootfs/CapDrop/CapAdd/SecurityOpt/Tmpfs``...
pass through untouched, so Docker itself accepts or refuses them), with these changes:

- ``Image`` is the deployment's image; nothing is pulled (a missing image is the module's error);
- ``Env``: createOptions ``Env``, then the manifest's ``env`` (edgeAgent's precedence), then the
  ``IOTEDGE_*`` set with the workload API socket bound in at ``/var/run/iotedge/workload.sock``
  (the module's own socket only) and ``EDB_CA_CERT`` for the stack's CA (public certificate,
  read-only bind): modules reach the hub through ``GatewayHostName`` and trust it through the
  workload API's trust bundle exactly as on a device;
- named volumes (``name:/path`` binds, ``Type: volume`` mounts) are namespaced per stack
  (``edb-<stack>-<name>``) so two stacks on one Docker Engine never share a device's state;
- network: the local stack's modules use host networking on the stack's own 127.x address (the
  only address they are given); ``NetworkMode`` ``host``, ``default``, ``bridge`` or
  ``azure-iot-edge`` (a device's network) become ``host``; anything else is refused (the network
  rules: containers talk only to addresses this project creates). Port bindings mean nothing on
  the host network and are dropped;
- ``RestartPolicy`` is ``no``: the agent applies the manifest's ``restartPolicy`` itself, with
  edgeAgent's backoff, as edgeAgent does;
- labels say which stack and module a container belongs to (``edb local down`` finds them).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edb_local.agent.environment import EdgeModuleIdentity
from edb_local.agent.errors import DeploymentError

LABEL_STACK = "org.edb.stack"
LABEL_MODULE = "org.edb.module-id"
LABEL_FINGERPRINT = "org.edb.fingerprint"
LABEL_OWNER = "net.azure-devices.edge.owner"  # edgeAgent's own label
OWNER = "Microsoft.Azure.Devices.Edge.Agent"

WORKLOAD_SOCKET_IN_CONTAINER = "/var/run/iotedge/workload.sock"
CA_IN_CONTAINER = "/etc/edb/ca.pem"
#: host defaults a container gets (values, not host paths: a container sees none of the host's files)
CONTAINER_HOST_DEFAULTS = ("EDB_DEVICE_ID", "EDB_KEY_RELEASE_URL")
HOST_NETWORK_ALIASES = frozenset({"host", "default", "bridge", "azure-iot-edge"})
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_USER = re.compile(r"^(\d+)(?::(\d+))?$")


def stack_id(state_dir: Path) -> str:
    """Short and stable per state directory: the label value and the name prefix of its objects."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]


def container_name(stack: str, module_id: str) -> str:
    return f"edb-{stack}-{module_id.replace('$', '')}"


def volume_name(stack: str, name: str) -> str:
    return f"edb-{stack}-{name}"


def stack_labels(stack: str) -> dict[str, str]:
    return {LABEL_STACK: stack}


@dataclass(frozen=True)
class ContainerRequest:
    """What the runner sends: the create body, the named volumes to create first (with our labels)."""

    name: str
    body: dict[str, Any]
    volumes: tuple[str, ...]


def numeric_user(user: str | None) -> int | None:
    """``10001`` / ``10001:10001`` -> 10001; a user name (or none: root) -> None."""
    if not user:
        return 0
    match = _USER.match(user.strip())
    return int(match.group(1)) if match else None


def container_environment(*, host_defaults: Mapping[str, str], create_env: list[str],
                          manifest_env: Mapping[str, str], identity: EdgeModuleIdentity) -> list[str]:
    env: dict[str, str] = {k: host_defaults[k] for k in CONTAINER_HOST_DEFAULTS if k in host_defaults}
    env["EDB_CA_CERT"] = CA_IN_CONTAINER
    for item in create_env:
        name, _, value = item.partition("=")
        env[name] = value
    env.update(manifest_env)
    env.update(identity.variables())
    env["IOTEDGE_WORKLOADURI"] = f"unix://{WORKLOAD_SOCKET_IN_CONTAINER}"
    return [f"{k}={v}" for k, v in env.items()]


def _namespaced_bind(module_id: str, bind: Any, stack: str, volumes: list[str]) -> str:
    if not isinstance(bind, str):
        raise DeploymentError(f"module {module_id}: Binds entries are strings")
    source, sep, rest = bind.partition(":")
    if not sep or not source:
        raise DeploymentError(f"module {module_id}: bind {bind!r} is not source:target[:mode]")
    if source.startswith("/"):
        return bind
    if not _VOLUME_NAME.match(source):
        raise DeploymentError(f"module {module_id}: invalid volume name {source!r}")
    volumes.append(volume_name(stack, source))
    return f"{volume_name(stack, source)}:{rest}"


def container_request(*, module_id: str, image: str, fingerprint: str, create_options: Mapping[str, Any],
                      manifest_env: Mapping[str, str], host_defaults: Mapping[str, str],
                      identity: EdgeModuleIdentity, stack: str, workload_socket: Path,
                      ca_file: Path) -> ContainerRequest:
    body: dict[str, Any] = copy.deepcopy(dict(create_options))
    create_env = body.get("Env") or []
    if not isinstance(create_env, list) or not all(isinstance(e, str) and "=" in e for e in create_env):
        raise DeploymentError(f"module {module_id}: createOptions Env entries are NAME=value")
    host: dict[str, Any] = dict(body.get("HostConfig") or {})
    volumes: list[str] = []
    binds = host.get("Binds") or []
    if not isinstance(binds, list):
        raise DeploymentError(f"module {module_id}: createOptions Binds is not a list")
    host["Binds"] = [_namespaced_bind(module_id, b, stack, volumes) for b in binds] + [
        f"{workload_socket}:{WORKLOAD_SOCKET_IN_CONTAINER}", f"{ca_file}:{CA_IN_CONTAINER}:ro"]
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise DeploymentError(f"module {module_id}: createOptions Mounts is not a list")
    for mount in mounts:
        if isinstance(mount, dict) and mount.get("Type", "volume") == "volume" and isinstance(mount.get("Source"), str):
            if not _VOLUME_NAME.match(mount["Source"]):
                raise DeploymentError(f"module {module_id}: invalid volume name {mount['Source']!r}")
            mount["Source"] = volume_name(stack, mount["Source"])
            volumes.append(mount["Source"])
    if mounts:
        host["Mounts"] = mounts
    network = host.get("NetworkMode") or "host"
    if network not in HOST_NETWORK_ALIASES:
        raise DeploymentError(f"module {module_id}: NetworkMode {network!r} is not allowed on the local stack "
                              "(host networking on the stack's address only; docs/containers.md)")
    host["NetworkMode"] = "host"
    host.pop("PortBindings", None)
    host["RestartPolicy"] = {"Name": "no"}
    body.pop("NetworkingConfig", None)
    body.pop("ExposedPorts", None)
    body.pop("Hostname", None)  # not allowed with host networking
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict):
        raise DeploymentError(f"module {module_id}: createOptions Labels is not an object")
    body["Labels"] = {**{str(k): str(v) for k, v in labels.items()}, LABEL_STACK: stack, LABEL_MODULE: module_id,
                      LABEL_FINGERPRINT: fingerprint, LABEL_OWNER: OWNER}
    body["Image"] = image
    body["Env"] = container_environment(host_defaults=host_defaults, create_env=create_env,
                                        manifest_env=manifest_env, identity=identity)
    body["HostConfig"] = host
    return ContainerRequest(container_name(stack, module_id), body, tuple(dict.fromkeys(volumes)))
