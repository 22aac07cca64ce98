"""Device and module twins: documents, versions, patches. Pure: every operation returns a new twin.

IoT Hub rules kept here (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-device-twins):
- desired and reported carry their own ``$version``; a patch that changes desired bumps it and is
  pushed to a connected client as ``{...patch, "$version": N}``; the twin ``version`` counts every
  change; the ``etag`` changes when tags or desired change.
- patches are JSON merge patches: ``null`` deletes, objects merge, anything else replaces.
- keys: 1..1024 bytes, no control characters, no ``.``, ``$`` or space; string values up to 4 KB;
  depth at most 10; tags 8 KB, desired 32 KB, reported 32 KB.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
import struct
from dataclasses import dataclass, field, replace
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError

MAX_DEPTH = 10
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 4096
MAX_TAGS_BYTES = 8 * 1024
MAX_DESIRED_BYTES = 32 * 1024
MAX_REPORTED_BYTES = 32 * 1024
_FORBIDDEN_KEY_CHARS = frozenset(".$ ")

JsonObject = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Twin:
    device_id: str
    module_id: str | None = None
    tags: JsonObject = field(default_factory=dict)
    desired: JsonObject = field(default_factory=dict)
    reported: JsonObject = field(default_factory=dict)
    desired_version: int = 1
    reported_version: int = 1
    version: int = 1
    etag_version: int = 1
    desired_updated: str = field(default_factory=_now)
    reported_updated: str = field(default_factory=_now)
    #: The IoT Plug and Play model the client announced when it last connected ("" if none).
    model_id: str = ""

    @property
    def etag(self) -> str:
        return base64.b64encode(struct.pack(">Q", self.etag_version)).decode()

    # -- documents -------------------------------------------------------------------------

    def mqtt_document(self) -> JsonObject:
        """What `$iothub/twin/GET` answers: both sections with their `$version`."""
        return {"desired": {**self.desired, "$version": self.desired_version},
                "reported": {**self.reported, "$version": self.reported_version}}

    def service_properties(self) -> JsonObject:
        return {
            "desired": {**self.desired,
                        "$metadata": {"$lastUpdated": self.desired_updated,
                                      "$lastUpdatedVersion": self.desired_version},
                        "$version": self.desired_version},
            "reported": {**self.reported, "$metadata": {"$lastUpdated": self.reported_updated},
                         "$version": self.reported_version},
        }

    def to_record(self) -> JsonObject:
        return {"tags": self.tags, "desired": self.desired, "reported": self.reported,
                "desiredVersion": self.desired_version, "reportedVersion": self.reported_version,
                "version": self.version, "etagVersion": self.etag_version,
                "desiredUpdated": self.desired_updated, "reportedUpdated": self.reported_updated,
                "modelId": self.model_id}

    @classmethod
    def from_record(cls, device_id: str, module_id: str | None, record: JsonObject) -> Twin:
        return cls(device_id=device_id, module_id=module_id, tags=record["tags"], desired=record["desired"],
                   reported=record["reported"], desired_version=record["desiredVersion"],
                   reported_version=record["reportedVersion"], version=record["version"],
                   etag_version=record["etagVersion"], desired_updated=record["desiredUpdated"],
                   reported_updated=record["reportedUpdated"], model_id=record.get("modelId", ""))


@dataclass(frozen=True)
class DesiredChange:
    twin: Twin
    patch: JsonObject | None  # what connected clients are sent (None: nothing changed)


# ---------------------------------------------------------------------------------------------
# validation


def _invalid(message: str) -> HubError:
    return HubError(message, code=errors.TWIN_INVALID)


def validate_section(doc: Any, *, what: str, limit: int, allow_null: bool) -> None:
    if not isinstance(doc, dict):
        raise _invalid(f"{what} must be a JSON object")
    _validate_value(doc, depth=1, allow_null=allow_null, what=what)
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    if size > limit:
        raise HubError(f"{what} is {size} bytes, above the {limit}-byte limit", code=errors.TWIN_TOO_LARGE)


def _validate_value(value: Any, *, depth: int, allow_null: bool, what: str) -> None:
    if depth > MAX_DEPTH:
        raise _invalid(f"{what} nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, inner in value.items():
            _validate_key(key, what)
            if inner is None and not allow_null:
                raise _invalid(f"{what}: null is not allowed here")
            _validate_value(inner, depth=depth + 1, allow_null=allow_null, what=what)
    elif isinstance(value, list):
        for inner in value:
            _validate_value(inner, depth=depth + 1, allow_null=True, what=what)
    elif isinstance(value, float) and not math.isfinite(value):
        # IoT Hub's JSON has no NaN/Infinity (RFC 8259); a twin must never store what it cannot serve.
        raise _invalid(f"{what}: NaN and Infinity are not JSON numbers")
    elif isinstance(value, str):
        if len(value.encode()) > MAX_STRING_BYTES:
            raise _invalid(f"{what}: a string value is longer than {MAX_STRING_BYTES} bytes")
    elif value is not None and not isinstance(value, bool | int | float):
        raise _invalid(f"{what}: unsupported value type")


def _validate_key(key: Any, what: str) -> None:
    if not isinstance(key, str) or not key:
        raise _invalid(f"{what}: empty key")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise _invalid(f"{what}: key longer than {MAX_KEY_BYTES} bytes")
    if any(ch in _FORBIDDEN_KEY_CHARS or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in key):
        raise _invalid(f"{what}: key {key[:40]!r} contains '.', '$', space or a control character")


def strip_read_only(section: Any) -> Any:
    """Drop top-level `$version` / `$metadata`: a twin fetched from the service and sent back
    (the usual get-modify-replace) carries them, and IoT Hub ignores them."""
    if isinstance(section, dict):
        return {k: v for k, v in section.items() if k not in ("$version", "$metadata")}
    return section


# ---------------------------------------------------------------------------------------------
# merge patches


def merge_patch(doc: JsonObject, patch: JsonObject) -> JsonObject:
    out = copy.deepcopy(doc)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = out.get(key)
            out[key] = merge_patch(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def diff(old: JsonObject, new: JsonObject) -> JsonObject:
    """The merge patch that turns ``old`` into ``new``."""
    patch: JsonObject = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if before == value and type(before) is type(value):
            continue
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = diff(before, value)
        else:
            patch[key] = copy.deepcopy(value)
    return patch


_MISSING = object()


# ---------------------------------------------------------------------------------------------
# operations


def apply_reported_patch(twin: Twin, patch: Any) -> Twin:
    validate_section(patch, what="reported patch", limit=MAX_REPORTED_BYTES, allow_null=True)
    reported = merge_patch(twin.reported, patch)
    validate_section(reported, what="reported properties", limit=MAX_REPORTED_BYTES, allow_null=False)
    return replace(twin, reported=reported, reported_version=twin.reported_version + 1,
                   version=twin.version + 1, reported_updated=_now())


def _set_desired(twin: Twin, desired: JsonObject) -> DesiredChange:
    validate_section(desired, what="desired properties", limit=MAX_DESIRED_BYTES, allow_null=False)
    patch = diff(twin.desired, desired)
    if not patch:
        return DesiredChange(twin, None)
    version = twin.desired_version + 1
    updated = replace(twin, desired=desired, desired_version=version, version=twin.version + 1,
                      etag_version=twin.etag_version + 1, desired_updated=_now())
    return DesiredChange(updated, {**patch, "$version": version})


def apply_desired_patch(twin: Twin, patch: Any) -> DesiredChange:
    patch = strip_read_only(patch)
    validate_section(patch, what="desired patch", limit=MAX_DESIRED_BYTES, allow_null=True)
    return _set_desired(twin, merge_patch(twin.desired, patch))


def replace_desired(twin: Twin, desired: Any) -> DesiredChange:
    return _set_desired(twin, strip_read_only(desired) if desired is not None else {})


def set_tags(twin: Twin, tags: JsonObject) -> Twin:
    validate_section(tags, what="tags", limit=MAX_TAGS_BYTES, allow_null=False)
    if tags == twin.tags:
        return twin
    return replace(twin, tags=tags, version=twin.version + 1, etag_version=twin.etag_version + 1)


def patch_tags(twin: Twin, patch: Any) -> Twin:
    validate_section(patch, what="tags patch", limit=MAX_TAGS_BYTES, allow_null=True)
    return set_tags(twin, merge_patch(twin.tags, patch))


def etag_matches(if_match: str | None, etag: str) -> bool:
    """`If-Match` absent or `*` (quoted or not) matches anything; otherwise the quoted etag."""
    if if_match is None:
        return True
    value = if_match.strip()
    if value in ("*", '"*"'):
        return True
    return value.strip('"') == etag
