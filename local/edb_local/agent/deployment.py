"""Parse the ``$edgeAgent`` desired properties (deployment manifest schema 1.0/1.1) into specs.

Pure code: a dict in, frozen dataclasses out, or a :class:`DeploymentError` carrying the
``lastDesiredStatus.code`` edgeAgent would report. Fields this agent does not act on (``runtime``,
``systemModules``, ``imagePullPolicy``, registry credentials) are accepted and ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edb_local.agent.errors import DeploymentError

SUPPORTED_SCHEMA_VERSIONS = ("1.0", "1.1")
STATUSES = ("running", "stopped")
RESTART_POLICIES = ("never", "on-failure", "on-unhealthy", "always")
#: edgeAgent's default startupOrder (uint32 max): such modules start last.
DEFAULT_STARTUP_ORDER = 4294967295

# Module ids become file names (logs, sockets, working directories), so this is stricter than
# IoT Hub's module id alphabet: letters, digits, '_', '.', '-', not starting with a dot or '$'.
_MODULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
# iotedgedev splits long createOptions into createOptions01..07 (512 characters each).
_CREATE_OPTIONS_PARTS = ("createOptions", *(f"createOptions{n:02d}" for n in range(1, 8)))


@dataclass(frozen=True)
class ModuleSpec:
    """One entry of ``modules`` in the deployment, validated."""

    module_id: str
    version: str
    status: str
    restart_policy: str
    startup_order: int
    image: str
    create_options_json: str = "{}"  # canonical JSON (sorted keys) of the createOptions object
    env: tuple[tuple[str, str], ...] = ()

    @property
    def create_options(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.create_options_json)
        return value

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def fingerprint(self) -> str:
        """What makes a running module stale: edgeAgent recreates the container when any of these
        change (image, createOptions, env, version); status and restartPolicy apply in place."""
        body = json.dumps(
            {"version": self.version, "image": self.image, "createOptions": self.create_options,
             "env": self.env_dict},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class Deployment:
    """The modules a device should run, and the desired twin version they came from."""

    desired_version: int | None
    schema_version: str
    modules: Mapping[str, ModuleSpec] = field(default_factory=dict)

    def ordered_modules(self) -> list[ModuleSpec]:
        """Modules in start order: ascending startupOrder, then id (a stable tie-break)."""
        return sorted(self.modules.values(), key=lambda m: (m.startup_order, m.module_id))


def desired_version_of(desired: Mapping[str, Any]) -> int | None:
    version = desired.get("$version")
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def parse_deployment(desired: Mapping[str, Any]) -> Deployment:
    """Validate the whole document; any invalid module rejects the deployment (edgeAgent does the
    same: a deployment is applied whole or not at all, and the previous one keeps running)."""
    if not isinstance(desired, Mapping):
        raise DeploymentError("desired properties are not an object")
    version = desired_version_of(desired)
    if "schemaVersion" not in desired and "modules" not in desired:
        raise DeploymentError("the device has no deployment", code="LOCAL_AGENT_EMPTY_DEPLOYMENT",
                              status_code=417)
    schema = desired.get("schemaVersion")
    if schema not in SUPPORTED_SCHEMA_VERSIONS:
        raise DeploymentError(f"unsupported schemaVersion {schema!r} (supported: 1.0, 1.1)",
                              code="LOCAL_AGENT_SCHEMA_VERSION", status_code=412)
    modules_doc = desired.get("modules", {})
    if modules_doc is None:
        modules_doc = {}
    if not isinstance(modules_doc, Mapping):
        raise DeploymentError("`modules` is not an object")
    modules: dict[str, ModuleSpec] = {}
    for module_id, doc in modules_doc.items():
        if doc is None:  # a null left behind by a twin patch that removed the module
            continue
        modules[module_id] = parse_module(module_id, doc)
    return Deployment(desired_version=version, schema_version=str(schema), modules=modules)


def parse_module(module_id: str, doc: Any) -> ModuleSpec:
    if not isinstance(module_id, str) or not _MODULE_ID.match(module_id):
        raise DeploymentError(f"invalid module id {module_id!r}")
    if not isinstance(doc, Mapping):
        raise DeploymentError(f"module {module_id}: not an object")
    status = doc.get("status", "running")
    if status not in STATUSES:
        raise DeploymentError(f"module {module_id}: invalid status {status!r}")
    policy = doc.get("restartPolicy", "always")
    if policy not in RESTART_POLICIES:
        raise DeploymentError(f"module {module_id}: invalid restartPolicy {policy!r}")
    order = doc.get("startupOrder", DEFAULT_STARTUP_ORDER)
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= DEFAULT_STARTUP_ORDER:
        raise DeploymentError(f"module {module_id}: startupOrder must be an integer in [0, 2^32)")
    version = doc.get("version", "")
    if not isinstance(version, str | int | float) or isinstance(version, bool):
        raise DeploymentError(f"module {module_id}: invalid version")
    settings = doc.get("settings")
    if not isinstance(settings, Mapping):
        raise DeploymentError(f"module {module_id}: settings missing")
    image = settings.get("image")
    if not isinstance(image, str) or not image.strip():
        raise DeploymentError(f"module {module_id}: settings.image missing")
    return ModuleSpec(
        module_id=module_id,
        version=str(version),
        status=str(status),
        restart_policy=str(policy),
        startup_order=order,
        image=image.strip(),
        create_options_json=_create_options(module_id, settings),
        env=_env(module_id, doc.get("env")),
    )


def _create_options(module_id: str, settings: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in _CREATE_OPTIONS_PARTS:
        value = settings.get(key)
        if value is None:
            break
        if isinstance(value, Mapping):  # a template may carry the object itself
            if key != "createOptions":
                raise DeploymentError(f"module {module_id}: {key} must be a string")
            return json.dumps(value, sort_keys=True, separators=(",", ":"))
        if not isinstance(value, str):
            raise DeploymentError(f"module {module_id}: {key} must be a string")
        parts.append(value)
    text = "".join(parts).strip()
    if not text:
        return "{}"
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeploymentError(f"module {module_id}: createOptions is not JSON ({exc.msg})") from None
    if not isinstance(options, Mapping):
        raise DeploymentError(f"module {module_id}: createOptions is not a JSON object")
    return json.dumps(options, sort_keys=True, separators=(",", ":"))


def _env(module_id: str, env: Any) -> tuple[tuple[str, str], ...]:
    if env is None:
        return ()
    if not isinstance(env, Mapping):
        raise DeploymentError(f"module {module_id}: env is not an object")
    out: list[tuple[str, str]] = []
    for name, entry in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise DeploymentError(f"module {module_id}: invalid environment variable name {name!r}")
        if entry is None:
            continue
        if not isinstance(entry, Mapping) or "value" not in entry:
            raise DeploymentError(f"module {module_id}: env {name} must be {{\"value\": ...}}")
        value = entry["value"]
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise DeploymentError(f"module {module_id}: env {name} value must be a scalar")
        if "\x00" in text:
            raise DeploymentError(f"module {module_id}: env {name} contains NUL")
        out.append((name, text))
    return tuple(sorted(out))
