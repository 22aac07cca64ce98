"""Twins, deployments and twin queries: pure unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edb_local.hub import twin as twins
from edb_local.hub.deployments import apply_modules_content, plan_device, validate_modules_content
from edb_local.hub.errors import HubError
from edb_local.hub.monitor_format import event_matches, upstream_event
from edb_local.hub.store import UpstreamRow
from edb_local.hub.twin import Twin
from edb_local.hub.twinquery import parse_twin_query, run_twin_query

keys = st.text(st.characters(min_codepoint=0x61, max_codepoint=0x7A), min_size=1, max_size=3)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
                           lambda inner: st.dictionaries(keys, inner, max_size=3), max_leaves=8)
docs = st.dictionaries(keys, json_values, max_size=4).map(lambda d: twins.merge_patch({}, d))


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail this
@given(docs, docs)
def test_diff_is_the_merge_patch_between_documents(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert twins.merge_patch(old, twins.diff(old, new)) == new


def test_versions_and_etags() -> None:
    twin = Twin("d", "m")
    reported = twins.apply_reported_patch(twin, {"a": {"b": 1}})
    assert (reported.reported_version, reported.version, reported.etag) == (2, 2, twin.etag)
    change = twins.apply_desired_patch(reported, {"x": 1, "$version": 99, "$metadata": {}})
    assert change.patch == {"x": 1, "$version": 2}
    assert change.twin.desired == {"x": 1} and change.twin.etag != twin.etag
    same = twins.apply_desired_patch(change.twin, {"x": 1})
    assert same.patch is None and same.twin is change.twin
    replaced = twins.replace_desired(change.twin, {"y": {"z": 2}})
    assert replaced.patch == {"x": None, "y": {"z": 2}, "$version": 3}
    assert replaced.twin.mqtt_document() == {"desired": {"y": {"z": 2}, "$version": 3},
                                             "reported": {"a": {"b": 1}, "$version": 2}}
    assert twins.etag_matches(None, "e") and twins.etag_matches('"*"', "e") and twins.etag_matches('"e"', "e")
    assert not twins.etag_matches('"f"', "e")


@pytest.mark.parametrize("patch, code", [
    ({"a.b": 1}, "HUB_TWIN_INVALID"),
    ({"$x": 1}, "HUB_TWIN_INVALID"),
    ({"a b": 1}, "HUB_TWIN_INVALID"),
    ({"a\x01": 1}, "HUB_TWIN_INVALID"),
    ({"": 1}, "HUB_TWIN_INVALID"),
    ({"k" * 1025: 1}, "HUB_TWIN_INVALID"),
    ({"s": "x" * 4097}, "HUB_TWIN_INVALID"),
    ([1, 2], "HUB_TWIN_INVALID"),
    ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": 1}}}}}}}}}}}, "HUB_TWIN_INVALID"),
    ({f"k{i}": "x" * 4000 for i in range(9)}, "HUB_TWIN_TOO_LARGE"),
])
def test_reported_patch_limits(patch: Any, code: str) -> None:
    twin = Twin("d", "m")
    with pytest.raises(HubError) as err:
        twins.apply_reported_patch(twin, patch)
    assert err.value.code == code


BASE = {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"a": {"version": "1"}}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {"up": "FROM /* INTO $upstream"}}},
        "a": {"properties.desired": {"k": 1}}}


def _config(cid: str, content: dict[str, Any], condition: str, priority: int, created: str) -> dict[str, Any]:
    return {"id": cid, "content": {"modulesContent": content}, "targetCondition": condition, "priority": priority,
            "createdTimeUtc": created}


def test_deployment_selection_and_layers() -> None:
    device = {"deviceId": "d1", "tags": {"env": "prod", "site": "x"}, "capabilities": {"iotEdge": True}}
    low = _config("low", BASE, "tags.env = 'prod'", 1, "2026-01-01")
    high = _config("high", {**BASE, "a": {"properties.desired": {"k": 2}}}, "tags.env='prod' AND deviceId='d1'",
                   5, "2026-01-02")
    other = _config("other", BASE, "tags.env = 'dev'", 9, "2026-01-03")
    layer = _config("layer", {"$edgeAgent": {"properties.desired.modules.b": {"version": "2"}},
                              "$edgeHub": {"properties.desired.routes.b": "FROM /messages/modules/b/* INTO $upstream"},
                              "b": {"properties.desired": {"z": True}}}, "tags.site = 'x'", 6, "2026-01-04")
    plan = plan_device(device, [low, high, other, layer])
    assert plan is not None
    assert plan.applied == ("high", "layer")
    assert set(plan.targeted) == {"low", "high", "layer"}
    assert plan.modules_desired["a"] == {"k": 2}
    assert plan.modules_desired["$edgeAgent"]["modules"] == {"a": {"version": "1"}, "b": {"version": "2"}}
    assert set(plan.modules_desired["$edgeHub"]["routes"]) == {"up", "b"}
    assert plan.modules_desired["b"] == {"z": True}
    tie = _config("tie", BASE, "*", 5, "2026-02-01")   # same priority, created later: wins
    assert plan_device(device, [high, tie]).applied == ("tie",)  # type: ignore[union-attr]
    assert plan_device({"deviceId": "d2", "tags": {}}, [low, high]) is None


def test_layers_apply_only_on_an_applied_base_they_outrank() -> None:
    """az iot edge deployment create: "Any edge device targeted by a layered deployment first needs a
    base deployment applied to it. Any layered deployment targeting a device must have a higher
    priority than the base deployment for that device." """
    device = {"deviceId": "d1", "tags": {"ring": "canary"}, "capabilities": {"iotEdge": True}}
    layer = _config("layer", {"$edgeAgent": {},
                              "installer": {"properties.desired.packages.digits": {"version": "2"}}},
                    "tags.ring = 'canary'", 20, "2026-01-04")
    alone = plan_device(device, [layer])
    assert alone is not None and alone.applied == () and alone.targeted == ("layer",)
    assert alone.modules_desired == {}  # nothing to write: the twins keep what they have
    base = _config("base", {**BASE, "installer": {"properties.desired": {"packages": {"other": {"version": "1"}}}}},
                   "*", 10, "2026-01-01")
    plan = plan_device(device, [base, layer])
    assert plan is not None and plan.applied == ("base", "layer")
    assert plan.modules_desired["installer"] == {"packages": {"other": {"version": "1"}, "digits": {"version": "2"}}}
    outranked = _config("low-layer", {"$edgeAgent": {},
                                      "installer": {"properties.desired.packages.x": {"version": "9"}}},
                        "*", 10, "2026-01-05")
    plan = plan_device(device, [base, layer, outranked])
    assert plan is not None and plan.applied == ("base", "layer") and "low-layer" in plan.targeted
    assert "x" not in plan.modules_desired["installer"]["packages"]


