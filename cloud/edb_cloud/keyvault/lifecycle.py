"""KEK (RSA 3072, wrapKey/unwrapKey only) and publisher signing key (EC P-256, sign/verify):
create if absent, rotate (a new version; old versions keep unwrapping what they wrapped until
disabled), disable/enable a version (revocation of everything wrapped under it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import KeyClient, KeyVaultKey

from edb.keys.errors import INVALID_KEY, UNAVAILABLE, KeyProviderError

KEK_OPS = ["wrapKey", "unwrapKey"]
KEK_SIZE = 3072
SIGNER_OPS = ["sign", "verify"]
SIGNER_CURVE = "P-256"
NOT_FOUND = "KEY_NOT_FOUND"


@dataclass(frozen=True)
class KeyVersion:
    name: str
    version: str
    kid: str
    enabled: bool
    created: dt.datetime | None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "kid": self.kid, "enabled": self.enabled,
                "created": self.created.isoformat() if self.created else None}


def _vault_error(exc: AzureError, action: str) -> KeyProviderError:
    if isinstance(exc, ResourceNotFoundError):
        return KeyProviderError(f"{action}: not found in Key Vault", code=NOT_FOUND)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, HttpResponseError) and status is not None and status < 500:
        code = getattr(getattr(exc, "error", None), "code", None) or f"HTTP {status}"
        return KeyProviderError(f"{action}: Key Vault refused ({code})", code=INVALID_KEY)
    return KeyProviderError(f"{action}: Key Vault unavailable ({type(exc).__name__})", code=UNAVAILABLE)


def _kty(key: KeyVaultKey) -> str:
    return str(getattr(key.key_type, "value", key.key_type))


def _check_shape(key: KeyVaultKey, family: str, ops: list[str]) -> None:
    kty = _kty(key)
    if not kty.startswith(family) or sorted(key.key_operations or []) != sorted(ops):
        raise KeyProviderError(
            f"existing key {key.name} is {kty} with operations {key.key_operations}; expected {family} with {ops}",
            code=INVALID_KEY)


def _get(client: KeyClient, name: str) -> KeyVaultKey | None:
    try:
        return client.get_key(name)
    except ResourceNotFoundError:
        return None
    except AzureError as exc:
        raise _vault_error(exc, f"read key {name}") from exc


def _ensure(client: KeyClient, name: str, family: str, ops: list[str], create: Callable[[], KeyVaultKey],
            action: str) -> tuple[KeyVaultKey, bool]:
    """The key ``name`` if it exists with the expected shape, else ``create()``. Returns (key, created)."""
    existing = _get(client, name)
    if existing is not None:
        _check_shape(existing, family, ops)
        return existing, False
    try:
        return create(), True
    except AzureError as exc:
        raise _vault_error(exc, action) from exc


def ensure_kek(client: KeyClient, name: str, *, hsm: bool = False) -> tuple[KeyVaultKey, bool]:
    """The KEK, created (RSA 3072, wrapKey/unwrapKey) if absent. Returns (key, created)."""
    return _ensure(client, name, "RSA", KEK_OPS, lambda: client.create_rsa_key(
        name, size=KEK_SIZE, key_operations=KEK_OPS, hardware_protected=hsm, tags={"edb-role": "kek"}),
        f"create KEK {name}")


def ensure_signer(client: KeyClient, name: str, *, hsm: bool = False) -> tuple[KeyVaultKey, bool]:
    """The publisher signing key, created (EC P-256, sign/verify) if absent."""
    return _ensure(client, name, "EC", SIGNER_OPS, lambda: client.create_ec_key(
        name, curve=SIGNER_CURVE, key_operations=SIGNER_OPS, hardware_protected=hsm,
        tags={"edb-role": "publisher-signer"}), f"create signing key {name}")


def rotate_kek(client: KeyClient, name: str) -> KeyVaultKey:
    """A new KEK version with the same shape. Packages move over with ``edb package rewrap``."""
    current = _get(client, name)
    if current is None:
        raise KeyProviderError(f"KEK {name} does not exist; run `edb keyvault init` first", code=NOT_FOUND)
    _check_shape(current, "RSA", KEK_OPS)
    try:
        return client.create_rsa_key(name, size=KEK_SIZE, key_operations=KEK_OPS,
                                     hardware_protected=_kty(current).endswith("HSM"),
                                     tags=current.properties.tags)
    except AzureError as exc:
        raise _vault_error(exc, f"rotate KEK {name}") from exc


def _set_enabled(client: KeyClient, name: str, version: str, enabled: bool) -> KeyVersion:
    try:
        key = client.update_key_properties(name, version, enabled=enabled)
    except AzureError as exc:
        raise _vault_error(exc, f"{'enable' if enabled else 'disable'} {name}/{version}") from exc
    return KeyVersion(name, version, str(key.id), bool(key.properties.enabled), key.properties.created_on)


def disable_version(client: KeyClient, name: str, version: str) -> KeyVersion:
    """Revocation: Key Vault refuses unwrapKey on a disabled version at once (403 KeyDisabled)."""
    return _set_enabled(client, name, version, False)


def enable_version(client: KeyClient, name: str, version: str) -> KeyVersion:
    return _set_enabled(client, name, version, True)


def list_versions(client: KeyClient, name: str) -> list[KeyVersion]:
    try:
        props = list(client.list_properties_of_key_versions(name))
    except AzureError as exc:
        raise _vault_error(exc, f"list versions of {name}") from exc
    out = [KeyVersion(name, str(p.version), str(p.id), bool(p.enabled), p.created_on) for p in props]
    return sorted(out, key=lambda v: v.created or dt.datetime.min.replace(tzinfo=dt.UTC))
