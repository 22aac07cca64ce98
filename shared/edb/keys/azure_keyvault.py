"""Azure Key Vault key providers (``azure-keyvault-keys`` ``CryptographyClient``).

- :class:`KeyVaultKek`: ``wrap_key``/``unwrap_key`` with RSA-OAEP-256. ``kid`` may be unversioned
  (``https://<vault>/keys/<name>``): wrapping then uses the current version and the wrapped key
  records the full versioned id Key Vault reports, so KEK rotation keeps old packages unwrappable
  (``unwrap`` addresses exactly the version named in the manifest).
- :class:`KeyVaultSigner`: ``sign`` ES256 on a SHA-256 digest. Key Vault returns the raw
  ``r || s`` (64 bytes); packages store DER, so it is converted here.

The credential defaults to ``azure.identity.DefaultAzureCredential``; any ``TokenCredential`` can be
injected (the local Key Vault stand-in's tests do). Extra keyword arguments go to every
``CryptographyClient`` (for example ``connection_verify=<CA bundle>`` for the local stack).

Errors: a disabled or expired key version (Key Vault's 403 ``KeyDisabled``/``KeyExpired``) is
``KEY_DISABLED``, final (revocation); 400 is the operation's own refusal code; no usable credential
or a 401 is ``KEY_AUTH_FAILED``; a challenge the SDK refuses (its ``ValueError``) is
``KEY_CHALLENGE_REFUSED``; anything else (network, 5xx, throttling, other 403) is
``KEY_UNAVAILABLE``. No SDK exception leaves this module untyped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edb.keys.base import WRAP_ALG, WrappedKey, check_dek, check_digest
from edb.keys.errors import (
    AUTH_FAILED,
    CHALLENGE_REFUSED,
    DISABLED,
    INVALID_KEY,
    SIGN_FAILED,
    UNAVAILABLE,
    UNWRAP_FAILED,
    WRONG_KID,
    KeyProviderError,
)
from edb.keys.low_s import P256_N, normalize_low_s


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _identifier(kid: str) -> Any:
    """``https://<vault>/keys/<name>[/<version>]``; the SDK's parser alone also takes ``/secrets/...``."""
    from azure.keyvault.keys import KeyVaultKeyIdentifier

    parts = urlsplit(kid) if isinstance(kid, str) else None
    segments = parts.path.strip("/").split("/") if parts else []
    if parts is None or parts.scheme != "https" or segments[0] != "keys" or len(segments) not in (2, 3):
        raise KeyProviderError(f"not a Key Vault key id: {kid!r}", code=INVALID_KEY)
    try:
        return KeyVaultKeyIdentifier(kid)
    except (ValueError, TypeError) as exc:
        raise KeyProviderError(f"not a Key Vault key id: {kid!r}", code=INVALID_KEY) from exc


def vault_url_of(key_id: str) -> str:
    """``https://<vault>`` of a Key Vault key id (``KEY_INVALID`` if it is not one)."""
    return str(_identifier(key_id).vault_url).rstrip("/")


def _inner_error_code(exc: Exception) -> str | None:
    """Key Vault's inner error code (``{"error": {"code": "Forbidden", "innererror": {"code": ...}}}``)."""
    inner = getattr(getattr(exc, "error", None), "innererror", None)
    code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def _provider_error(exc: Exception, action: str, bad_request_code: str) -> KeyProviderError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    if isinstance(exc, ValueError):  # the SDK's challenge checks (resource, scope, header) raise ValueError
        return KeyProviderError(f"the Key Vault client refused the vault's authentication challenge ({action}): "
                                f"{exc}", code=CHALLENGE_REFUSED)
    if isinstance(exc, ClientAuthenticationError):
        return KeyProviderError(f"no usable Key Vault credential, or the vault refused it ({action}): "
                                f"{type(exc).__name__}", code=AUTH_FAILED)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, HttpResponseError) and status == 400:
        return KeyProviderError(f"Key Vault refused to {action} (HTTP 400)", code=bad_request_code)
    if isinstance(exc, HttpResponseError) and status == 403 and _inner_error_code(exc) in ("KeyDisabled", "KeyExpired"):
        # revocation, not an outage: the key service's KR_KEK_DISABLED for the same condition
        return KeyProviderError(f"the key version is disabled or outside its validity period ({action})",
                                code=DISABLED)
    where = f"HTTP {status}" if status else type(exc).__name__
    return KeyProviderError(f"Key Vault unavailable for {action} ({where})", code=UNAVAILABLE)