def test_dotted_keys_create_intermediate_objects() -> None:
    desired: dict[str, Any] = {}
    apply_modules_content(desired, {"m": {"properties.desired.a.b.c": 1}})
    assert desired == {"m": {"a": {"b": {"c": 1}}}}


@pytest.mark.parametrize("content, code", [
    ({}, "HUB_CONFIGURATION_INVALID"),
    ({"$edgeAgent": {"properties.desired": {}}}, "HUB_CONFIGURATION_INVALID"),            # no $edgeHub
    ({"$edgeAgent": {"properties.desired": {}}, "$edgeHub": {"desired": {}}}, "HUB_CONFIGURATION_INVALID"),
    ({"$edgeAgent": {"properties.desired": {}}, "$edgeHub": {"properties.desired": []}}, "HUB_CONFIGURATION_INVALID"),
    ({"$edgeAgent": {"properties.desired": {}},
      "$edgeHub": {"properties.desired": {"routes": {"r": "FROM x INTO y"}}}}, "HUB_ROUTE_INVALID"),
])
def test_invalid_deployments(content: dict[str, Any], code: str) -> None:
    with pytest.raises(HubError) as err:
        validate_modules_content(content)
    assert err.value.code == code


TWINS = [
    {"deviceId": "d1", "moduleId": "$edgeAgent", "tags": {}, "configurations": {"dep": {"status": "Applied"}},
     "properties": {"reported": {"lastDesiredStatus": {"code": 200}}}},
    {"deviceId": "d1", "moduleId": "installer", "tags": {"role": "x"},
     "properties": {"reported": {"packages": {"model": {"state": "installed"}}}}},
    {"deviceId": "d2", "moduleId": "installer", "tags": {}, "properties": {"reported": {}}},
]


