"""Shared access signatures, as IoT Hub checks them. Pure functions: the clock is a parameter.

A token is ``SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64 HMAC>&se=<expiry>
[&skn=<policy>]``. The string to sign is the url-encoded resource exactly as it appears in the token,
a newline, and the expiry (the device SDK encodes with ``quote(uri, safe='')``, the service SDK with
``quote_plus``; both sign what they send). The HMAC-SHA256 key is the base64-decoded shared key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256

from edb_local.hub import errors
from edb_local.hub.errors import HubError

_PREFIX = "SharedAccessSignature "
_MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class SasToken:
    resource_raw: str      # as sent (url-encoded); what was signed
    resource: str          # decoded
    signature: bytes
    expiry: int
    key_name: str | None


def parse_token(token: str) -> SasToken:
    if len(token) > _MAX_TOKEN_LENGTH or not token.startswith(_PREFIX):
        raise HubError("not a SharedAccessSignature", code=errors.AUTH_BAD_TOKEN)
    fields: dict[str, str] = {}
    for part in token[len(_PREFIX):].split("&"):
        key, sep, value = part.partition("=")
        if not sep or key in fields or key not in ("sr", "sig", "se", "skn"):
            raise HubError("malformed SharedAccessSignature field", code=errors.AUTH_BAD_TOKEN)
        fields[key] = value
    if not {"sr", "sig", "se"} <= fields.keys():
        raise HubError("SharedAccessSignature lacks sr, sig or se", code=errors.AUTH_BAD_TOKEN)
    try:
        expiry = int(fields["se"], 10)
        signature = base64.b64decode(urllib.parse.unquote(fields["sig"]), validate=True)
    except (ValueError, binascii.Error):
        raise HubError("SharedAccessSignature has a bad expiry or signature", code=errors.AUTH_BAD_TOKEN) from None
    if len(signature) != 32:
        raise HubError("SharedAccessSignature signature is not HMAC-SHA256", code=errors.AUTH_BAD_TOKEN)
    key_name = urllib.parse.unquote(fields["skn"]) if "skn" in fields else None
    return SasToken(resource_raw=fields["sr"], resource=urllib.parse.unquote_plus(fields["sr"]),
                    signature=signature, expiry=expiry, key_name=key_name)


def sign(resource_raw: str, expiry: int, key_b64: str) -> bytes:
    key = base64.b64decode(key_b64, validate=True)
    return hmac.new(key, f"{resource_raw}\n{expiry}".encode(), sha256).digest()


def verify_token(token: SasToken, *, expected_resources: Iterable[str], keys: Iterable[str],
                 now: float | None = None) -> None:
    """Raise unless the token names one of ``expected_resources``, is signed by one of ``keys``
    (base64), and has not expired. The host part compares case-insensitively (host names do),
    the path exactly (device and module ids are case-sensitive)."""
    wanted = {_normalise(r) for r in expected_resources}
    if _normalise(token.resource) not in wanted:
        raise HubError("token is for another resource", code=errors.AUTH_WRONG_RESOURCE)
    matched = False
    for key in keys:
        try:
            expected = sign(token.resource_raw, token.expiry, key)
        except (ValueError, binascii.Error):
            continue
        # compare_digest on every key, no early exit: time does not tell which key matched
        matched |= hmac.compare_digest(expected, token.signature)
    if not matched:
        raise HubError("signature does not match", code=errors.AUTH_BAD_SIGNATURE)
    if token.expiry <= (time.time() if now is None else now):
        raise HubError("token expired", code=errors.AUTH_TOKEN_EXPIRED)


def _normalise(resource: str) -> str:
    host, sep, path = resource.partition("/")
    return host.lower() + sep + path


def make_token(resource: str, key_b64: str, *, expiry: int, key_name: str | None = None,
               quote_plus: bool = False) -> str:
    """Build a token (for tests, the CLI and the bench); same encoding rules as the SDKs."""
    raw = urllib.parse.quote_plus(resource) if quote_plus else urllib.parse.quote(resource, safe="")
    sig = urllib.parse.quote(base64.b64encode(sign(raw, expiry, key_b64)).decode(), safe="")
    token = f"{_PREFIX}sr={raw}&sig={sig}&se={expiry}"
    if key_name is not None:
        token += f"&skn={urllib.parse.quote(key_name, safe='')}"
    return token
