"""The ``$edgeAgent`` reported properties, and the twin patch that gets there (pure).

Shape (edgeAgent's, trimmed to what a process runtime knows):
``{"schemaVersion", "version", "lastDesiredVersion", "lastDesiredStatus": {"code", "description"},
"runtime", "systemModules": {"edgeAgent", "edgeHub"}, "modules": {"<id>": {"runtimeStatus",
"status", "version", "restartPolicy", "type", "settings": {"image"}, "exitCode", "statusDescription",
"lastStartTimeUtc", "lastExitTimeUtc", "restartCount", "lastRestartTimeUtc"}}}``.
Nothing secret goes in here: no keys, no environment values, no createOptions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NEVER = "0001-01-01T00:00:00Z"  # what edgeAgent reports for a time that has not happened


def utc_iso(value: dt.datetime | None) -> str:
    if value is None:
        return NEVER
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class DesiredStatus:
    """``lastDesiredStatus``: 200 applied; 400 invalid; 412 schema version; 417 empty; 500 failed."""

    code: int
    description: str = ""


@dataclass(frozen=True)
class ModuleReport:
    runtime_status: str
    status: str
    version: str
    restart_policy: str
    image: str
    exit_code: int | None = None
    status_description: str = ""
    last_start: dt.datetime | None = None
    last_exit: dt.datetime | None = None
    restart_count: int = 0
    last_restart: dt.datetime | None = None

    def to_twin(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "runtimeStatus": self.runtime_status,
            "status": self.status,
            "version": self.version,
            "restartPolicy": self.restart_policy,
            "type": "docker",
            "settings": {"image": self.image},
            "statusDescription": self.status_description,
            "lastStartTimeUtc": utc_iso(self.last_start),
            "lastExitTimeUtc": utc_iso(self.last_exit),
            "restartCount": self.restart_count,
            "lastRestartTimeUtc": utc_iso(self.last_restart),
        }
        if self.exit_code is not None:  # only once it has exited; the patch nulls a stale one
            doc["exitCode"] = self.exit_code
        return doc


def agent_reported(
    *,
    desired_status: DesiredStatus,
    last_desired_version: int | None,
    modules: Mapping[str, ModuleReport],
    agent_started: dt.datetime,
    agent_version: str,
    hub_connected: bool,
    runtime_type: str = "process",
) -> dict[str, Any]:
    return {
        "schemaVersion": "1.1",
        "version": {"version": agent_version, "build": "edb-local", "commit": ""},
        "lastDesiredVersion": last_desired_version,
        "lastDesiredStatus": {"code": desired_status.code, "description": desired_status.description},
        "runtime": {"type": runtime_type, "platform": {"os": "linux"}},
        "systemModules": {
            "edgeAgent": {"runtimeStatus": "running", "lastStartTimeUtc": utc_iso(agent_started)},
            # The hub stand-in plays edgeHub; the agent reaches it through the same gateway.
            "edgeHub": {"runtimeStatus": "running" if hub_connected else "unknown"},
        },
        "modules": {module_id: report.to_twin() for module_id, report in sorted(modules.items())},
    }


def reported_patch(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest twin patch turning ``previous`` into ``current``: changed leaves, and null for
    keys that disappeared (a twin patch deletes a property by setting it to null)."""
    patch: dict[str, Any] = {}
    for key, value in current.items():
        old = previous.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = reported_patch(old, value)
            if sub:
                patch[key] = sub
        elif key not in previous or old != value:
            patch[key] = value
    for key in previous:
        if key not in current:
            patch[key] = None
    return patch


def apply_patch(document: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Twin merge-patch semantics (null deletes), to keep the agent's copy of what it reported."""
    out = dict(document)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_patch(out[key], value)
        else:
            out[key] = value
    return out
