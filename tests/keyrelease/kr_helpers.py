"""Test helpers for the key release service: a manufacturer CA and simulated devices (same
certificate profile as the TEE's provisioning: CN=device id, OU=device class, EKU device
attestation, digitalSignature), a publisher, package building, and request bodies."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from edb.attestation.evidence import EvidenceClaims, PackageBinding, public_key_hash, sign_evidence
from edb.attestation.keywrap import public_jwk
from edb.cpk import BuildResult, PackageIdentity, Target, build
from edb.keys.base import KekProvider
from edb.keys.local import LocalSigner
from edb.pki.certs import to_der
from edb.pki.issue import issue_intermediate_ca, issue_leaf, make_name, make_root_ca
from edb.pki.oids import DEVICE_ATTESTATION_EKU, PUBLISHER_SIGNING_EKU
from key_release_service.http_types import ApiRequest, ApiResponse
from key_release_service.service import KeyReleaseService

MEASUREMENT = "ab" * 32
NOW = dt.datetime.now(dt.UTC)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class SimEvidence:
    """What the TEE hands the installer (shape of edb.tee.Evidence)."""

    jws: str
    cert_chain: tuple[str, ...]
    one_time_jwk: dict[str, str]


@dataclass
class SimDevice:
    device_id: str
    device_class: str | None
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    chain: list[x509.Certificate]
    measurement: str = MEASUREMENT
    tee_svn: int = 3

    @property
    def chain_b64(self) -> list[str]:
        return [b64(to_der(c)) for c in self.chain]

    def evidence(self, nonce: str, package: BuildResult, *, otk: ec.EllipticCurvePrivateKey | None = None,
                 binding: PackageBinding | None = None, sign_with: ec.EllipticCurvePrivateKey | None = None,
                 device_id: str | None = None, tee_svn: int | None = None, measurement: str | None = None,
                 ) -> tuple[SimEvidence, ec.EllipticCurvePrivateKey]:
        otk = otk or ec.generate_private_key(ec.SECP256R1())
        m = package.manifest
        claims = EvidenceClaims(
            device_id=device_id or self.device_id, issued_at=int(time.time()), nonce=nonce,
            tee_measurement=measurement or self.measurement,
            tee_svn=self.tee_svn if tee_svn is None else tee_svn,
            one_time_key_hash=public_key_hash(otk.public_key()),
            package=binding or PackageBinding(m.package_id, m.version, m.security_version,
                                              package.signed.manifest_sha256),
        )
        jws = sign_evidence(claims, sign_with or self.key)
        return SimEvidence(jws, tuple(self.chain_b64), public_jwk(otk.public_key())), otk


class Manufacturer:
    """A simulated manufacturer root with an intermediate, issuing device attestation certificates."""

    def __init__(self, name: str = "EDB Test Manufacturer") -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = make_root_ca(self.root_key, make_name(f"{name} Root", name))
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = issue_intermediate_ca(self.root_key, self.root, self.ca_key.public_key(),
                                        make_name(f"{name} Device CA", name))
        self.name = name

    def device(self, device_id: str, device_class: str | None = "trustbox-edge-201", *,
               ekus: list[x509.ObjectIdentifier] | None = None, not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> SimDevice:
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = issue_leaf(self.ca_key, self.ca, key.public_key(), make_name(device_id, self.name, device_class),
                          ekus=ekus or [DEVICE_ATTESTATION_EKU], not_before=not_before, not_after=not_after)
        return SimDevice(device_id, device_class, key, [cert, self.ca])


class Publisher:
    def __init__(self) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = make_root_ca(root_key, make_name("EDB Test Publisher Root", "EDB"))
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue_leaf(root_key, self.root, key.public_key(), make_name("EDB Test Publisher", "EDB"),
                          ekus=[PUBLISHER_SIGNING_EKU])
        self.signer = LocalSigner(key, [leaf])


def build_package(kek: KekProvider, publisher: Publisher, package_id: str, *, version: str = "1.0.0",
                  security_version: int = 1, devices: tuple[str, ...] = (),
                  classes: tuple[str, ...] = ("trustbox-edge-201",),
                  expires: dt.datetime | None = None, created: dt.datetime | None = None,
                  payload: bytes | None = None) -> tuple[BuildResult, bytes]:
    payload = payload if payload is not None else os.urandom(200)
    now = dt.datetime.now(dt.UTC)
    identity = PackageIdentity(
        package_id=package_id, version=version, security_version=security_version,
        target=Target(device_ids=devices, device_classes=classes),
        created=created or now - dt.timedelta(minutes=1), expires=expires or now + dt.timedelta(days=30),
    )
    out = io.BytesIO()
    result = build(io.BytesIO(payload), out, identity=identity, kek=kek, signer=publisher.signer, chunk_size=64)
    return result, out.getvalue()


def release_body(evidence: SimEvidence, package: BuildResult, *, package_id: str | None = None,
                 version: str | None = None) -> bytes:
    m = package.manifest
    return json.dumps({
        "evidence": evidence.jws,
        "certChain": list(evidence.cert_chain),
        "oneTimeKey": evidence.one_time_jwk,
        "package": {"id": package_id or m.package_id, "version": version or m.version},
        "manifest": package.signed.to_json(),
    }).encode()


def error_code(body: dict[str, Any]) -> str:
    return str(body["error"]["code"])


class UnwrapCounter:
    """Counts Key Vault unwrap calls (instrumentation around the real gateway, not a mock)."""

    def __init__(self, service: KeyReleaseService) -> None:
        self.calls = 0
        real = service.vault.unwrap

        async def counted(kid: str, wrapped: bytes) -> bytes:
            self.calls += 1
            return await real(kid, wrapped)

        service.vault.unwrap = counted  # type: ignore[method-assign]


async def nonce_of(service: KeyReleaseService) -> str:
    response = await service.nonce(ApiRequest("POST"))
    assert response.status == 200
    return str(response.body["nonce"])


async def release(service: KeyReleaseService, device: SimDevice, pkg: BuildResult, *,
                  nonce: str | None = None, **evidence_kwargs: Any) -> tuple[ApiResponse, ec.EllipticCurvePrivateKey]:
    """One release through ``service`` (a fresh nonce unless ``nonce`` is given); the answer and the
    one-time private key the released DEK is wrapped to."""
    evidence, otk = device.evidence(nonce or await nonce_of(service), pkg, **evidence_kwargs)
    return await service.release(ApiRequest("POST", body=release_body(evidence, pkg))), otk
