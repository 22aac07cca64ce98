"""``SELECT ... FROM devices[.modules] [WHERE ...]``: the IoT Hub twin query subset. Pure code.

Supported: ``SELECT *``, a projection list of paths with optional ``AS alias``, ``SELECT COUNT() [AS n]``;
``FROM devices`` (device twins) or ``FROM devices.modules`` (module twins); any ``WHERE`` expression
of the query language over the twin document (``deviceId``, ``moduleId``, ``tags.x``,
``properties.desired.x``, ``properties.reported.x``, ``configurations.[[id]].status``,
``capabilities.iotEdge``, ``connectionState``, ...). Paths are case-sensitive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.query.evaluate import UNDEFINED, check_functions, lookup_path, matches
from edb_local.hub.query.expr import Node, QuerySyntaxError, TokenCursor, parse_prefix, tokenize


@dataclass(frozen=True)
class Projection:
    path: tuple[str, ...]
    alias: str


@dataclass(frozen=True)
class TwinQuery:
    source: str                         # "devices" or "devices.modules"
    where: Node | None
    star: bool = True
    count_alias: str | None = None      # SELECT COUNT() AS alias
    projections: tuple[Projection, ...] = ()


def _fail(message: str) -> HubError:
    return HubError(message, code=errors.QUERY_INVALID)


class _Cursor(TokenCursor):
    def name(self) -> str:
        token = self.peek()
        if token.kind != "NAME":
            raise _fail(f"expected a name at {token.pos}")
        self.pos += 1
        return str(token.value)


def parse_twin_query(text: str) -> TwinQuery:
    if not isinstance(text, str):
        raise _fail("query must be a string")
    try:
        cursor = _Cursor(tokenize(text))
        if not cursor.keyword("SELECT"):
            raise _fail("a query starts with SELECT")
        star, count_alias, projections = False, None, []
        if cursor.op("*"):
            star = True
        elif cursor.peek().kind == "NAME" and cursor.peek().text.upper() == "COUNT":
            cursor.pos += 1
            if not (cursor.op("(") and cursor.op(")")):
                raise _fail("COUNT takes no arguments: COUNT()")
            count_alias = cursor.name() if cursor.keyword("AS") else "numberOfDevices"
        else:
            while True:
                parts = [cursor.name()]
                while cursor.op("."):
                    parts.append(cursor.name())
                alias = cursor.name() if cursor.keyword("AS") else parts[-1]
                projections.append(Projection(tuple(parts), alias))
                if not cursor.op(","):
                    break
        if not cursor.keyword("FROM"):
            raise _fail("expected FROM")
        source = cursor.name().lower()
        if source != "devices":
            raise _fail("only FROM devices and FROM devices.modules are supported")
        if cursor.op("."):
            if cursor.name().lower() != "modules":
                raise _fail("only FROM devices and FROM devices.modules are supported")
            source = "devices.modules"
        where: Node | None = None
        if cursor.keyword("WHERE"):
            where, cursor.pos = parse_prefix(cursor.tokens, cursor.pos)
            check_functions(where)
        if cursor.peek().kind != "EOF":
            raise _fail(f"unsupported clause at {cursor.peek().pos}: {cursor.peek().text!r}")
    except QuerySyntaxError as exc:
        raise _fail(exc.message) from None
    return TwinQuery(source=source, where=where, star=star, count_alias=count_alias,
                     projections=tuple(projections))


def _resolver(row: dict[str, Any]) -> Callable[[tuple[str, ...]], Any]:
    return lambda parts: lookup_path(row, parts)


def run_twin_query(query: TwinQuery, device_twins: list[dict[str, Any]],
                   module_twins: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Return (item type, items): "twin" for SELECT *, "raw" for projections and counts."""
    rows = module_twins if query.source == "devices.modules" else device_twins
    selected = [row for row in rows if matches(query.where, _resolver(row))]
    if query.count_alias is not None:
        return "raw", [{query.count_alias: len(selected)}]
    if query.star:
        return "twin", selected
    items = []
    for row in selected:
        item: dict[str, Any] = {}
        for projection in query.projections:
            value = lookup_path(row, projection.path)
            if value is not UNDEFINED:
                item[projection.alias] = value
        items.append(item)
    return "raw", items

