"""The device identity the TEE holds: attestation key, legacy key, certificate chain, pinned roots.

It is one sealed object (``identity`` of the device trusted app), created at provisioning and
unsealed when the service starts. Private keys exist in plaintext only inside the TEE process.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edb.attestation.evidence import EvidenceClaims, PackageBinding, public_key_hash, sign_evidence
from edb.attestation.keywrap import public_jwk
from edb.tee.types import Evidence
from edb_tee import TEE_IMPL

IDENTITY_OBJECT = "identity"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    device_class: str
    attestation_key: ec.EllipticCurvePrivateKey
    legacy_key: rsa.RSAPrivateKey
    cert_chain: tuple[x509.Certificate, ...]  # leaf first
    publisher_roots: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:
        return f"DeviceIdentity({self.device_id!r}, {self.device_class!r})"

    def to_sealed_bytes(self) -> bytes:
        der = serialization.Encoding.DER
        return json.dumps({
            "deviceId": self.device_id,
            "deviceClass": self.device_class,
            "attestationKey": _b64(self.attestation_key.private_bytes(
                der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            "legacyKey": _b64(self.legacy_key.private_bytes(
                der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
            "certChain": [_b64(c.public_bytes(der)) for c in self.cert_chain],
            "publisherRoots": [_b64(c.public_bytes(der)) for c in self.publisher_roots],
        }).encode()

    @classmethod
    def from_sealed_bytes(cls, data: bytes) -> DeviceIdentity:
        d: dict[str, Any] = json.loads(data)
        att = serialization.load_der_private_key(base64.b64decode(d["attestationKey"]), password=None)
        legacy = serialization.load_der_private_key(base64.b64decode(d["legacyKey"]), password=None)
        if not isinstance(att, ec.EllipticCurvePrivateKey) or not isinstance(legacy, rsa.RSAPrivateKey):
            raise ValueError("identity keys have unexpected types")
        return cls(
            d["deviceId"], d["deviceClass"], att, legacy,
            tuple(x509.load_der_x509_certificate(base64.b64decode(c)) for c in d["certChain"]),
            tuple(x509.load_der_x509_certificate(base64.b64decode(c)) for c in d["publisherRoots"]),
        )

    def chain_b64(self) -> tuple[str, ...]:
        return tuple(_b64(c.public_bytes(serialization.Encoding.DER)) for c in self.cert_chain)

    def evidence(self, *, nonce: str, measurement: str, tee_svn: int, one_time_key: ec.EllipticCurvePublicKey,
                 package: PackageBinding | None = None, user_data: bytes | None = None) -> Evidence:
        """Sign a statement with the attestation key (checks the nonce: ``ATT_NONCE_TOO_LARGE``)."""
        claims = EvidenceClaims(
            device_id=self.device_id, issued_at=int(time.time()), nonce=nonce, tee_measurement=measurement,
            tee_svn=tee_svn, one_time_key_hash=public_key_hash(one_time_key), tee_impl=TEE_IMPL,
            package=package, user_data=user_data or None, issuer=TEE_IMPL,
        )
        return Evidence(sign_evidence(claims, self.attestation_key), self.chain_b64(), public_jwk(one_time_key))
