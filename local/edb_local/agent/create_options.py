"""What a module's Docker ``createOptions`` mean for a local process (pure).

Used: ``HostConfig.Binds`` and ``HostConfig.Mounts`` (bind and volume), ``Env``, ``Cmd`` and
``Healthcheck``. Everything else (ports, devices, capabilities, resources...) only means something
to a container runtime and is ignored.

The bind rule (a process shares the host's filesystem, it has no container paths):
- ``/host/path:/container/path[:ro]`` -> the process uses ``/host/path`` directly;
- ``name:/container/path`` (a named volume) -> ``<state-dir>/agent/volumes/<name>``, created;
- every environment value (createOptions ``Env``, the manifest's ``env``) equal to a container path,
  or under one, is rewritten to the host side, longest container path first. So a module configured
  with ``CACHE_DIR=/data/cache`` and bind ``/srv/edb:/data`` gets ``CACHE_DIR=/srv/edb/cache``.
- ``:ro`` cannot be enforced on a process and is recorded only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from edb_local.agent.errors import DeploymentError

_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NS = 1_000_000_000


@dataclass(frozen=True)
class Mount:
    host: str  # absolute host path, or a named volume
    container: str
    read_only: bool = False

    @property
    def is_volume(self) -> bool:
        return not self.host.startswith("/")


@dataclass(frozen=True)
class HealthCheck:
    """Docker's HEALTHCHECK: run ``argv`` every ``interval``; ``retries`` consecutive failures
    (non-zero exit or timeout) make the module unhealthy; failures within ``start_period`` of
    the start do not count."""

    argv: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


@dataclass(frozen=True)
class ProcessOptions:
    mounts: tuple[Mount, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    health_check: HealthCheck | None = None


def parse_create_options(module_id: str, options: Mapping[str, Any]) -> ProcessOptions:
    host_config = options.get("HostConfig") or {}
    if not isinstance(host_config, Mapping):
        raise DeploymentError(f"module {module_id}: HostConfig is not an object")
    mounts = [_parse_bind(module_id, b) for b in _list(module_id, host_config.get("Binds"), "Binds")]
    mounts += [_parse_mount(module_id, m) for m in _list(module_id, host_config.get("Mounts"), "Mounts")]
    env: list[tuple[str, str]] = []
    for item in _list(module_id, options.get("Env"), "Env"):
        if not isinstance(item, str) or "=" not in item or "\x00" in item:
            raise DeploymentError(f"module {module_id}: createOptions Env entries are NAME=value")
        name, value = item.split("=", 1)
        env.append((name, value))
    args = _list(module_id, options.get("Cmd"), "Cmd")
    if not all(isinstance(a, str) and "\x00" not in a for a in args):
        raise DeploymentError(f"module {module_id}: createOptions Cmd must be a list of strings")
    return ProcessOptions(
        mounts=tuple(mounts), env=tuple(env), args=tuple(args),
        health_check=_parse_health_check(module_id, options.get("Healthcheck")),
    )


def rewrite_container_paths(env: Mapping[str, str], mounts: tuple[Mount, ...],
                            volume_root: str) -> dict[str, str]:
    """Apply the bind rule to environment values (see the module docstring)."""
    table = sorted(((m.container.rstrip("/") or "/", host_path(m, volume_root)) for m in mounts),
                   key=lambda pair: len(pair[0]), reverse=True)
    out: dict[str, str] = {}
    for name, value in env.items():
        for container, host in table:
            if value == container:
                value = host
                break
            if value.startswith(container + "/"):
                value = host + value[len(container):]
                break
        out[name] = value
    return out


def host_path(mount: Mount, volume_root: str) -> str:
    if mount.is_volume:
        return str(PurePosixPath(volume_root) / mount.host)
    return mount.host


def _list(module_id: str, value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DeploymentError(f"module {module_id}: createOptions {name} is not a list")
    return value


def _check_paths(module_id: str, host: str, container: str) -> None:
    if not container.startswith("/") or ".." in PurePosixPath(container).parts:
        raise DeploymentError(f"module {module_id}: bind target {container!r} is not an absolute path")
    if host.startswith("/"):
        if ".." in PurePosixPath(host).parts:
            raise DeploymentError(f"module {module_id}: bind source {host!r} contains '..'")
    elif not _VOLUME_NAME.match(host):
        raise DeploymentError(f"module {module_id}: invalid volume name {host!r}")


def _parse_bind(module_id: str, bind: Any) -> Mount:
    if not isinstance(bind, str):
        raise DeploymentError(f"module {module_id}: Binds entries are strings")
    parts = bind.split(":")
    if len(parts) not in (2, 3):
        raise DeploymentError(f"module {module_id}: bind {bind!r} is not host:container[:mode]")
    host, container = parts[0], parts[1]
    mode = parts[2].split(",") if len(parts) == 3 else []
    _check_paths(module_id, host, container)
    return Mount(host, container, read_only="ro" in mode)


def _parse_mount(module_id: str, mount: Any) -> Mount:
    if not isinstance(mount, Mapping):
        raise DeploymentError(f"module {module_id}: Mounts entries are objects")
    kind, source, target = mount.get("Type", "volume"), mount.get("Source"), mount.get("Target")
    if kind not in ("bind", "volume") or not isinstance(source, str) or not isinstance(target, str):
        raise DeploymentError(f"module {module_id}: only bind and volume mounts with Source/Target")
    if (kind == "bind") != source.startswith("/"):
        raise DeploymentError(f"module {module_id}: mount {source!r} does not match its Type {kind}")
    _check_paths(module_id, source, target)
    return Mount(source, target, read_only=bool(mount.get("ReadOnly", False)))


def _seconds(module_id: str, doc: Mapping[str, Any], key: str, default: float) -> float:
    value = doc.get(key)
    if value is None or value == 0:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DeploymentError(f"module {module_id}: Healthcheck.{key} must be nanoseconds")
    return value / _NS


def _parse_health_check(module_id: str, doc: Any) -> HealthCheck | None:
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise DeploymentError(f"module {module_id}: Healthcheck is not an object")
    test = doc.get("Test")
    if not isinstance(test, list) or not test or not all(isinstance(t, str) for t in test):
        raise DeploymentError(f"module {module_id}: Healthcheck.Test must be a non-empty list")
    if test[0] == "NONE":
        return None
    if test[0] == "CMD" and len(test) > 1:
        argv = tuple(test[1:])
    elif test[0] == "CMD-SHELL" and len(test) == 2:
        argv = ("/bin/sh", "-c", test[1])  # Docker's CMD-SHELL semantics
    else:
        raise DeploymentError(f"module {module_id}: Healthcheck.Test must start with CMD, CMD-SHELL or NONE")
    retries = doc.get("Retries", 3)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise DeploymentError(f"module {module_id}: Healthcheck.Retries must be an integer")
    return HealthCheck(
        argv=argv,
        interval_s=_seconds(module_id, doc, "Interval", 30.0),
        timeout_s=_seconds(module_id, doc, "Timeout", 30.0),
        retries=max(retries, 1),
        start_period_s=_seconds(module_id, doc, "StartPeriod", 0.0),
    )
