"""Route grammar, the routing query language and the matcher: pure unit tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edb_local.hub.errors import HubError
from edb_local.hub.message import HubMessage
from edb_local.hub.query import UNDEFINED, evaluate, parse_expression
from edb_local.hub.query.evaluate import check_functions
from edb_local.hub.routing import (
    UPSTREAM,
    Sink,
    Source,
    parse_edgehub_desired,
    parse_route,
    route_message,
    route_twin_change,
)
from edb_local.hub.routing.matcher import message_resolver

SINK = 'BrokeredEndpoint("/modules/runner/inputs/in1")'


@pytest.mark.parametrize("text, source", [
    ("/*", Source("all")),
    ("/messages/*", Source("messages")),
    ("/messages/modules/*", Source("modules")),
    ("/messages/modules/sensor/*", Source("module", "sensor")),
    ("/messages/modules/sensor/outputs/*", Source("outputs", "sensor")),
    ("/messages/modules/sensor/outputs/temp", Source("output", "sensor", "temp")),
    ("/twinChangeNotifications", Source("twin")),
])
def test_every_source_form(text: str, source: Source) -> None:
    assert parse_route("r", f"FROM {text} INTO $upstream").source == source


def test_sinks_and_keywords_are_case_insensitive() -> None:
    route = parse_route("r", f"from /* where a = 'b' into {SINK.replace('Brokered', 'brokered')}")
    assert route.sink == Sink("runner", "in1")
    assert parse_route("r", "FROM /* INTO $UPSTREAM").sink == UPSTREAM
    assert parse_route("r", "FROM /* INTO BrokeredEndpoint('/modules/m/inputs/i')").sink == Sink("m", "i")


@pytest.mark.parametrize("text", [
    "FROM /* INTO",
    "FROM /messages INTO $upstream",
    "FROM /messages/modules INTO $upstream",
    "FROM /messages/modules/m/outputs INTO $upstream",
    "FROM /messages/modules/m/inputs/x INTO $upstream",
    "FROM /* INTO $downstream",
    'FROM /* INTO BrokeredEndpoint("/modules/m/outputs/x")',
    "FROM /* WHERE INTO $upstream",
    "FROM /* WHERE a = INTO $upstream",
    "FROM /* WHERE $twin.tags.a = 1 INTO $upstream",
    "FROM /* WHERE NOPE(a) INTO $upstream",
    "FROM /* WHERE IS_DEFINED(a, b) INTO $upstream",
    "FROM /* WHERE a = 'unterminated INTO $upstream",
    "SELECT * FROM /*",
])
def test_invalid_routes_are_refused(text: str) -> None:
    with pytest.raises(HubError) as err:
        parse_route("bad", text)
    assert err.value.code == "HUB_ROUTE_INVALID"


def test_edgehub_desired_properties() -> None:
    table = parse_edgehub_desired({
        "schemaVersion": "1.1",
        "routes": {"a": "FROM /* INTO $upstream",
                   "b": {"route": f"FROM /messages/modules/s/* INTO {SINK}", "priority": 3, "timeToLiveSecs": 30},
                   "removed": None},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 60},
    })
    assert [r.name for r in table.routes] == ["a", "b"]
    assert table.routes[1].priority == 3 and table.routes[1].ttl_secs == 30
    assert table.default_ttl_secs == 60
    for bad in ({"schemaVersion": "9.9"}, {"routes": []}, {"routes": {"r": {"route": "FROM /* INTO $upstream",
                                                                             "priority": 10}}},
                {"routes": {"r": 5}}, {"storeAndForwardConfiguration": {"timeToLiveSecs": -1}}):
        with pytest.raises(HubError) as err:
            parse_edgehub_desired(bad)
        assert err.value.code == "HUB_ROUTE_INVALID"


def _message(body: Any = None, *, ct: str = "application/json", ce: str = "utf-8", **app: str) -> HubMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HubMessage(raw, {"contentType": ct, "contentEncoding": ce, "connectionDeviceId": "d",
                            "connectionModuleId": "sensor", "outputName": "out"}, dict(app))


def _eval(condition: str, message: HubMessage) -> Any:
    node = parse_expression(condition)
    check_functions(node)
    return evaluate(node, message_resolver(message))


@pytest.mark.parametrize("condition, expected", [
    ("$body.temperature > 30", True),
    ("$body.temperature >= 31.5", True),
    ("$body.temperature < 30", False),
    ("$body.machine.state = 'on'", True),
    ("$body.machine.state <> 'on'", False),
    ("$body.tags = ['x']", True),               # arrays compare by value with = and !=
    ("$body.tags > ['x']", UNDEFINED),          # ... and are not ordered
    ("$body.missing > 1", UNDEFINED),
    ("$body.temperature > '30'", UNDEFINED),    # number vs string
    ("alert = 'true'", True),
    ("alert = true", UNDEFINED),                # application properties are strings
    ("level IN ['high', 'critical']", True),
    ("level NIN ['high']", False),
    ("$contentType = 'application/json'", True),
    ("$connectionModuleId = 'sensor' AND $connectionDeviceId = 'd'", True),
    ("$outputname = 'out'", True),              # system property names are case-insensitive
    ("IS_DEFINED($body.temperature) AND NOT IS_DEFINED(nope)", True),
    ("nope = 'x' OR alert = 'true'", True),
    ("nope = 'x' AND alert = 'true'", UNDEFINED),
    ("NOT (nope = 'x')", UNDEFINED),
    ("nope = 'x' AND alert = 'false'", False),
    ("STARTS_WITH(level, 'hi') AND LENGTH(level) = 4 AND UPPER(level) = 'HIGH'", True),
    ("AS_NUMBER(count) + 1 = 43", True),
    ("$body.temperature * 2 - 1 = 70 AND 7 % 4 = 3", True),
    ("$body.temperature / 0 = 1", UNDEFINED),
    ("CONTAINS($body.machine.state, 'o') AND ENDS_WITH($body.machine.state, 'n')", True),
    ("IS_STRING(level) AND IS_NUMBER($body.temperature) AND IS_OBJECT($body.machine) AND IS_NULL($body.n)", True),
    ("[[odd name]] = 'v'", True),
    ("-$body.temperature < 0 AND ABS(-3) = 3 AND FLOOR(2.7) = 2 AND CEILING(2.1) = 3", True),
])
def test_conditions(condition: str, expected: Any) -> None:
    message = _message({"temperature": 35.5, "machine": {"state": "on"}, "tags": ["x"], "n": None},
                       alert="true", level="high", count="42", **{"odd name": "v"})
    assert _eval(condition, message) is expected


@pytest.mark.parametrize("ct, ce, body", [
    ("text/plain", "utf-8", json.dumps({"temperature": 99}).encode()),
    ("application/json", "latin-1", json.dumps({"temperature": 99}).encode()),
    ("application/json", "utf-8", b"{not json"),
    ("application/json", "utf-8", b"\xff\xfe"),
])
def test_body_is_undefined_unless_json_in_a_unicode_encoding(ct: str, ce: str, body: bytes) -> None:
    assert _eval("$body.temperature > 1", _message(body, ct=ct, ce=ce)) is UNDEFINED


def test_utf16_json_bodies_are_queryable() -> None:
    message = HubMessage(json.dumps({"t": 5}).encode("utf-16"), {"contentType": "application/json; charset=utf-16",
                                                                "contentEncoding": "UTF-16"})
    assert _eval("$body.t = 5", message) is True


def test_matcher_sources_dedup_and_priorities() -> None:
    table = parse_edgehub_desired({"routes": {
        "all": "FROM /* INTO $upstream",
        "hot": {"route": f"FROM /messages/modules/sensor/outputs/out WHERE $body.t > 30 INTO {SINK}", "priority": 4},
        "hot2": {"route": f"FROM /messages/modules/sensor/* WHERE $body.t > 40 INTO {SINK}", "priority": 1,
                 "timeToLiveSecs": 5},
        "other": f"FROM /messages/modules/other/* INTO {SINK}",
        "twin": "FROM /twinChangeNotifications INTO $upstream",
    }, "storeAndForwardConfiguration": {"timeToLiveSecs": 100}})
    deliveries = {d.sink: d for d in route_message(table, _message({"t": 50}), module_id="sensor", output_name="out")}
    assert set(deliveries) == {UPSTREAM, Sink("runner", "in1")}
    runner = deliveries[Sink("runner", "in1")]
    assert runner.priority == 1 and runner.ttl_secs == 100 and runner.routes == ("hot", "hot2")
    cool = route_message(table, _message({"t": 35}), module_id="sensor", output_name="out")
    assert {(d.sink, d.priority, d.ttl_secs) for d in cool} == {(UPSTREAM, 2**31 - 1, 100),
                                                               (Sink("runner", "in1"), 4, 100)}
    assert [d.sink for d in route_message(table, _message({"t": 50}), module_id="sensor", output_name=None)] \
        == [UPSTREAM, Sink("runner", "in1")]
    assert [d.routes for d in route_twin_change(table, _message({}))] == [("all", "twin")]
