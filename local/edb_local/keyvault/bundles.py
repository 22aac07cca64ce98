"""JSON shapes of Key Vault responses (KeyBundle, KeyItem, SecretBundle, deleted variants)."""

from __future__ import annotations

from typing import Any

from edb_local.keyvault.store import RETENTION_DAYS, Deletion, VaultObject

RECOVERY_LEVEL = "Recoverable+Purgeable"


def attributes(obj: VaultObject) -> dict[str, Any]:
    out: dict[str, Any] = {
        "enabled": obj.enabled,
        "created": obj.created,
        "updated": obj.updated,
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RETENTION_DAYS,
    }
    if obj.kind == "key":
        out["exportable"] = False
    if obj.nbf is not None:
        out["nbf"] = obj.nbf
    if obj.exp is not None:
        out["exp"] = obj.exp
    return out


def object_id(base: str, obj: VaultObject) -> str:
    return f"{base}/{obj.kind}s/{obj.name}/{obj.version}"


def key_bundle(base: str, obj: VaultObject) -> dict[str, Any]:
    jwk = dict(obj.meta["jwk"])
    jwk["kid"] = object_id(base, obj)
    jwk["key_ops"] = list(obj.meta["key_ops"])
    out: dict[str, Any] = {"key": jwk, "attributes": attributes(obj)}
    if obj.tags:
        out["tags"] = obj.tags
    return out


def key_item(base: str, obj: VaultObject, *, versioned: bool = True) -> dict[str, Any]:
    kid = object_id(base, obj) if versioned else f"{base}/keys/{obj.name}"
    out: dict[str, Any] = {"kid": kid,
                           "attributes": attributes(obj)}
    if obj.tags:
        out["tags"] = obj.tags
    return out


def secret_item(base: str, obj: VaultObject, *, versioned: bool = True) -> dict[str, Any]:
    sid = object_id(base, obj) if versioned else f"{base}/secrets/{obj.name}"
    out: dict[str, Any] = {"id": sid, "attributes": attributes(obj)}
    if obj.meta.get("contentType"):
        out["contentType"] = obj.meta["contentType"]
    if obj.tags:
        out["tags"] = obj.tags
    return out


def secret_bundle(base: str, obj: VaultObject, value: str) -> dict[str, Any]:
    out = secret_item(base, obj)
    out["value"] = value
    return out


def deleted_fields(base: str, deletion: Deletion) -> dict[str, Any]:
    return {
        "recoveryId": f"{base}/deleted{deletion.kind}s/{deletion.name}",
        "deletedDate": deletion.deleted_date,
        "scheduledPurgeDate": deletion.purge_date,
    }


def deleted_bundle(base: str, deletion: Deletion, obj: VaultObject) -> dict[str, Any]:
    body = key_bundle(base, obj) if obj.kind == "key" else secret_item(base, obj)
    body.update(deleted_fields(base, deletion))
    return body


def deleted_item(base: str, deletion: Deletion, obj: VaultObject) -> dict[str, Any]:
    body = key_item(base, obj, versioned=False) if obj.kind == "key" else secret_item(base, obj, versioned=False)
    body.update(deleted_fields(base, deletion))
    return body
