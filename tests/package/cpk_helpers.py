"""Helpers and fixtures for the package library tests: a publisher PKI, KEK, and a small-chunk package builder."""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edb.cpk import BuildResult, PackageIdentity, Target, build
from edb.cpk.v1 import V1Signing
from edb.keys.local import LocalKek, LocalSigner
from edb.pki.devpki import PublisherPki, init_publisher_pki

NOW = dt.datetime(2030, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
CHUNK = 256  # small chunks: many chunks from small payloads, fast tests


@dataclass
class Publisher:
    pki: PublisherPki
    kek: LocalKek
    signer: LocalSigner
    roots: list[x509.Certificate]


@pytest.fixture(scope="session")
def publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    pki = init_publisher_pki(tmp_path_factory.mktemp("pki") / "pki", kek_bits=2048,
                             now=NOW - dt.timedelta(days=30))
    return Publisher(pki=pki, kek=pki.load_kek(), signer=pki.signer(), roots=pki.trust_roots())


@pytest.fixture(scope="session")
def other_publisher(tmp_path_factory: pytest.TempPathFactory) -> Publisher:
    pki = init_publisher_pki(tmp_path_factory.mktemp("pki2") / "pki", kek_bits=2048,
                             organization="Someone Else", now=NOW - dt.timedelta(days=30))
    return Publisher(pki=pki, kek=pki.load_kek(), signer=pki.signer(), roots=pki.trust_roots())


def v1_signing() -> V1Signing:
    """How the original tools sign a v1 package: RSA 2048 and a self-signed "CN=cpk-tool demo" certificate."""
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpk-tool demo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    return V1Signing(key, cert)


def identity(**overrides: object) -> PackageIdentity:
    fields: dict[str, object] = {
        "package_id": "digits",
        "version": "1.0.0",
        "security_version": 3,
        "target": Target(device_ids=("dev-1",), device_classes=("trustbox-edge-201",)),
        "created": NOW - dt.timedelta(days=1),
        "expires": NOW + dt.timedelta(days=30),
        "media_type": "application/vnd.onnx",
        "name": "Digits classifier",
        "vendor": "Contoso",
    }
    fields.update(overrides)
    return PackageIdentity(**fields)  # type: ignore[arg-type]


BuildFn = Callable[..., tuple[Path, BuildResult, bytes]]


@pytest.fixture
def make_package(tmp_path: Path, publisher: Publisher) -> BuildFn:
    counter = iter(range(10_000))

    def _make(payload: bytes | None = None, *, chunk_size: int = CHUNK, signer: object = None,
              kek: object = None, name: str | None = None, **ident: object) -> tuple[Path, BuildResult, bytes]:
        data = os.urandom(2000) if payload is None else payload
        path = tmp_path / (name or f"pkg-{next(counter)}.cpk")
        result = build(io.BytesIO(data), path, identity=identity(**ident), kek=kek or publisher.kek,
                       signer=signer or publisher.signer, chunk_size=chunk_size)  # type: ignore[arg-type]
        return path, result, data

    return _make


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
