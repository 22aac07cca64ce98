"""The simulated manufacturer CA (factory PKI) in ``<state>/manufacturer/``: ``ca.pem`` (pin it in
the key release service) and ``ca.key`` (0600). It issues one certificate per device, for the
attestation public key the TEE exports at provisioning (Contract 2): subject CN = device id,
OU = device class, O = manufacturer; keyUsage digitalSignature; extendedKeyUsage
``edb.pki.oids.DEVICE_ATTESTATION_EKU`` and nothing else.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edb.pki.issue import issue_leaf, make_name, make_root_ca
from edb.pki.oids import DEVICE_ATTESTATION_EKU

MANUFACTURER = "EDB Simulated Manufacturer"
DEVICE_CERT_DAYS = 20 * 365  # device certificates outlive the devices, as in real factories


@dataclass(frozen=True)
class ManufacturerCA:
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / "ca.pem"

    @classmethod
    def load_or_create(cls, directory: Path) -> ManufacturerCA:
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "ca.pem", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError("manufacturer CA key must be EC")
            return cls(directory, cert, key)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_root_ca(key, make_name(f"{MANUFACTURER} Root CA", MANUFACTURER), days=30 * 365)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, cert, key)

    def issue_device(self, public_key: ec.EllipticCurvePublicKey, device_id: str, device_class: str,
                     *, now: dt.datetime | None = None) -> x509.Certificate:
        cert: x509.Certificate = issue_leaf(
            self.key, self.cert, public_key, make_name(device_id, MANUFACTURER, device_class),
            ekus=[DEVICE_ATTESTATION_EKU], now=now, days=DEVICE_CERT_DAYS)
        return cert
