"""Check an expanded deployment manifest against IoT Edge's rules before it reaches a device (pure).

The rules (from IoT Edge's documentation, see docs/orchestrator.md): schema 1.1 for ``$edgeAgent``
and ``$edgeHub``; docker runtime; edgeHub ``running``/``always``; every module with version, type,
status, restartPolicy and image; createOptions strings of at most 512 characters in at most 8
parts; ``env`` values as ``{"value": ...}``; routes in the ``FROM <source> [WHERE <cond>] INTO
<sink>`` grammar naming modules of this deployment and, when the caller knows them, their real
outputs and inputs; priority 0-9 and a positive time to live; desired properties within the 32 KB
limit of a twin. Returns every problem found rather than stopping at the first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edb.errors import ConfigError

STATUSES = ("running", "stopped")
RESTART_POLICIES = ("never", "on-failure", "on-unhealthy", "always")
MAX_DESIRED_BYTES = 32 * 1024
_ROUTE = re.compile(r"^\s*FROM\s+(?P<source>\S+)(?:\s+WHERE\s+(?P<cond>.+?))?\s+INTO\s+(?P<sink>.+?)\s*$",
                    re.IGNORECASE | re.DOTALL)
_SOURCE = re.compile(
    r"^/(?:\*|messages/\*|messages/modules/\*|twinChangeNotifications"
    r"|messages/modules/(?P<module>[^/\s]+)/(?:\*|outputs/\*|outputs/(?P<output>[^/\s]+)))$"
)
_SINK = re.compile(r'^(?:\$upstream|BrokeredEndpoint\(\s*"/modules/(?P<module>[^/"]+)/inputs/(?P<input>[^/"]+)"\s*\))$')
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CREATE_PARTS = ["createOptions", *(f"createOptions{i:02d}" for i in range(1, 8))]


class ManifestError(ConfigError):
    code = "CONFIG_MANIFEST_INVALID"


@dataclass(frozen=True)
class Endpoints:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    name: str
    source: str
    condition: str | None
    sink: str
    source_module: str | None
    source_output: str | None
    sink_module: str | None
    sink_input: str | None


def parse_route(name: str, text: str) -> Route:
    match = _ROUTE.match(text)
    if not match:
        raise ManifestError(f"route {name}: not `FROM <source> [WHERE <condition>] INTO <sink>`")
    source, sink = match.group("source"), match.group("sink").strip()
    source_match = _SOURCE.match(source)
    if not source_match:
        raise ManifestError(f"route {name}: unsupported source {source!r}")
    sink_match = _SINK.match(sink)
    if not sink_match:
        raise ManifestError(f"route {name}: unsupported sink {sink!r}")
    output = source_match.group("output")
    return Route(name, source, match.group("cond"), sink, source_match.group("module"),
                 output if output != "*" else None, sink_match.group("module"), sink_match.group("input"))


def validate_manifest(manifest: Mapping[str, Any], endpoints: Mapping[str, Endpoints] | None = None) -> list[str]:
    """Every rule violation, as readable strings (empty: valid)."""
    problems: list[str] = []
    content = manifest.get("modulesContent")
    if not isinstance(content, Mapping):
        return ["modulesContent is missing or not an object"]
    agent = _desired(content, "$edgeAgent", problems)
    hub = _desired(content, "$edgeHub", problems)
    module_ids: set[str] = set()
    if agent is not None:
        module_ids = _check_agent(agent, problems)
    if hub is not None:
        _check_hub(hub, module_ids, endpoints or {}, problems)
    for twin_name, twin in content.items():
        if not isinstance(twin, Mapping) or "properties.desired" not in twin:
            problems.append(f"{twin_name}: no properties.desired")
            continue
        if _has_null(twin["properties.desired"]):
            problems.append(f"{twin_name}: desired properties in a deployment cannot hold null")
        size = len(json.dumps(twin["properties.desired"], separators=(",", ":")).encode())
        if size > MAX_DESIRED_BYTES:
            problems.append(f"{twin_name}: desired properties are {size} bytes (limit {MAX_DESIRED_BYTES})")
        if twin_name not in ("$edgeAgent", "$edgeHub") and twin_name not in module_ids:
            problems.append(f"{twin_name}: desired properties for a module the deployment does not run")
    return problems


def _has_null(node: Any) -> bool:
    if node is None:
        return True
    if isinstance(node, Mapping):
        return any(_has_null(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_null(v) for v in node)
    return False


def require_valid(manifest: Mapping[str, Any], endpoints: Mapping[str, Endpoints] | None = None) -> None:
    problems = validate_manifest(manifest, endpoints)
    if problems:
        raise ManifestError("; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))


def _desired(content: Mapping[str, Any], name: str, problems: list[str]) -> Mapping[str, Any] | None:
    twin = content.get(name)
    desired = twin.get("properties.desired") if isinstance(twin, Mapping) else None
    if not isinstance(desired, Mapping):
        problems.append(f"{name}: properties.desired is missing")
        return None
    if desired.get("schemaVersion") != "1.1":
        problems.append(f"{name}: schemaVersion must be \"1.1\"")
    return desired


def _check_agent(agent: Mapping[str, Any], problems: list[str]) -> set[str]:
    runtime = agent.get("runtime")
    if not isinstance(runtime, Mapping) or runtime.get("type") != "docker" or not isinstance(
            runtime.get("settings"), Mapping):
        problems.append("$edgeAgent: runtime must be {type: docker, settings: {...}}")
    system = agent.get("systemModules")
    if not isinstance(system, Mapping) or set(system) != {"edgeAgent", "edgeHub"}:
        problems.append("$edgeAgent: systemModules must hold exactly edgeAgent and edgeHub")
    else:
        for name in ("edgeAgent", "edgeHub"):
            _check_settings(f"systemModules.{name}", system[name], problems)
        hub = system["edgeHub"]
        if isinstance(hub, Mapping) and (hub.get("status") != "running" or hub.get("restartPolicy") != "always"):
            problems.append("$edgeAgent: edgeHub must be status running with restartPolicy always")
    modules = agent.get("modules")
    if not isinstance(modules, Mapping):
        problems.append("$edgeAgent: modules must be an object")
        return set()
    for module_id, module in modules.items():
        label = f"modules.{module_id}"
        if not isinstance(module, Mapping):
            problems.append(f"{label}: not an object")
            continue
        if not isinstance(module.get("version"), str):
            problems.append(f"{label}: version must be a string")
        if module.get("status") not in STATUSES:
            problems.append(f"{label}: status must be one of {STATUSES}")
        if module.get("restartPolicy") not in RESTART_POLICIES:
            problems.append(f"{label}: restartPolicy must be one of {RESTART_POLICIES}")
        order = module.get("startupOrder", 0)
        if not isinstance(order, int) or isinstance(order, bool) or order < 0:
            problems.append(f"{label}: startupOrder must be a non-negative integer")
        _check_settings(label, module, problems)
        env = module.get("env", {})
        if not isinstance(env, Mapping):
            problems.append(f"{label}: env must be an object")
        else:
            for name, value in env.items():
                if not _ENV_NAME.match(name) or not isinstance(value, Mapping) or set(value) != {"value"}:
                    problems.append(f"{label}: env {name} must be {{\"value\": ...}} with a valid name")
                elif not isinstance(value["value"], str | int | float | bool):
                    problems.append(f"{label}: env {name} value must be a scalar")
    return set(modules)


def _check_settings(label: str, module: Any, problems: list[str]) -> None:
    if not isinstance(module, Mapping) or module.get("type") != "docker":
        problems.append(f"{label}: type must be docker")
        return
    settings = module.get("settings")
    if not isinstance(settings, Mapping) or not isinstance(settings.get("image"), str) or not settings["image"]:
        problems.append(f"{label}: settings.image is required")
        return
    if "${" in settings["image"]:
        problems.append(f"{label}: image placeholder was not expanded")
    parts = [k for k in settings if k.startswith("createOptions")]
    unknown = [k for k in parts if k not in _CREATE_PARTS]
    if unknown:
        problems.append(f"{label}: unknown settings {unknown}")
    present = [k for k in _CREATE_PARTS if k in settings]
    if present != _CREATE_PARTS[:len(present)]:
        problems.append(f"{label}: createOptions parts must be consecutive from createOptions")
    for key in present:
        value = settings[key]
        if not isinstance(value, str):
            problems.append(f"{label}: settings.{key} must be a string (stringified JSON)")
        elif len(value) > 512:
            problems.append(f"{label}: settings.{key} is longer than 512 characters")
    if present and all(isinstance(settings[k], str) for k in present):
        try:
            parsed = json.loads("".join(settings[k] for k in present) or "{}")
        except json.JSONDecodeError:
            problems.append(f"{label}: createOptions is not valid JSON once joined")
        else:
            if not isinstance(parsed, Mapping):
                problems.append(f"{label}: createOptions must be a JSON object")


def _check_hub(hub: Mapping[str, Any], module_ids: set[str], endpoints: Mapping[str, Endpoints],
               problems: list[str]) -> None:
    routes = hub.get("routes")
    if not isinstance(routes, Mapping) or not routes:
        problems.append("$edgeHub: routes must be a non-empty object")
        routes = {}
    for name, spec in routes.items():
        if isinstance(spec, str):
            text = spec
        elif isinstance(spec, Mapping) and isinstance(spec.get("route"), str):
            text = spec["route"]
            priority, ttl = spec.get("priority", 0), spec.get("timeToLiveSecs", 0)
            if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
                problems.append(f"route {name}: priority must be 0-9")
            if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0:
                problems.append(f"route {name}: timeToLiveSecs must be a non-negative integer")
        else:
            problems.append(f"route {name}: must be a string or {{route, priority, timeToLiveSecs}}")
            continue
        try:
            route = parse_route(name, text)
        except ManifestError as exc:
            problems.append(exc.message)
            continue
        for module, role in ((route.source_module, "source"), (route.sink_module, "sink")):
            if module is not None and module != "*" and module not in module_ids:
                problems.append(f"route {name}: {role} module {module} is not in the deployment")
        source, sink = endpoints.get(route.source_module or ""), endpoints.get(route.sink_module or "")
        if source is not None and route.source_output is not None and route.source_output not in source.outputs:
            problems.append(f"route {name}: {route.source_module} has no output {route.source_output}")
        if sink is not None and route.sink_input is not None and route.sink_input not in sink.inputs:
            problems.append(f"route {name}: {route.sink_module} has no input {route.sink_input}")
    store = hub.get("storeAndForwardConfiguration")
    ttl = store.get("timeToLiveSecs") if isinstance(store, Mapping) else None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        problems.append("$edgeHub: storeAndForwardConfiguration.timeToLiveSecs must be a positive integer")


def project_endpoints() -> dict[str, Endpoints]:
    """The real inputs and outputs of this project's modules (each module declares its own)."""
    import importlib

    found: dict[str, Endpoints] = {}
    for package in ("package_installer", "inference_runner", "telemetry_reporter", "simulated_sensor",
                    "camera_sensor"):
        module = importlib.import_module(f"{package}.endpoints")
        found[package] = Endpoints(tuple(module.INPUTS), tuple(module.OUTPUTS))
    return found
