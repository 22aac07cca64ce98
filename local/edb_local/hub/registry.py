"""The identity registry: devices and modules with SAS keys (what RegistryManager manages).

Ids follow IoT Hub's rules (up to 128 ASCII characters from ``A-Z a-z 0-9 - . + % _ # * ? ! ( ) , : = @ $ '``);
``/`` can never appear (topics and client ids split on it). When a request carries no keys the
hub generates 32 random bytes per key, as IoT Hub does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.topics import Identity

_ID_RE = re.compile(r"^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$")
SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise HubError(f"invalid {what}", code=errors.BAD_REQUEST)
    return value


def _check_key(value: Any) -> str:
    if not isinstance(value, str):
        raise HubError("a SAS key must be a base64 string", code=errors.BAD_REQUEST)
    try:
        raw = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise HubError("a SAS key must be base64", code=errors.BAD_REQUEST) from None
    if not 16 <= len(raw) <= 64:
        raise HubError("a SAS key must be 16 to 64 bytes", code=errors.BAD_REQUEST)
    return value


@dataclass(frozen=True)
class IdentityRecord:
    device_id: str
    module_id: str | None
    primary_key: str
    secondary_key: str
    status: str = "enabled"
    status_reason: str | None = None
    iot_edge: bool = False
    managed_by: str | None = None
    device_scope: str | None = None
    parent_scopes: list[str] = field(default_factory=list)
    generation_id: str = field(default_factory=lambda: str(secrets.randbelow(10**18)))
    etag_version: int = 1
    created: str = field(default_factory=now_iso)
    status_updated: str = field(default_factory=now_iso)

    @property
    def identity(self) -> Identity:
        return Identity(self.device_id, self.module_id)

    @property
    def keys(self) -> tuple[str, str]:
        return self.primary_key, self.secondary_key

    @property
    def etag(self) -> str:
        return base64.b64encode(str(self.etag_version).encode()).decode()

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> IdentityRecord:
        return cls(**record)

    def service_json(self, *, connected: bool, state_updated: str, last_activity: str) -> dict[str, Any]:
        auth = {"symmetricKey": {"primaryKey": self.primary_key, "secondaryKey": self.secondary_key},
                "x509Thumbprint": {"primaryThumbprint": None, "secondaryThumbprint": None}, "type": "sas"}
        common = {"deviceId": self.device_id, "generationId": self.generation_id, "etag": self.etag,
                  "connectionState": "Connected" if connected else "Disconnected",
                  "connectionStateUpdatedTime": state_updated, "lastActivityTime": last_activity,
                  "cloudToDeviceMessageCount": 0, "authentication": auth}
        if self.module_id is not None:
            return {"moduleId": self.module_id, "managedBy": self.managed_by, **common}
        return {**common, "status": self.status, "statusReason": self.status_reason,
                "statusUpdatedTime": self.status_updated, "capabilities": {"iotEdge": self.iot_edge},
                "deviceScope": self.device_scope, "parentScopes": self.parent_scopes}


def identity_from_request(device_id: str, module_id: str | None, body: Any,
                          existing: IdentityRecord | None) -> IdentityRecord:
    """Build the record a PUT /devices/{id}[/modules/{mid}] asks for (create or update)."""
    if not isinstance(body, dict):
        raise HubError("identity body must be a JSON object", code=errors.BAD_REQUEST)
    for key, expected in (("deviceId", device_id), ("moduleId", module_id)):
        if body.get(key) not in (None, expected):
            raise HubError(f"{key} in the body does not match the URL", code=errors.BAD_REQUEST)
    auth = body.get("authentication") or {}
    if not isinstance(auth, dict):
        raise HubError("authentication must be an object", code=errors.BAD_REQUEST)
    auth_type = (auth.get("type") or "sas").lower()
    if auth_type not in ("sas", "none"):
        raise HubError("the hub stand-in supports SAS authentication only", code=errors.BAD_REQUEST)
    sym = auth.get("symmetricKey") or {}
    if not isinstance(sym, dict):
        raise HubError("symmetricKey must be an object", code=errors.BAD_REQUEST)
    primary = sym.get("primaryKey") or (existing.primary_key if existing else new_key())
    secondary = sym.get("secondaryKey") or (existing.secondary_key if existing else new_key())
    _check_key(primary)
    _check_key(secondary)
    status = body.get("status") or (existing.status if existing else "enabled")
    if status not in ("enabled", "disabled"):
        raise HubError("status must be enabled or disabled", code=errors.BAD_REQUEST)
    if module_id is not None:
        check_id(module_id, "module id")
    check_id(device_id, "device id")
    caps = body.get("capabilities") or {}
    iot_edge = bool(caps.get("iotEdge")) if isinstance(caps, dict) else False
    parent_scopes = body.get("parentScopes") or []
    if not isinstance(parent_scopes, list) or not all(isinstance(s, str) for s in parent_scopes):
        raise HubError("parentScopes must be a list of strings", code=errors.BAD_REQUEST)
    fields: dict[str, Any] = {
        "primary_key": primary, "secondary_key": secondary, "status": status,
        "status_reason": body.get("statusReason"), "iot_edge": iot_edge if module_id is None else False,
        "managed_by": body.get("managedBy"), "parent_scopes": parent_scopes,
    }
    if existing is None:
        scope = f"ms-azure-iot-edge://{device_id}-{secrets.randbelow(10**12)}" if iot_edge else body.get("deviceScope")
        return IdentityRecord(device_id=device_id, module_id=module_id, device_scope=scope, **fields)
    if status != existing.status:
        fields["status_updated"] = now_iso()
    return replace(existing, etag_version=existing.etag_version + 1, **fields)
