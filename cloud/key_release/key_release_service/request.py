"""Strict parsing of ``POST /api/release`` bodies (Contract 3), before any cryptography.

Sizes are bounded first (the body, each string, each list), types are exact, unknown members are
refused, so nothing downstream sees an unexpected shape.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from key_release_service import codes
from key_release_service.codes import Denied

MAX_BODY_BYTES = 256 * 1024
MAX_EVIDENCE_CHARS = 16 * 1024
MAX_CERT_B64_CHARS = 8 * 1024
MAX_CHAIN = 4
MAX_MANIFEST_B64_CHARS = 96 * 1024  # 64 KiB manifest, base64
MAX_SIGNATURE_B64_CHARS = 512
MAX_ID_CHARS = 256


def _bad(message: str) -> Denied:
    return Denied(codes.MALFORMED_REQUEST, message)


def parse_json_object(body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    if len(body) > max_bytes:
        raise Denied(codes.REQUEST_TOO_LARGE, f"request body larger than {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad("request body is not JSON") from exc
    if not isinstance(data, dict):
        raise _bad("request body must be a JSON object")
    return data


def _exact_keys(obj: object, required: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be an object")
    missing, extra = required - set(obj), set(obj) - required
    if missing or extra:
        raise _bad(f"{what}: missing {sorted(missing)} / unexpected {sorted(extra)}")
    return obj


def _string(value: object, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise _bad(f"{what} must be a non-empty string of at most {max_chars} characters")
    return value


def _b64(value: object, what: str, max_chars: int) -> bytes:
    text = _string(value, what, max_chars)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(f"{what} is not base64") from exc


def _b64_list(value: object, what: str) -> list[bytes]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_CHAIN:
        raise _bad(f"{what} must be a list of 1..{MAX_CHAIN} base64 DER certificates")
    return [_b64(item, f"{what}[{i}]", MAX_CERT_B64_CHARS) for i, item in enumerate(value)]


@dataclass(frozen=True)
class ManifestParts:
    json_bytes: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    chain_der: list[bytes] = field(repr=False)


@dataclass(frozen=True)
class ReleaseRequest:
    evidence: str = field(repr=False)
    cert_chain_der: list[bytes] = field(repr=False)
    one_time_key: dict[str, Any]
    package_id: str
    package_version: str
    manifest: ManifestParts


def parse_release_request(body: bytes) -> ReleaseRequest:
    data = _exact_keys(parse_json_object(body), {"evidence", "certChain", "oneTimeKey", "package", "manifest"},
                       "request")
    package = _exact_keys(data["package"], {"id", "version"}, "package")
    manifest = _exact_keys(data["manifest"], {"json", "signature", "chain"}, "manifest")
    otk = data["oneTimeKey"]
    if not isinstance(otk, dict) or len(otk) > 8 or not all(isinstance(v, str) and len(v) <= 256
                                                            for v in otk.values()):
        raise _bad("oneTimeKey must be a small JWK object")
    return ReleaseRequest(
        evidence=_string(data["evidence"], "evidence", MAX_EVIDENCE_CHARS),
        cert_chain_der=_b64_list(data["certChain"], "certChain"),
        one_time_key=otk,
        package_id=_string(package["id"], "package.id", MAX_ID_CHARS),
        package_version=_string(package["version"], "package.version", MAX_ID_CHARS),
        manifest=ManifestParts(
            json_bytes=_b64(manifest["json"], "manifest.json", MAX_MANIFEST_B64_CHARS),
            signature=_b64(manifest["signature"], "manifest.signature", MAX_SIGNATURE_B64_CHARS),
            chain_der=_b64_list(manifest["chain"], "manifest.chain"),
        ),
    )
