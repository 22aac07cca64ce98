"""Which sinks a message goes to. Pure code.

A message matching several routes to the same sink is delivered there once (IoT Hub and edgeHub
deduplicate per endpoint), with the best (lowest) priority and the longest time-to-live of the
routes that matched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edb_local.hub.message import HubMessage
from edb_local.hub.query.evaluate import UNDEFINED, lookup_path, matches
from edb_local.hub.routing.routes import Route, RouteTable, Sink


@dataclass(frozen=True, slots=True)
class Delivery:
    sink: Sink
    priority: int
    ttl_secs: int
    routes: tuple[str, ...]


def message_resolver(message: HubMessage) -> Callable[[tuple[str, ...]], Any]:
    system_lower = {k.lower(): v for k, v in message.system.items()}

    def resolve(parts: tuple[str, ...]) -> Any:
        head = parts[0]
        if head == "$body":
            return lookup_path(message.json_body(), parts[1:])
        if head.startswith("$"):
            if len(parts) != 1:
                return UNDEFINED
            return system_lower.get(head[1:].lower(), UNDEFINED)
        name = ".".join(parts)
        return message.application.get(name, UNDEFINED)

    return resolve


def _select(routes: list[Route], table: RouteTable, message: HubMessage) -> list[Delivery]:
    resolve = message_resolver(message)
    by_sink: dict[Sink, Delivery] = {}
    for route in routes:
        if not matches(route.condition, resolve):
            continue
        ttl = table.default_ttl_secs if route.ttl_secs is None else route.ttl_secs
        found = by_sink.get(route.sink)
        if found is None:
            by_sink[route.sink] = Delivery(route.sink, route.priority, ttl, (route.name,))
        else:
            by_sink[route.sink] = Delivery(route.sink, min(found.priority, route.priority),
                                           max(found.ttl_secs, ttl), (*found.routes, route.name))
    return list(by_sink.values())


def route_message(table: RouteTable, message: HubMessage, *, module_id: str | None,
                  output_name: str | None) -> list[Delivery]:
    candidates = [r for r in table.routes if r.source.matches_message(module_id, output_name)]
    return _select(candidates, table, message) if candidates else []


def route_twin_change(table: RouteTable, message: HubMessage) -> list[Delivery]:
    candidates = [r for r in table.routes if r.source.matches_twin_change()]
    return _select(candidates, table, message) if candidates else []