@pytest.mark.parametrize("query, items", [
    ("SELECT * FROM devices.modules WHERE moduleId = 'installer'", [TWINS[1], TWINS[2]]),
    ("select * from devices.modules where deviceId='d1' and moduleId='installer'", [TWINS[1]]),
    ("SELECT * FROM devices.modules WHERE properties.reported.packages.model.state = 'installed'", [TWINS[1]]),
    ("SELECT * FROM devices.modules WHERE configurations.[[dep]].status = 'Applied'", [TWINS[0]]),
    ("SELECT * FROM devices.modules WHERE tags.role = 'x' OR NOT IS_DEFINED(properties.reported.packages)",
     TWINS),
    ("SELECT deviceId, properties.reported.packages.model.state AS state FROM devices.modules "
     "WHERE moduleId IN ['installer']", [{"deviceId": "d1", "state": "installed"}, {"deviceId": "d2"}]),
    ("SELECT COUNT() AS n FROM devices.modules WHERE deviceId = 'd1'", [{"n": 2}]),
])
def test_twin_queries(query: str, items: list[dict[str, Any]]) -> None:
    _kind, result = run_twin_query(parse_twin_query(query), [], TWINS)
    assert result == items


@pytest.mark.parametrize("query", ["DELETE FROM devices", "SELECT * FROM jobs", "SELECT * FROM devices.jobs",
                                   "SELECT * FROM devices WHERE", "SELECT * FROM devices GROUP BY tags.x",
                                   "SELECT COUNT(x) FROM devices", "SELECT * FROM devices WHERE x ="])
def test_invalid_twin_queries(query: str) -> None:
    with pytest.raises(HubError) as err:
        parse_twin_query(query)
    assert err.value.code == "HUB_QUERY_INVALID"


def test_monitor_event_shape_and_filters() -> None:
    row = UpstreamRow(3, 1_700_000_000.0, "d1", "reporter", b'{"score": 1}', {
        "system": {"contentType": "application/json", "contentEncoding": "utf-8", "messageId": "m1",
                   "connectionDeviceId": "d1", "connectionModuleId": "reporter"},
        "application": {"messageType": "alert"}})
    event = upstream_event(row)
    assert event["event"]["origin"] == "d1" and event["event"]["module"] == "reporter"
    assert event["event"]["payload"] == {"score": 1}
    assert event["event"]["properties"]["system"]["content_type"] == "application/json"
    assert event["event"]["properties"]["system"]["message_id"] == "m1"
    assert event["event"]["properties"]["system"]["iothub-message-source"] == "Telemetry"
    assert event["event"]["properties"]["application"] == {"messageType": "alert"}
    assert event_matches(event, device="d1", module="reporter", properties={"messageType": "alert"})
    assert not event_matches(event, module="runner")
    assert not event_matches(event, properties={"messageType": "event"})
    binary = upstream_event(UpstreamRow(4, 0.0, "d1", None, b"\xff\x00", {"system": {}, "application": {}}))
    assert binary["event"]["payload"] == "/wA=" and "module" not in binary["event"]
    assert binary["event"]["properties"]["system"]["edb-payload-encoding"] == "base64"
    text = upstream_event(UpstreamRow(5, 0.0, "d1", None, b"hello", {"system": {}, "application": {}}))
    assert text["event"]["payload"] == "hello"