class KeyVaultKek:
    """A KEK in Key Vault: an RSA key the caller may wrapKey/unwrapKey with."""

    def __init__(self, key_id: str, credential: Any | None = None, **client_kwargs: Any) -> None:
        self._id = _identifier(key_id)
        self._key_id = key_id
        self._credential = credential if credential is not None else _default_credential()
        self._client_kwargs = client_kwargs
        self._clients: dict[str, Any] = {}

    @property
    def kid(self) -> str:
        return self._key_id

    def _client(self, key_id: str) -> Any:
        from azure.keyvault.keys.crypto import CryptographyClient

        client = self._clients.get(key_id)
        if client is None:
            client = CryptographyClient(key_id, self._credential, **self._client_kwargs)
            self._clients[key_id] = client
        return client

    def wrap(self, dek: bytes) -> WrappedKey:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        check_dek(dek)
        try:
            result = self._client(self._key_id).wrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(dek))
        except (AzureError, ValueError) as exc:
            raise _provider_error(exc, "wrap", UNAVAILABLE) from exc
        kid = result.key_id or self._key_id
        return WrappedKey(kid=kid, alg=WRAP_ALG, value=bytes(result.encrypted_key))

    def unwrap(self, wrapped: WrappedKey) -> bytes:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import KeyWrapAlgorithm

        target = _identifier(wrapped.kid)
        if (target.vault_url.rstrip("/"), target.name) != (self._id.vault_url.rstrip("/"), self._id.name):
            raise KeyProviderError(f"DEK is wrapped under {wrapped.kid}, not under {self._key_id}", code=WRONG_KID)
        try:
            result = self._client(wrapped.kid).unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.value)
        except (AzureError, ValueError) as exc:
            raise _provider_error(exc, "unwrap", UNWRAP_FAILED) from exc
        dek = bytes(result.key)
        check_dek(dek)
        return dek

    def __repr__(self) -> str:
        return f"KeyVaultKek(kid={self._key_id!r})"


class KeyVaultSigner:
    """A publisher signing key (EC P-256) in Key Vault, with its certificate chain (leaf first)."""

    def __init__(
        self, key_id: str, chain: Sequence[x509.Certificate], credential: Any | None = None, **client_kwargs: Any
    ) -> None:
        if not chain:
            raise KeyProviderError("a signer needs its certificate chain (leaf first)", code=INVALID_KEY)
        _identifier(key_id)
        self._key_id = key_id
        self._chain = list(chain)
        self._credential = credential if credential is not None else _default_credential()
        self._client_kwargs = client_kwargs
        self._client: Any = None

    def sign_digest(self, digest: bytes) -> bytes:
        from azure.core.exceptions import AzureError
        from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

        check_digest(digest)
        if self._client is None:
            self._client = CryptographyClient(self._key_id, self._credential, **self._client_kwargs)
        try:
            result = self._client.sign(SignatureAlgorithm.es256, digest)
        except (AzureError, ValueError) as exc:
            raise _provider_error(exc, "sign", SIGN_FAILED) from exc
        return raw_to_der_signature(bytes(result.signature))

    def certificate_chain(self) -> list[x509.Certificate]:
        return list(self._chain)

    def __repr__(self) -> str:
        return f"KeyVaultSigner(kid={self._key_id!r})"


def raw_to_der_signature(raw: bytes) -> bytes:
    """JOSE/Key Vault ES256 ``r || s`` (2 x 32 bytes, big-endian) -> DER ``ECDSA-Sig-Value``, low s
    (Key Vault may return either of the two valid s values; packages carry only the low one)."""
    if len(raw) != 64:
        raise KeyProviderError(f"ES256 signature must be 64 bytes, got {len(raw)}", code=SIGN_FAILED)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < P256_N and 0 < s < P256_N):
        raise KeyProviderError("ES256 signature values out of range", code=SIGN_FAILED)
    return normalize_low_s(encode_dss_signature(r, s))
