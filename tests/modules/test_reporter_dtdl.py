"""The reporter's IoT Plug and Play model (DTDL v2) is structurally valid and describes every
telemetry field and reported property the reporter actually sends.

The messages checked are produced by the reporter's own store (journal -> window -> outbox and an
alert), not written by hand, so a field added to the telemetry without the model fails here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edb.schemas import Alert, AlertType, ErrorInfo, EventKind, InferenceResult, ModelRef, ModuleEvent
from telemetry_reporter.main import MODEL_ID
from telemetry_reporter.service import ReporterService
from telemetry_reporter.store import ReporterStore

DTDL_FILE = Path(__file__).resolve().parents[2] / "modules" / "telemetry_reporter" / "dtdl" / "telemetry_reporter.json"
SEGMENT = r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?"
DTMI = re.compile(rf"dtmi:{SEGMENT}(?::{SEGMENT})*;[1-9][0-9]{{0,8}}")
NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?")
PRIMITIVES = {"boolean", "date", "dateTime", "double", "duration", "float", "integer", "long", "string", "time"}
CONTENT_TYPES = {"Telemetry", "Property", "Command", "Relationship", "Component"}
#: Semantic types used here and the units they accept (DTDL v2 semantic types need a unit).
SEMANTIC_UNITS = {"TimeSpan": {"second", "millisecond", "minute", "hour", "day"}}


def types_of(element: dict[str, Any]) -> set[str]:
    value = element["@type"]
    return {value} if isinstance(value, str) else set(value)


def check_schema(schema: Any, where: str) -> None:
    if isinstance(schema, str):
        assert schema in PRIMITIVES, f"{where}: unknown schema {schema!r}"
        return
    assert isinstance(schema, dict), where
    kind = schema["@type"]
    if kind == "Object":
        names = [f["name"] for f in schema["fields"]]
        assert len(names) == len(set(names)), f"{where}: duplicate fields"
        for f in schema["fields"]:
            assert NAME.fullmatch(f["name"]) and len(f["name"]) <= 64, f"{where}.{f['name']}"
            check_schema(f["schema"], f"{where}.{f['name']}")
    elif kind == "Array":
        check_schema(schema["elementSchema"], f"{where}[]")
    elif kind == "Map":
        assert schema["mapKey"]["schema"] == "string" and NAME.fullmatch(schema["mapKey"]["name"]), where
        assert NAME.fullmatch(schema["mapValue"]["name"]), where
        check_schema(schema["mapValue"]["schema"], f"{where}{{}}")
    elif kind == "Enum":
        assert schema["valueSchema"] in ("integer", "string"), where
        python_type = int if schema["valueSchema"] == "integer" else str
        for value in schema["enumValues"]:
            assert NAME.fullmatch(value["name"]) and isinstance(value["enumValue"], python_type), where
    else:
        raise AssertionError(f"{where}: unknown complex schema {kind!r}")


def _is_datetime(value: object) -> bool:
    return isinstance(value, str) and dt.datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_PRIMITIVE_CHECKS: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str), "integer": _is_integer, "long": _is_integer,
    "boolean": lambda v: isinstance(v, bool), "double": _is_number, "float": _is_number, "dateTime": _is_datetime,
}


def conforms(value: Any, schema: Any, where: str) -> None:
    """``value`` (as the reporter sends it) has the type ``schema`` describes; null means absent."""
    if value is None:
        return
    if isinstance(schema, str):
        assert _PRIMITIVE_CHECKS[schema](value), f"{where}: {value!r} is not {schema}"
        return
    kind = schema["@type"]
    if kind == "Object":
        assert isinstance(value, dict), where
        fields = {f["name"]: f["schema"] for f in schema["fields"]}
        assert set(value) <= set(fields), f"{where}: fields {sorted(set(value) - set(fields))} are not described"
        for key, item in value.items():
            conforms(item, fields[key], f"{where}.{key}")
    elif kind == "Array":
        assert isinstance(value, list), where
        for i, item in enumerate(value):
            conforms(item, schema["elementSchema"], f"{where}[{i}]")
    elif kind == "Map":
        assert isinstance(value, dict), where
        for key, item in value.items():
            conforms(item, schema["mapValue"]["schema"], f"{where}[{key}]")
    elif kind == "Enum":
        assert value in {v["enumValue"] for v in schema["enumValues"]}, f"{where}: {value!r} not in the enum"


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DTDL_FILE.read_text())
    return doc


def test_the_model_is_structurally_valid_dtdl_v2(model: dict[str, Any]) -> None:
    assert model["@context"] == "dtmi:dtdl:context;2"
    assert model["@type"] == "Interface"
    assert DTMI.fullmatch(model["@id"]) and model["@id"] == MODEL_ID
    assert isinstance(model.get("displayName", ""), str) and isinstance(model.get("description", ""), str)
    names = [c["name"] for c in model["contents"]]
    assert len(names) == len(set(names)), "content names must be unique"
    for content in model["contents"]:
        kinds = types_of(content)
        primary = kinds & CONTENT_TYPES
        assert len(primary) == 1, f"{content['name']}: {kinds}"
        assert NAME.fullmatch(content["name"]) and len(content["name"]) <= 64, content["name"]
        for semantic in kinds - CONTENT_TYPES:
            assert semantic in SEMANTIC_UNITS and content.get("unit") in SEMANTIC_UNITS[semantic], content["name"]
        if "@id" in content:
            assert DTMI.fullmatch(content["@id"])
        if primary == {"Command"}:
            for part in ("request", "response"):
                if part in content:
                    assert NAME.fullmatch(content[part]["name"])
                    check_schema(content[part]["schema"], f"{content['name']}.{part}")
            continue
        if primary == {"Property"}:
            assert isinstance(content.get("writable", False), bool)
        check_schema(content["schema"], content["name"])


def _sent_messages(tmp_path: Path) -> list[tuple[dict[str, Any], dict[str, str]]]:
    store = ReporterStore(tmp_path / "reporter.sqlite")
    now = 1_900_000_000.0
    store.window_start(now)
    results = [InferenceResult("a", ModelRef("digits", "2.0.0"), [3], [0.91], expected=3, latency_ms=4.5),
               InferenceResult("c", ModelRef("reg", "1.0.0"), None, outputs={"variable": [[1.5]]}, latency_ms=2.0),
               InferenceResult("b", ModelRef("digits", "2.0.0"), ["cat", 7], [0.5, 0.7], latency_ms=3.0),
               InferenceResult("d", None, None, error=ErrorInfo("RUNNER_NO_MODEL", "x"))]
    for i, result in enumerate(results):
        store.journal("result", result.to_json(), now + i, f"r{i}")
    events = [ModuleEvent(EventKind.PACKAGE_INSTALLED, "package_installer", "digits", "2.0.0", 2, "installed",
                          duration_ms=812.0),
              ModuleEvent(EventKind.MODEL_LOADED, "inference_runner", "digits", "2.0.0"),
              ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "digits", "3.0.0",
                          error=ErrorInfo("CPK_TAG_MISMATCH", "m"))]
    for i, event in enumerate(events):
        store.journal("event", event.to_json(), now + 10 + i, f"e{i}")
    for alert_type in AlertType:
        store.record_alert(Alert(alert_type, "CPK_TAG_MISMATCH", "m", "digits", "3.0.0", "package_installer"), now)
    store.flush_window(now + 20)
    messages = [(json.loads(item.body), item.properties) for item in store.pending(limit=100)]
    store.close()
    return messages


def test_every_field_the_reporter_sends_is_described(model: dict[str, Any], tmp_path: Path) -> None:
    telemetry = {c["name"]: c["schema"] for c in model["contents"] if "Telemetry" in types_of(c)}
    messages = _sent_messages(tmp_path)
    kinds = {body["messageType"] for body, _ in messages}
    assert kinds == {"metrics", "alert"}
    for body, properties in messages:
        assert properties["messageType"] == body["messageType"]
        for key, value in body.items():
            assert key in telemetry, f"{body['messageType']} field {key!r} is not described in the model"
            conforms(value, telemetry[key], key)
    metrics = next(body for body, _ in messages if body["messageType"] == "metrics")
    assert metrics["lastResult"]["predictions"] == ["cat", "7"]  # the sample checked above is a real one


async def test_reported_properties_and_commands_are_described(model: dict[str, Any], tmp_path: Path) -> None:
    properties = {c["name"]: c for c in model["contents"] if "Property" in types_of(c)}
    commands = {c["name"] for c in model["contents"] if "Command" in types_of(c)}
    service = ReporterService(client=None, store=ReporterStore(tmp_path / "r.sqlite"))
    service.last_sent_at = "2030-01-01T00:00:00.000Z"
    reported = {"reporter": service.status()}
    for key, value in reported.items():
        assert key in properties and properties[key].get("writable") is False
        conforms(value, properties[key]["schema"], key)
    assert properties["metricsIntervalSeconds"]["writable"] is True
    for command in ("status", "flush"):
        assert command in commands
        status, _ = await service.handle_method(command, None)
        assert status == 200
