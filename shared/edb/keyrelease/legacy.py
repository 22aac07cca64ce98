"""LEGACY (weaker) device-side client of the original blueprint's wrap contract, for v1 packages.

``POST <url>`` (``/api/WrapKey`` of the key release service) with ``{"key_name", "client_public_key":
<base64 DER SubjectPublicKeyInfo>}`` -> ``{"wrapped_key": <base64 RSAES-PKCS1-v1_5(class key)>}``.
The public key is the TEE's legacy RSA key (``TeeClient.legacy_public_key()``) and the wrapped key
goes straight back to the TEE (``complete_install_legacy``): the class key never exists outside
the service and the TEE. What this flow lacks (attestation, nonce, policy, rollback floor) is in
docs/key-release.md; it exists so that packages from the original tools still install.

The function key travels in the ``x-functions-key`` header, never in the URL (URLs end up in logs).
One attempt per call: the installer's reconcile loop does the backing off. Failures are
:class:`~edb.keyrelease.client.ReleaseFailed` with the service's ``KR_*`` code (``retryable`` for
5xx, 429 and network errors).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import requests

from edb.keyrelease.client import BAD_RESPONSE, ReleaseFailed, post_json

WRAP_PATH = "/api/WrapKey"
MAX_RESPONSE_BYTES = 16 * 1024
MAX_WRAPPED_CHARS = 1024  # base64 of an RSA-4096 block is 684 characters


@dataclass
class LegacyWrapClient:
    url: str  # the full WrapKey URL, https only
    function_key: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None  # None = the system trust store; never "no verification"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        if not self.url.startswith("https://"):
            raise ValueError("the legacy wrap endpoint must be reached over https")
        if "?" in self.url:
            raise ValueError("put the function key in the key file, not in the URL")

    def wrap(self, key_name: str, client_public_key_der: bytes) -> str:
        """The class key named ``key_name``, wrapped to ``client_public_key_der``, as base64."""
        headers = {"x-functions-key": self.function_key} if self.function_key else {}
        payload = {"key_name": key_name, "client_public_key": base64.b64encode(client_public_key_der).decode()}
        body = post_json(self.session, self.url, payload, what="legacy wrap endpoint",
                         timeout=(self.connect_timeout_s, self.read_timeout_s), ca_bundle=self.ca_bundle,
                         max_bytes=MAX_RESPONSE_BYTES, headers=headers)
        wrapped = body.get("wrapped_key")
        if not isinstance(wrapped, str) or not 0 < len(wrapped) <= MAX_WRAPPED_CHARS:
            raise ReleaseFailed("legacy wrap response carries no wrapped_key", code=BAD_RESPONSE, status=200)
        try:
            base64.b64decode(wrapped, validate=True)
        except (binascii.Error, ValueError):
            raise ReleaseFailed("wrapped_key is not base64", code=BAD_RESPONSE, status=200) from None
        return wrapped
