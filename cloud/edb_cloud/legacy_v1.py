"""``edb cloud build --format cpk-v1``: a LEGACY manifest-v1 package, as the original tools made them.

For devices that still use the original key flow (docs/key-release.md, "Legacy wrap contract"):
WEAKER than the default v2 package (no publisher pinning, target, expiry or rollback floor; the
content key goes to whoever holds the WrapKey function key). Build v2 packages unless a device
can only take v1.

The content ("class") key is the Key Vault secret ``edb-legacy-<package id>``: the secret the key
release service's ``ProvisionKey/{key_name}`` creates and ``WrapKey`` wraps to the device. It is
created here the same way if absent (32 random bytes, base64, content type
``application/vnd.edb.legacy-class-key``) and read to encrypt the model: the build pipeline is one
of the two places the key may be. The package is signed with an RSA-2048 key and carries its
self-signed certificate, as the original tools do (kept in ``<state>/cloud/legacy-v1/``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edb.cpk.v1 import V1Signing, build_v1
from edb.errors import ConfigError
from edb.keys.errors import INVALID_KEY, UNAVAILABLE, KeyProviderError
from edb_cloud.config import CloudConfig
from key_release_service.keyvault import LEGACY_CONTENT_TYPE
from key_release_service.legacy import KEY_NAME, legacy_secret_name

_VERSION = re.compile(r"^(\d{1,9})\.(\d{1,9})\.(\d{1,9})$")
MAX_V1_MODEL_BYTES = 64 * 1024 * 1024  # v1 is built in memory, like the original tools did


@dataclass(frozen=True)
class BuiltV1Package:
    path: Path
    package_id: str
    version: str
    file_size: int
    key_name: str


def parse_v1_version(version: str) -> tuple[int, int, int]:
    """v1 versions are ``major.minor.revision`` numbers."""
    match = _VERSION.match(version)
    if match is None:
        raise ConfigError(f"a v1 package version is MAJOR.MINOR.REVISION, not {version[:40]!r}", code="CONFIG_INVALID")
    major, minor, revision = (int(g) for g in match.groups())
    return major, minor, revision


def check_key_name(name: str) -> str:
    # the key release service's legacy key names: letters, digits and dashes, never edb-*
    if not KEY_NAME.match(name) or name.lower().startswith("edb-"):
        raise ConfigError(f"{name[:40]!r} cannot name a legacy class key (letters, digits, dashes; not edb-*)",
                          code="CONFIG_INVALID")
    return name


def class_key(config: CloudConfig, key_name: str) -> bytes:
    """The class key secret in Key Vault, created like ProvisionKey creates it when absent."""
    from azure.core.exceptions import AzureError, ResourceNotFoundError

    from edb_cloud.publisher import _vault

    if not config.get("EDB_KEYVAULT_URL"):
        raise ConfigError("a v1 package's key lives in Key Vault (the key release service wraps it from there); "
                          "set EDB_KEYVAULT_URL", code="CONFIG_MISSING")
    client = _vault(config).secret_client()
    secret_name = legacy_secret_name(check_key_name(key_name))  # the key release service's namespace
    try:
        try:
            secret = client.get_secret(secret_name)
            value = (secret.value or "") if secret.properties.content_type == LEGACY_CONTENT_TYPE else ""
        except ResourceNotFoundError:
            value = base64.b64encode(secrets.token_bytes(32)).decode()
            client.set_secret(secret_name, value, content_type=LEGACY_CONTENT_TYPE,
                              tags={"edb-role": "legacy-class-key"})
    except AzureError as exc:
        raise KeyProviderError(f"cannot read or create the class key {key_name} in Key Vault "
                               f"({type(exc).__name__})", code=UNAVAILABLE) from None
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise KeyProviderError(f"Key Vault secret {secret_name} is not a base64 32-byte class key", code=INVALID_KEY)
    return key


def v1_signing(config: CloudConfig) -> V1Signing:
    """The RSA-2048 key and self-signed certificate v1 packages embed (made once)."""
    directory = config.cloud_dir / "legacy-v1"
    key_path, cert_path = directory / "signer.key", directory / "signer.pem"
    if key_path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if isinstance(key, rsa.RSAPrivateKey) and cert.not_valid_after_utc > dt.datetime.now(dt.UTC):
            return V1Signing(key, cert)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "EDB legacy v1 publisher (self-signed)")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650)).sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return V1Signing(key, cert)


def build_package_v1(config: CloudConfig, model: Path, output: Path, *, package_id: str,
                     version: str, preflight: bool = True) -> BuiltV1Package:
    """The model (plain ONNX; the TEE converts it at install) in a v1 package keyed by the class key
    named ``package_id``, as the original tools lay it out. ``preflight``: first load it exactly as
    the TEE will (``CPK_MODEL_UNSUPPORTED`` if it would refuse it), once the class key is found."""
    numbers = parse_v1_version(version)
    if model.stat().st_size > MAX_V1_MODEL_BYTES:
        raise ConfigError(f"v1 packages are built in memory; models above {MAX_V1_MODEL_BYTES} bytes need v2",
                          code="CONFIG_INVALID")
    key = class_key(config, package_id)
    if preflight:
        from edb_cloud.packaging import preflight_model

        preflight_model(model, "application/onnx")  # what the TEE takes a v1 payload for
    output.parent.mkdir(parents=True, exist_ok=True)
    build_v1(model.read_bytes(), output, cp_id=package_id, key=key, signing=v1_signing(config), version=numbers,
             cp_name=package_id, cp_vendor="EDB demo publisher",
             date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC"))
    del key
    return BuiltV1Package(output, package_id, version, output.stat().st_size, package_id)
