"""IoT Edge deployments: validation, automatic-deployment selection, layered merges. Pure code.

- A deployment's content is ``{"modulesContent": {"<module>": {"properties.desired": {...}}}}``.
- Automatic deployments (configurations with ``modulesContent``) target edge devices whose twin
  satisfies ``targetCondition`` (the query language over the device twin: ``tags.env = 'prod'``,
  ``deviceId = 'd1'``; ``*`` targets every edge device). Among *base* deployments the highest
  ``priority`` wins, ties going to the most recently created; there is no merge between bases.
- *Layered* deployments (``$edgeAgent`` content without a whole ``properties.desired``) are then
  applied on top in ascending priority: each key ``properties.desired.a.b`` sets that path in the
  module's desired properties (``properties.desired.modules.X``, ``properties.desired.routes.r``);
  a whole ``properties.desired`` of a user module replaces that module's desired properties.
- A layer applies only on top of an applied base and only with a higher priority than that base
  ("Any edge device targeted by a layered deployment first needs a base deployment applied to it.
  Any layered deployment targeting a device must have a higher priority than the base deployment
  for that device": the ``az iot edge deployment create`` reference). A layer that cannot apply is
  *Targeted*, not *Applied*, and a device with layers but no base keeps its desired properties as
  they are (before this rule the layer alone replaced them: the silent uninstall of issue 12).
- Desired properties from a deployment replace the module twin's desired properties.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.query.evaluate import check_functions, lookup_path, matches
from edb_local.hub.query.expr import Node, QuerySyntaxError, parse_expression
from edb_local.hub.routing.routes import parse_edgehub_desired

DESIRED = "properties.desired"
_PREFIX = DESIRED + "."


def _invalid(message: str) -> HubError:
    return HubError(message, code=errors.CONFIGURATION_INVALID)


def validate_modules_content(modules_content: Any, *, require_base: bool = False) -> None:
    if not isinstance(modules_content, dict) or not modules_content:
        raise _invalid("modulesContent must be a non-empty object")
    for module_id, content in modules_content.items():
        # a layered deployment must carry an $edgeAgent object, which may be empty (how-to-deploy-cli-at-scale)
        if module_id == "$edgeAgent" and content == {}:
            continue
        if not isinstance(content, dict) or not content:
            raise _invalid(f"modulesContent.{module_id} must be a non-empty object")
        for key, value in content.items():
            if key != DESIRED and not key.startswith(_PREFIX):
                raise _invalid(f"modulesContent.{module_id}: unknown key {key!r}")
            if key == DESIRED and not isinstance(value, dict):
                raise _invalid(f"modulesContent.{module_id}.properties.desired must be an object")
    if require_base and is_layered(modules_content):
        raise _invalid("$edgeAgent needs a whole properties.desired here (no layered keys)")
    if not is_layered(modules_content):
        agent = modules_content.get("$edgeAgent")
        hub = modules_content.get("$edgeHub")
        if not isinstance(hub, dict) or DESIRED not in hub:
            raise _invalid("a deployment needs $edgeHub properties.desired")
        if agent is None:
            raise _invalid("a deployment needs $edgeAgent properties.desired")
    hub_desired = (modules_content.get("$edgeHub") or {}).get(DESIRED)
    if isinstance(hub_desired, dict):
        parse_edgehub_desired(hub_desired)  # raises HUB_ROUTE_INVALID for bad routes
    for key, value in (modules_content.get("$edgeHub") or {}).items():
        if key.startswith(_PREFIX + "routes."):
            parse_edgehub_desired({"routes": {key[len(_PREFIX + "routes."):]: value}})


def is_layered(modules_content: dict[str, Any]) -> bool:
    agent = modules_content.get("$edgeAgent")
    return not (isinstance(agent, dict) and DESIRED in agent)


def parse_target_condition(text: Any) -> Node | None:
    if not isinstance(text, str):
        raise _invalid("targetCondition must be a string")
    if text.strip() in ("", "*"):
        return None
    try:
        node = parse_expression(text)
        check_functions(node)
    except QuerySyntaxError as exc:
        raise _invalid(f"targetCondition: {exc.message}") from None
    return node


@dataclass(frozen=True)
class DevicePlan:
    applied: tuple[str, ...]                  # configuration ids, base first
    targeted: tuple[str, ...]                 # every configuration whose condition matched
    modules_desired: dict[str, dict[str, Any]]


def _set_path(doc: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        inner = doc.get(part)
        if not isinstance(inner, dict):
            inner = {}
            doc[part] = inner
        doc = inner
    doc[path[-1]] = copy.deepcopy(value)


def apply_modules_content(base: dict[str, dict[str, Any]], modules_content: dict[str, Any]) -> None:
    """Merge one deployment's content into ``base`` (module -> desired), in place."""
    for module_id, content in modules_content.items():
        desired = base.setdefault(module_id, {})
        if DESIRED in content:
            base[module_id] = copy.deepcopy(content[DESIRED])
            desired = base[module_id]
        for key, value in sorted(content.items()):
            if key.startswith(_PREFIX):
                _set_path(desired, key[len(_PREFIX):].split("."), value)


def _sort_key(config: dict[str, Any]) -> tuple[int, str]:
    return int(config.get("priority") or 0), str(config.get("createdTimeUtc") or "")


def is_edge_configuration(config: dict[str, Any]) -> bool:
    content = config.get("content") or {}
    return isinstance(content, dict) and bool(content.get("modulesContent"))


def plan_device(device_twin: dict[str, Any], configurations: list[dict[str, Any]]) -> DevicePlan | None:
    """The deployment an edge device should run, or None if no automatic deployment targets it."""
    def resolve(parts: tuple[str, ...]) -> Any:
        return lookup_path(device_twin, parts)

    targeted = [c for c in configurations
                if is_edge_configuration(c) and matches(parse_target_condition(c.get("targetCondition", "")), resolve)]
    if not targeted:
        return None
    bases = [c for c in targeted if not is_layered(c["content"]["modulesContent"])]
    layers = sorted((c for c in targeted if is_layered(c["content"]["modulesContent"])), key=_sort_key)
    applied: list[dict[str, Any]] = []
    desired: dict[str, dict[str, Any]] = {}
    if not bases:  # layers need an applied base: nothing applies, the twins stay as they are
        return DevicePlan(applied=(), targeted=tuple(c["id"] for c in targeted), modules_desired={})
    base = max(bases, key=_sort_key)
    applied.append(base)
    apply_modules_content(desired, base["content"]["modulesContent"])
    base_priority = int(base.get("priority") or 0)
    for layer in layers:
        if int(layer.get("priority") or 0) <= base_priority:
            continue  # a layer must outrank the device's base to apply
        applied.append(layer)
        apply_modules_content(desired, layer["content"]["modulesContent"])
    return DevicePlan(applied=tuple(c["id"] for c in applied), targeted=tuple(c["id"] for c in targeted),
                      modules_desired=desired)
