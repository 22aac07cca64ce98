"""The original blueprint's wrap contract, kept for users of its tools. WEAKER: see docs/key-release.md.

``POST /api/WrapKey {"key_name", "client_public_key": <base64 DER SPKI>}`` ->
``{"wrapped_key": <base64 RSAES-PKCS1-v1_5(raw 32-byte class key)>}``: anyone holding the route's
function key gets any class key wrapped to any RSA key; there is no attestation, no nonce, no
policy. Off unless ``EDB_KR_LEGACY_ENABLED=1``. Pure functions here; the handler is in service.py.

Class keys live in their own namespace of the vault: the secret ``edb-legacy-<key name>`` whose
content type is :data:`LEGACY_CONTENT_TYPE` (set by ProvisionKey). WrapKey reads nothing else, so
no other secret in the vault (policies, application secrets, anything an operator keeps there) can
be obtained under any key name.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.request import parse_json_object

#: Key Vault secret name prefix of every class key, and the content type ProvisionKey sets.
SECRET_PREFIX = "edb-legacy-"  # noqa: S105 - a name prefix, not a secret
LEGACY_CONTENT_TYPE = "application/vnd.edb.legacy-class-key"
#: Key Vault secret names are at most 127 characters, the prefix included.
MAX_KEY_NAME_CHARS = 127 - len(SECRET_PREFIX)
KEY_NAME = re.compile(rf"^[0-9A-Za-z][0-9A-Za-z-]{{0,{MAX_KEY_NAME_CHARS - 1}}}$")
CLASS_KEY_BYTES = 32
MAX_BODY = 8 * 1024


def check_key_name(name: object) -> str:
    # "edb-" names read as this service's own secrets to an operator: refused to avoid confusion
    if not isinstance(name, str) or not KEY_NAME.match(name) or name.lower().startswith("edb-"):
        raise Denied(codes.LEGACY_BAD_KEY_NAME, f"key_name must be 1-{MAX_KEY_NAME_CHARS} letters, digits or "
                     "dashes, starting with a letter or digit, not edb-*")
    return name


def legacy_secret_name(key_name: str) -> str:
    """The only Key Vault secret that can hold ``key_name``'s class key."""
    return SECRET_PREFIX + check_key_name(key_name)


def class_key_from_secret(value: str | None, content_type: str | None) -> bytes:
    """The class key from its secret; anything not stored as a class key by ProvisionKey is refused."""
    if content_type != LEGACY_CONTENT_TYPE:
        raise Denied(codes.LEGACY_NOT_CLASS_KEY, "the secret under this key name is not a legacy class key")
    try:
        key = base64.b64decode(value or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Denied(codes.LEGACY_NOT_CLASS_KEY, "the class key secret is not base64") from exc
    if len(key) != CLASS_KEY_BYTES:
        raise Denied(codes.LEGACY_NOT_CLASS_KEY, "the class key secret is not a 32-byte key")
    return key


def parse_wrap_request(body: bytes) -> tuple[str, rsa.RSAPublicKey]:
    data = parse_json_object(body, max_bytes=MAX_BODY)
    if set(data) != {"key_name", "client_public_key"}:
        raise Denied(codes.MALFORMED_REQUEST, "body must have exactly key_name and client_public_key")
    name = check_key_name(data["key_name"])
    text = data["client_public_key"]
    try:
        if not isinstance(text, str):
            raise ValueError("not a string")
        key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as exc:
        raise Denied(codes.LEGACY_BAD_PUBLIC_KEY, "client_public_key is not a base64 DER public key") from exc
    if not isinstance(key, rsa.RSAPublicKey) or not 2048 <= key.key_size <= 4096 or key.public_numbers().e != 65537:
        raise Denied(codes.LEGACY_BAD_PUBLIC_KEY, "client_public_key must be RSA 2048-4096 with e=65537")
    return name, key


def wrap_class_key(class_key: bytes, client_key: rsa.RSAPublicKey) -> str:
    """RSAES-PKCS1-v1_5, as the original tools expect (not OAEP: that is part of why it is weaker)."""
    return base64.b64encode(client_key.encrypt(class_key, padding.PKCS1v15())).decode("ascii")
