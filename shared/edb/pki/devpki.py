"""``edb pki init``: a local development publisher PKI and KEK.

Files (keys mode 0600, created exclusively so nothing is overwritten by accident)::

    <dir>/root.pem          publisher root CA certificate (pin this on devices and services)
    <dir>/root.key          its EC P-256 private key
    <dir>/signer.pem        publisher signing certificate (EKU codeSigning, keyUsage digitalSignature)
    <dir>/signer.key        its EC P-256 private key
    <dir>/kek.pem           local KEK: RSA 3072 private key (wraps package DEKs, RSA-OAEP-256)
    <dir>/kek.pub.pem       its public key (enough to build packages)
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edb.errors import ConfigError
from edb.keys.local import LocalKek, LocalSigner
from edb.pki.certs import load_pem_certificates_file, to_pem
from edb.pki.issue import issue_leaf, make_name, make_root_ca
from edb.pki.oids import PUBLISHER_SIGNING_EKU

DEFAULT_DIR = Path(".edb/pki")


@dataclass(frozen=True)
class PublisherPki:
    directory: Path

    @property
    def root_cert(self) -> Path:
        return self.directory / "root.pem"

    @property
    def root_key(self) -> Path:
        return self.directory / "root.key"

    @property
    def signer_cert(self) -> Path:
        return self.directory / "signer.pem"

    @property
    def signer_key(self) -> Path:
        return self.directory / "signer.key"

    @property
    def kek(self) -> Path:
        return self.directory / "kek.pem"

    @property
    def kek_public(self) -> Path:
        return self.directory / "kek.pub.pem"

    def exists(self) -> bool:
        return all(p.exists() for p in (self.root_cert, self.signer_cert, self.signer_key, self.kek))

    def signer(self) -> LocalSigner:
        return LocalSigner.from_files(self.signer_key, self.signer_cert)

    def load_kek(self) -> LocalKek:
        return LocalKek.from_file(self.kek)

    def trust_roots(self) -> list:  # type: ignore[type-arg]
        return load_pem_certificates_file(self.root_cert)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_publisher_pki(
    directory: str | os.PathLike[str] = DEFAULT_DIR,
    *,
    organization: str = "EDB Development Publisher",
    signer_days: int = 825,
    kek_bits: int = 3072,
    force: bool = False,
    now: dt.datetime | None = None,
) -> PublisherPki:
    """Create the files above. Refuses to overwrite an existing PKI unless ``force``."""
    pki = PublisherPki(Path(directory))
    pki.directory.mkdir(parents=True, exist_ok=True)
    os.chmod(pki.directory, 0o700)
    existing = [p for p in (pki.root_cert, pki.root_key, pki.signer_cert, pki.signer_key, pki.kek, pki.kek_public)
                if p.exists()]
    if existing and not force:
        raise ConfigError(f"a PKI already exists in {pki.directory} (use --force to replace it)",
                          code="CONFIG_PKI_EXISTS")
    for p in existing:
        p.unlink()
    now = now or dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_root_ca(root_key, make_name(f"{organization} Root CA", organization), now=now)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = issue_leaf(root_key, root, signer_key.public_key(), make_name(f"{organization} Package Signing",
                        organization), ekus=[PUBLISHER_SIGNING_EKU], now=now, days=signer_days)
    kek = LocalKek.generate(kek_bits)
    _write(pki.root_key, _pem_key(root_key), 0o600)
    _write(pki.signer_key, _pem_key(signer_key), 0o600)
    _write(pki.kek, kek.private_pem(), 0o600)
    _write(pki.root_cert, to_pem([root]), 0o644)
    _write(pki.signer_cert, to_pem([signer]), 0o644)
    _write(pki.kek_public, kek.public_pem(), 0o644)
    return pki
