"""Bulk registry operations: ``POST /devices`` with a list of ExportImportDevice entries
(azure-iot-hub ``bulk_create_or_update_devices``). No sockets here.

As on IoT Hub: at most 100 entries, each device at most once; ``importMode`` is one of create,
update, createOrUpdate, updateIfMatchETag, delete, deleteIfMatchETag; entries are applied one by one
(not atomically) and every failed entry is reported with its device id and error code. Modules
(``moduleId``) are not part of bulk operations here: such an entry is refused with its own error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.state import HubState
from edb_local.hub.topics import Identity

MAX_ENTRIES = 100
_MODES = ("create", "update", "createorupdate", "updateifmatchetag", "delete", "deleteifmatchetag")
_IDENTITY_FIELDS = ("status", "statusReason", "authentication", "capabilities", "deviceScope", "parentScopes")
#: HubError code -> (IoT Hub's errorCode, errorStatus) in a bulk result
_ERROR_NAMES = {
    errors.CONFLICT: "DeviceAlreadyExists",
    errors.NOT_FOUND: "DeviceNotFound",
    errors.PRECONDITION_FAILED: "PreconditionFailed",
}


@dataclass
class BulkResult:
    errors: list[dict[str, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)   # new device ids (their deployments get evaluated)
    deleted: list[str] = field(default_factory=list)   # device ids whose sessions and queues must go

    def to_json(self) -> dict[str, Any]:
        return {"isSuccessful": not self.errors, "errors": self.errors, "warnings": []}


def parse_entries(body: Any) -> list[dict[str, Any]]:
    """Check the request as a whole (a list, its size, unique device ids); raises HUB_BAD_REQUEST."""
    if not isinstance(body, list) or not body:
        raise HubError("a bulk registry request is a non-empty list of devices", code=errors.BAD_REQUEST)
    if len(body) > MAX_ENTRIES:
        raise HubError(f"at most {MAX_ENTRIES} devices per bulk request", code=errors.BAD_REQUEST)
    seen: set[str] = set()
    for entry in body:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise HubError("every entry needs an id", code=errors.BAD_REQUEST)
        if entry["id"] in seen:
            raise HubError(f"device {entry['id'][:128]!r} appears more than once", code=errors.BAD_REQUEST)
        seen.add(entry["id"])
    return body


def apply_bulk(state: HubState, entries: list[dict[str, Any]]) -> BulkResult:
    result = BulkResult()
    for entry in entries:
        device_id = entry["id"]
        mode = str(entry.get("importMode") or "createOrUpdate")
        try:
            _apply_one(state, entry, mode.lower(), result)
        except HubError as exc:
            result.errors.append({"deviceId": device_id, "errorCode": _ERROR_NAMES.get(exc.code, "ArgumentInvalid"),
                                  "errorStatus": f"{exc.code}: {exc.message}", "operation": mode})
    return result


def _apply_one(state: HubState, entry: dict[str, Any], mode: str, result: BulkResult) -> None:
    device_id = entry["id"]
    if mode not in _MODES:
        raise HubError(f"unknown importMode {mode[:40]!r}", code=errors.BAD_REQUEST)
    if entry.get("moduleId"):
        raise HubError("bulk operations on modules are not supported by the stand-in", code=errors.BAD_REQUEST)
    identity = Identity(device_id)
    existing = state.identities.get(identity)
    etag = entry.get("eTag") if mode.endswith("ifmatchetag") else "*"
    if not isinstance(etag, str) or not etag:
        raise HubError(f"{mode} needs the device's eTag", code=errors.BAD_REQUEST)
    if mode.startswith("delete"):
        state.delete_identity(identity, etag)
        result.deleted.append(device_id)
        return
    if mode == "create" and existing is not None:
        raise HubError("device already exists", code=errors.CONFLICT)
    if mode.startswith("update") and existing is None:
        raise HubError("device not found", code=errors.NOT_FOUND)
    body = {"deviceId": device_id, **{k: entry[k] for k in _IDENTITY_FIELDS if k in entry}}
    _record, created = state.put_identity(device_id, None, body, None if existing is None else etag)
    if created:
        result.created.append(device_id)
