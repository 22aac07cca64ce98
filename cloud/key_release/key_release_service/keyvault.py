"""The service's only I/O with Key Vault: read a policy secret, unwrap a DEK, legacy class keys.

Uses the async SDK clients (``azure.keyvault.keys.crypto.aio``, ``azure.keyvault.secrets.aio``)
with ``DefaultAzureCredential`` in Azure (managed identity) or the local stand-in's credential.
The ``kid`` from a manifest is checked against the configured vault before any request: the
service never sends its token to a URL a package names.

Least privilege for the service's identity: keys ``get`` + ``unwrapKey`` on the KEK; secrets
``get`` on ``edb-policy-*`` and ``edb-legacy-*``, and ``set`` on ``edb-legacy-*`` only if the
legacy ProvisionKey route is enabled. Legacy class keys are read only from their own namespace
(:func:`key_release_service.legacy.legacy_secret_name`) and only with their content type.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
from typing import Any, Protocol
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.keyvault.keys import KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from azure.keyvault.keys.crypto.aio import CryptographyClient
from azure.keyvault.secrets import KeyVaultSecret
from azure.keyvault.secrets.aio import SecretClient

from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.legacy import LEGACY_CONTENT_TYPE, class_key_from_secret, legacy_secret_name

__all__ = ["LEGACY_CONTENT_TYPE", "AzureVaultGateway", "VaultGateway", "check_kid", "is_loopback_url"]

_MAX_CLIENTS = 64


class VaultGateway(Protocol):
    async def get_policy_text(self, secret_name: str) -> str | None: ...

    async def unwrap(self, kid: str, wrapped: bytes) -> bytes: ...

    async def get_legacy_key(self, key_name: str) -> bytes | None: ...

    async def provision_legacy_key(self, key_name: str) -> bool: ...

    async def close(self) -> None: ...


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or 443


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_kid(kid: str, vault_url: str, allowed_names: frozenset[str] | None) -> KeyVaultKeyIdentifier:
    """The kid must name a version of a key in *our* vault (and an allowed KEK, if configured)."""
    try:
        ident = KeyVaultKeyIdentifier(kid)
    except (ValueError, TypeError) as exc:
        raise Denied(codes.KEK_NOT_ALLOWED, "manifest kid is not a Key Vault key id") from exc
    if _origin(ident.vault_url) != _origin(vault_url) or "/keys/" not in kid or not ident.version:
        raise Denied(codes.KEK_NOT_ALLOWED, "manifest kid does not name a key version in this service's vault")
    if allowed_names is not None and ident.name not in allowed_names:
        raise Denied(codes.KEK_NOT_ALLOWED, f"key {ident.name} is not a KEK this service may use")
    return ident


def _kv_failure(exc: Exception, action: str) -> Denied:
    """Map an SDK exception to a denial (403: the key said no) or an outage (5xx: retry)."""
    if isinstance(exc, ResourceNotFoundError):
        return Denied(codes.KEK_NOT_FOUND, f"Key Vault has no such key ({action})")
    status = getattr(exc, "status_code", None)
    if isinstance(exc, HttpResponseError) and status == 403:
        inner = _inner_code(exc)
        if inner in ("KeyDisabled", "KeyExpired"):
            return Denied(codes.KEK_DISABLED, f"the KEK version is disabled or outside its validity ({action})")
        return Denied(codes.KEYVAULT_ERROR, f"the service's identity may not {action} ({inner or 'Forbidden'})")
    if isinstance(exc, ClientAuthenticationError):
        return Denied(codes.KEYVAULT_ERROR, f"the service could not authenticate to Key Vault ({action})")
    if isinstance(exc, HttpResponseError) and status == 400:
        return Denied(codes.UNWRAP_REJECTED, f"Key Vault refused to {action} this value (HTTP 400)")
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or (
        isinstance(exc, HttpResponseError) and (status or 500) >= 500
    ):
        return Denied(codes.KEYVAULT_UNAVAILABLE, f"Key Vault unavailable ({action})", retry_after=2)
    return Denied(codes.KEYVAULT_ERROR, f"Key Vault failed to {action} ({type(exc).__name__})")


def _inner_code(exc: Exception) -> str | None:
    error = getattr(exc, "error", None)
    inner = getattr(error, "innererror", None) or {}
    if isinstance(inner, dict):
        code = inner.get("code")
        return code if isinstance(code, str) else None
    return None


class AzureVaultGateway:
    def __init__(self, vault_url: str, credential: Any, *, ca_file: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.vault_url = vault_url.rstrip("/")
        self._credential = credential
        self._kwargs: dict[str, Any] = {
            # Loopback stand-ins cannot pass the SDK's "host ends with vault.azure.net" check.
            "verify_challenge_resource": not is_loopback_url(self.vault_url),
            "connection_timeout": timeout_s, "read_timeout": timeout_s, "retry_total": 1,
        }
        if ca_file:
            self._kwargs["connection_verify"] = ca_file
        self._secrets = SecretClient(self.vault_url, credential, **self._kwargs)
        self._crypto: dict[str, CryptographyClient] = {}
        self._lock = asyncio.Lock()

    async def _client_for(self, kid: str) -> CryptographyClient:
        async with self._lock:
            client = self._crypto.get(kid)
            if client is None:
                if len(self._crypto) >= _MAX_CLIENTS:  # evict the oldest client
                    await self._crypto.pop(next(iter(self._crypto))).close()
                # the SDK GETs the public key once per client; unwrapKey itself always goes to the vault
                client = CryptographyClient(kid, self._credential, **self._kwargs)
                self._crypto[kid] = client
            return client

    async def unwrap(self, kid: str, wrapped: bytes) -> bytes:
        client = await self._client_for(kid)
        try:
            result = await client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped)
        except AzureError as exc:
            raise _kv_failure(exc, "unwrapKey") from exc
        return bytes(result.key)

    async def _get_secret(self, name: str, action: str) -> KeyVaultSecret | None:
        try:
            return await self._secrets.get_secret(name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _kv_failure(exc, action) from exc

    async def get_policy_text(self, secret_name: str) -> str | None:
        secret = await self._get_secret(secret_name, "read the release policy")
        return None if secret is None else secret.value

    async def get_legacy_key(self, key_name: str) -> bytes | None:
        """The class key stored by ProvisionKey under ``key_name``, or None. Only the secret
        ``edb-legacy-<key_name>`` with the class key content type is ever read."""
        secret = await self._get_secret(legacy_secret_name(key_name), "read the class key")
        if secret is None:
            return None
        return class_key_from_secret(secret.value, secret.properties.content_type)

    async def provision_legacy_key(self, key_name: str) -> bool:
        """Create the class key secret if absent. Returns True if created (the key is never returned).
        An existing secret under the name is never overwritten (and must be a class key)."""
        name = legacy_secret_name(key_name)
        existing = await self._get_secret(name, "read the class key")
        if existing is not None:
            class_key_from_secret(existing.value, existing.properties.content_type)
            return False
        try:
            await self._secrets.set_secret(name, base64.b64encode(secrets.token_bytes(32)).decode(),
                                           content_type=LEGACY_CONTENT_TYPE, tags={"edb-role": "legacy-class-key"})
        except AzureError as exc:
            raise _kv_failure(exc, "create the class key") from exc
        return True

    async def close(self) -> None:
        await self._secrets.close()
        for client in self._crypto.values():
            await client.close()
        self._crypto.clear()
        close_credential = getattr(self._credential, "close", None)  # azure-identity's aio credentials hold a session
        if close_credential is not None:
            await close_credential()
