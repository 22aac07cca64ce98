"""The stand-in's own token issuer (a tiny OAuth 2.0 client-credentials server) and role check.

Clients are registered in the vault's database with a SHA-256 of their secret; the secret itself is
only in the client's credential file (mode 0600). ``POST /{tenant}/oauth2/v2.0/token`` exchanges
client id + secret for an ES256 JWT signed by ``issuer.key`` (mode 0600). Every vault request must
carry such a token for the audience ``https://vault.azure.net``; roles map to Key Vault permissions
the way Azure RBAC roles do, including assignments scoped to single keys and secrets (least
privilege for the key release service: only its KEK, its policies and the legacy namespace).
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from edb.errors import LocalStackError
from edb_local.keyvault.at_rest import write_private_file

ISSUER_KEY_FILE = "issuer.key"
RESOURCE = "https://vault.azure.net"
SCOPE = RESOURCE + "/.default"
TENANT = "edb-local"
TOKEN_LIFETIME_S = 3600
MAX_TOKEN_CHARS = 8192

ANY_NAME = ("*",)
#: The KEKs (``edb keyvault init``/``rotate`` name them ``edb-kek``; more KEKs: ``edb-kek-<suffix>``).
KEK_NAMES = ("edb-kek", "edb-kek-*")
#: Release policies (``key_release_service.policy``) and legacy class keys (``...legacy``).
POLICY_SECRETS = ("edb-policy-*",)
LEGACY_SECRETS = ("edb-legacy-*",)


@dataclass(frozen=True)
class Grant:
    """One permission (``keys/get``; ``*`` = all) on objects whose name matches one of ``names``
    (glob patterns, case-insensitive like Key Vault names), as an Azure role assignment scoped to
    ``/keys/<name>`` or ``/secrets/<name>`` would be."""

    permission: str
    names: tuple[str, ...] = ANY_NAME

    def allows(self, permission: str, name: str | None) -> bool:
        if self.permission not in ("*", permission):
            return False
        if self.names == ANY_NAME:
            return True
        # a call on no single object (listing) needs a grant on every name
        return name is not None and any(fnmatchcase(name.lower(), pattern) for pattern in self.names)


_RELEASE_SERVICE = (
    Grant("keys/get", KEK_NAMES), Grant("keys/unwrapKey", KEK_NAMES),
    Grant("secrets/get", POLICY_SECRETS + LEGACY_SECRETS),
)

#: role -> grants. Mirrors "Key Vault Administrator" and custom roles holding only what the key
#: release service needs: without the legacy routes (``release-service``), and with them
#: (``release-service-legacy``: ProvisionKey may also create secrets in the legacy namespace).
ROLES: dict[str, tuple[Grant, ...]] = {
    "admin": (Grant("*"),),
    "release-service": _RELEASE_SERVICE,
    "release-service-legacy": (*_RELEASE_SERVICE, Grant("secrets/set", LEGACY_SECRETS)),
}


class TokenInvalid(Exception):
    """The bearer token is missing, malformed, expired, or not ours (message is for the 401 body)."""


@dataclass(frozen=True)
class Principal:
    client_id: str
    role: str

    def may(self, permission: str, name: str | None = None) -> bool:
        """Whether the role grants ``permission`` on the object ``name`` (None: every object)."""
        return any(grant.allows(permission, name) for grant in ROLES.get(self.role, ()))


def secret_digest(secret: str) -> str:
    h = hashes.Hash(hashes.SHA256())
    h.update(secret.encode())
    return h.finalize().hex()


def new_client_secret() -> str:
    return secrets.token_urlsafe(32)


class Issuer:
    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer_id: str) -> None:
        self._jwk = jwk.JWK.from_pyca(key)
        self._public = jwk.JWK.from_pyca(key.public_key())
        self.issuer_id = issuer_id

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Issuer:
        path = state_dir / ISSUER_KEY_FILE
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            write_private_file(path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise LocalStackError(f"{path} is not an EC private key", code="LOCAL_KV_ISSUER_KEY")
        # The issuer id names this vault's key, so a token from another stand-in is refused.
        spki = loaded.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(spki)
        return cls(loaded, f"edb-local-keyvault:{digest.finalize().hex()[:16]}")

    def issue(self, principal: Principal, scope: str, now: float | None = None) -> tuple[str, int]:
        now = int(now if now is not None else time.time())
        claims = {
            "iss": self.issuer_id, "aud": RESOURCE, "sub": principal.client_id, "appid": principal.client_id,
            "roles": [principal.role], "scp": scope, "iat": now, "nbf": now - 60, "exp": now + TOKEN_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        token = jws.JWS(json.dumps(claims, separators=(",", ":")).encode())
        token.add_signature(self._jwk, alg="ES256", protected=json.dumps({"alg": "ES256", "typ": "JWT"}))
        return str(token.serialize(compact=True)), now + TOKEN_LIFETIME_S

    def public_jwk(self) -> dict[str, str]:
        """The verification key (JWKS entry) the discovery document points to."""
        doc: dict[str, str] = json.loads(self._public.export(private_key=False))
        return {**doc, "use": "sig", "alg": "ES256", "kid": self.issuer_id.rsplit(":", 1)[-1]}

    def verify(self, token: str, now: float | None = None) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            raise TokenInvalid("AKV10000: Request is missing a Bearer or PoP token.")
        parsed = jws.JWS()
        try:
            parsed.deserialize(token)
            parsed.verify(self._public, alg="ES256")
            claims = json.loads(parsed.payload)
        except (JWException, ValueError, TypeError) as exc:
            raise TokenInvalid("AKV10032: Invalid issuer or signature.") from exc
        now = now if now is not None else time.time()
        if not isinstance(claims, dict) or claims.get("iss") != self.issuer_id:
            raise TokenInvalid("AKV10032: Invalid issuer.")
        if claims.get("aud") != RESOURCE:
            raise TokenInvalid(f"AKV10022: Invalid audience. Expected {RESOURCE}.")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int) or not isinstance(nbf, int) or not nbf <= now < exp:
            raise TokenInvalid("AKV10020: Token is expired or not yet valid.")
        roles, sub = claims.get("roles"), claims.get("sub")
        if not isinstance(sub, str) or not isinstance(roles, list) or len(roles) != 1 or roles[0] not in ROLES:
            raise TokenInvalid("AKV10030: Token carries no known role.")
        return Principal(sub, roles[0])


def secrets_match(stored_digest: str, presented: str) -> bool:
    return hmac.compare_digest(stored_digest, secret_digest(presented))
