"""edgeHub routes: ``FROM <source> [WHERE <condition>] INTO <sink>``. Pure code.

Sources (https://learn.microsoft.com/azure/iot-edge/module-composition#declare-routes):
``/*``, ``/messages/*``, ``/messages/modules/*``, ``/messages/modules/<m>/*``,
``/messages/modules/<m>/outputs/*``, ``/messages/modules/<m>/outputs/<o>``, ``/twinChangeNotifications``.
Sinks: ``$upstream`` and ``BrokeredEndpoint("/modules/<m>/inputs/<i>")``.
The condition is the IoT Hub routing query language: bare names are application properties,
``$name`` system properties, ``$body.a.b`` the JSON body (``$twin`` does not exist on IoT Edge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.query.evaluate import check_functions
from edb_local.hub.query.expr import Binary, Call, Node, Path, QuerySyntaxError, Unary, parse_expression

DEFAULT_PRIORITY = 2**31 - 1      # routes without a priority come after every prioritised one
DEFAULT_TTL_SECS = 7200           # edgeHub's storeAndForwardConfiguration default
SCHEMA_VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4")

_ROUTE_RE = re.compile(r"^\s*FROM\s+(?P<source>\S+)\s+(?:WHERE\s+(?P<where>.+)\s+)?INTO\s+(?P<sink>.+?)\s*$",
                       re.IGNORECASE | re.DOTALL)
_BROKERED_RE = re.compile(
    r"""^BrokeredEndpoint\s*\(\s*(?P<q>["'])/modules/(?P<module>[^/"']+)/inputs/(?P<input>[^/"']+)(?P=q)\s*\)$""",
    re.IGNORECASE)


def _invalid(message: str) -> HubError:
    return HubError(message, code=errors.ROUTE_INVALID)


@dataclass(frozen=True, slots=True)
class Source:
    kind: str                 # "all", "messages", "modules", "module", "outputs", "output", "twin"
    module: str | None = None
    output: str | None = None

    def matches_message(self, module_id: str | None, output_name: str | None) -> bool:
        if self.kind in ("all", "messages"):
            return True
        if self.kind == "twin" or module_id is None:
            return False
        if self.kind == "modules":
            return True
        if self.module != module_id:
            return False
        if self.kind == "module":
            return True
        if output_name is None:
            return False
        return self.kind == "outputs" or self.output == output_name

    def matches_twin_change(self) -> bool:
        return self.kind in ("all", "twin")


@dataclass(frozen=True, slots=True)
class Sink:
    module: str | None = None   # None: $upstream
    input: str | None = None

    @property
    def upstream(self) -> bool:
        return self.module is None

    def __str__(self) -> str:
        return "$upstream" if self.module is None else f'BrokeredEndpoint("/modules/{self.module}/inputs/{self.input}")'


UPSTREAM = Sink()


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    source: Source
    condition: Node | None
    sink: Sink
    priority: int = DEFAULT_PRIORITY
    ttl_secs: int | None = None   # None: the store-and-forward default


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...] = ()
    default_ttl_secs: int = DEFAULT_TTL_SECS


def parse_source(text: str) -> Source:
    if text == "/*":
        return Source("all")
    if text.lower() == "/twinchangenotifications":
        return Source("twin")
    parts = text.split("/")
    if parts[0] != "" or len(parts) < 3 or parts[1] != "messages":
        raise _invalid(f"unknown route source {text!r}")
    rest = parts[2:]
    if rest == ["*"]:
        return Source("messages")
    if rest[0] != "modules" or len(rest) < 2:
        raise _invalid(f"unknown route source {text!r}")
    if rest == ["modules", "*"]:
        return Source("modules")
    module = rest[1]
    if not module or module == "*":
        raise _invalid(f"unknown route source {text!r}")
    tail = rest[2:]
    if tail == ["*"]:
        return Source("module", module)
    if len(tail) == 2 and tail[0] == "outputs" and tail[1]:
        return Source("outputs", module) if tail[1] == "*" else Source("output", module, tail[1])
    raise _invalid(f"unknown route source {text!r}")


def parse_sink(text: str) -> Sink:
    if text.strip().lower() == "$upstream":
        return UPSTREAM
    match = _BROKERED_RE.match(text.strip())
    if match is None:
        raise _invalid(f"unknown route sink {text!r}")
    return Sink(match["module"], match["input"])


def _check_condition_paths(node: Node) -> None:
    if isinstance(node, Path):
        head = node.parts[0]
        if head.lower() == "$twin":
            raise _invalid("$twin is not available in IoT Edge routes")
        if head == "$body" and len(node.parts) < 2:
            raise _invalid("$body must be followed by a property path")
    elif isinstance(node, Unary):
        _check_condition_paths(node.operand)
    elif isinstance(node, Binary):
        _check_condition_paths(node.left)
        _check_condition_paths(node.right)
    elif isinstance(node, Call):
        for arg in node.args:
            _check_condition_paths(arg)


def parse_route(name: str, text: Any, *, priority: int = DEFAULT_PRIORITY, ttl_secs: int | None = None) -> Route:
    if not isinstance(text, str):
        raise _invalid(f"route {name!r} is not a string")
    match = _ROUTE_RE.match(text)
    if match is None:
        raise _invalid(f"route {name!r} is not `FROM <source> [WHERE <condition>] INTO <sink>`")
    condition: Node | None = None
    if match["where"] is not None:
        try:
            condition = parse_expression(match["where"])
            check_functions(condition)
        except QuerySyntaxError as exc:
            raise _invalid(f"route {name!r}: {exc.message}") from None
        _check_condition_paths(condition)
    return Route(name=name, source=parse_source(match["source"]), condition=condition,
                 sink=parse_sink(match["sink"]), priority=priority, ttl_secs=ttl_secs)


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{what} must be an integer in {low}..{high}")
    return value


def parse_edgehub_desired(desired: dict[str, Any]) -> RouteTable:
    """Build the route table from the `$edgeHub` module twin's desired properties."""
    schema = desired.get("schemaVersion", "1.0")
    if schema not in SCHEMA_VERSIONS:
        raise _invalid(f"unsupported $edgeHub schemaVersion {schema!r}")
    routes_doc = desired.get("routes")
    routes_doc = {} if routes_doc is None else routes_doc
    if not isinstance(routes_doc, dict):
        raise _invalid("routes must be an object")
    saf = desired.get("storeAndForwardConfiguration")
    saf = {} if saf is None else saf
    if not isinstance(saf, dict):
        raise _invalid("storeAndForwardConfiguration must be an object")
    default_ttl = _int_in(saf.get("timeToLiveSecs", DEFAULT_TTL_SECS), 0, 2**31 - 1, "timeToLiveSecs")
    routes: list[Route] = []
    for name, spec in sorted(routes_doc.items()):
        if isinstance(spec, str):
            routes.append(parse_route(name, spec))
        elif isinstance(spec, dict):
            priority = spec.get("priority")
            ttl = spec.get("timeToLiveSecs")
            routes.append(parse_route(
                name, spec.get("route"),
                priority=DEFAULT_PRIORITY if priority is None else _int_in(priority, 0, 9, f"route {name!r} priority"),
                ttl_secs=None if ttl is None else _int_in(ttl, 0, 2**31 - 1, f"route {name!r} timeToLiveSecs"),
            ))
        elif spec is not None:
            raise _invalid(f"route {name!r} must be a string or an object")
    return RouteTable(tuple(routes), default_ttl)
