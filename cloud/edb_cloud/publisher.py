"""The publisher's keys: KEK and signing key in Key Vault, a signing certificate from the publisher root.

``edb cloud init`` makes sure that (1) the publisher PKI exists (``edb pki init``: the root every
device and the key release service pins), (2) Key Vault holds the KEK (RSA 3072, wrapKey/unwrapKey)
and the signing key (EC P-256, sign/verify), and (3) the Key Vault signing key has a publisher
certificate issued by that root. The record ``<state>/cloud/publisher.json`` holds only key ids and
file paths. Without ``EDB_KEYVAULT_URL`` the local PEM keys of the PKI are used instead (clearly a
development mode: private keys in files).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from edb.errors import ConfigError
from edb.keys.base import KekProvider, Signer
from edb_cloud.config import CloudConfig

KEK_NAME = "edb-kek"
_MEASUREMENT = re.compile(r"^[0-9a-fA-F]{64}$")
SIGNER_NAME = "edb-publisher-signer"


@dataclass(frozen=True)
class PublisherRecord:
    mode: str  # "keyvault" or "local"
    pki_dir: str
    kek: str  # Key Vault key id, or the local KEK PEM path
    signer_key: str  # Key Vault key id, or the local signing key PEM path
    signer_chain: str  # PEM file, leaf first

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record_path(config: CloudConfig) -> Path:
    return config.cloud_dir / "publisher.json"


def pki_dir(config: CloudConfig) -> Path:
    return Path(config.get("EDB_PKI_DIR") or config.state_dir / "pki")


def _vault(config: CloudConfig) -> Any:
    from edb_cloud.keyvault.connection import VaultConnection

    url = config.require("EDB_KEYVAULT_URL", "the Key Vault holding the KEK and the signing key")
    return VaultConnection.from_settings(config, vault_url=url)


def init_publisher(config: CloudConfig) -> PublisherRecord:
    from edb.pki.devpki import PublisherPki, init_publisher_pki

    pki = PublisherPki(pki_dir(config))
    if not pki.exists():
        init_publisher_pki(pki.directory)
    if not config.get("EDB_KEYVAULT_URL"):
        record = PublisherRecord("local", str(pki.directory), str(pki.kek), str(pki.signer_key), str(pki.signer_cert))
    else:
        from edb_cloud.keyvault.lifecycle import ensure_kek, ensure_signer

        client = _vault(config).key_client()
        kek, _ = ensure_kek(client, KEK_NAME)
        signer, _ = ensure_signer(client, SIGNER_NAME)
        chain_path = config.cloud_dir / "keyvault-signer.pem"
        _issue_signer_certificate(pki, signer, chain_path)
        record = PublisherRecord("keyvault", str(pki.directory), _unversioned(str(kek.id)), str(signer.id),
                                 str(chain_path))
    path = record_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return record


def _unversioned(kid: str) -> str:
    """``https://vault/keys/name/version`` -> ``https://vault/keys/name``: wrap with the current version."""
    parts = kid.rstrip("/").split("/")
    return "/".join(parts[:-1]) if len(parts) >= 6 and parts[-3] == "keys" else kid


def _issue_signer_certificate(pki: Any, signer_key: Any, chain_path: Path) -> None:
    """A publisher signing certificate for the Key Vault key's public half, issued by the local root.

    The root's private key is a development file here; in production the root lives offline or in
    an HSM and this certificate is issued once by that CA.
    """
    from cryptography.hazmat.primitives import serialization

    from edb.pki.certs import load_pem_certificates_file, to_pem
    from edb.pki.issue import issue_leaf, make_name
    from edb.pki.oids import PUBLISHER_SIGNING_EKU

    jwk = signer_key.key
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(jwk.x, "big"), int.from_bytes(jwk.y, "big"),
                                           ec.SECP256R1()).public_key()
    if chain_path.exists():
        (existing,) = load_pem_certificates_file(chain_path)[:1]
        fresh = existing.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
        same_key = existing.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        if fresh and same_key:
            return
    root_key = serialization.load_pem_private_key(pki.root_key.read_bytes(), password=None)
    (root,) = load_pem_certificates_file(pki.root_cert)[:1]
    organization = root.subject.get_attributes_for_oid(_org_oid())
    org = str(organization[0].value) if organization else "EDB Publisher"
    cert = issue_leaf(root_key, root, public, make_name(f"{org} Package Signing (Key Vault)", org),  # type: ignore[arg-type]
                      ekus=[PUBLISHER_SIGNING_EKU])
    chain_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = chain_path.with_suffix(".tmp")
    tmp.write_bytes(to_pem([cert]))
    os.replace(tmp, chain_path)


def _org_oid() -> Any:
    from cryptography.x509.oid import NameOID

    return NameOID.ORGANIZATION_NAME


def load_publisher(config: CloudConfig) -> PublisherRecord:
    path = record_path(config)
    if not path.exists():
        raise ConfigError("the publisher keys are not set up; run `edb cloud init`", code="CONFIG_NOT_INITIALIZED")
    return PublisherRecord(**json.loads(path.read_text()))


def providers(config: CloudConfig, record: PublisherRecord) -> tuple[KekProvider, Signer]:
    from edb.keys.local import LocalKek, LocalSigner
    from edb.pki.certs import load_pem_certificates_file

    if record.mode == "local":
        return LocalKek.from_file(record.kek), LocalSigner.from_files(record.signer_key, record.signer_chain)
    from edb.keys.azure_keyvault import KeyVaultKek, KeyVaultSigner

    vault = _vault(config)
    kwargs = vault.client_kwargs()
    credential = vault.credential()
    return (KeyVaultKek(record.kek, credential, **kwargs),
            KeyVaultSigner(record.signer_key, load_pem_certificates_file(record.signer_chain), credential, **kwargs))


@dataclass(frozen=True)
class ReleasePins:
    """What a new release policy pins about the TEE: its measurements (None only when any was
    explicitly allowed: ``--allow-any-measurement``) and its minimum security version."""

    measurements: tuple[str, ...] | None
    min_tee_svn: int

    def describe(self) -> str:
        pinned = ("ANY TEE measurement" if self.measurements is None
                  else f"{len(self.measurements)} pinned TEE measurement(s)")
        return f"{pinned}, min TEE svn {self.min_tee_svn}"


ANY_MEASUREMENT_WARNING = ("WARNING: --allow-any-measurement: the release policy accepts ANY TEE measurement, so any "
                           "TEE code and configuration that holds a certified device key gets the model key. Use it "
                           "for development only; pin measurements with `edb keyvault policy set ... --measurement`.")


def release_pins(config: CloudConfig, measurements: tuple[str, ...] = (), *, min_tee_svn: int | None = None,
                 allow_any_measurement: bool = False) -> ReleasePins:
    """The pins of a new policy: the measurements given; or, with none given, the running local
    TEE's own measurement and security version (``EDB_TEE_SOCKET``, as the local stack sets it);
    any measurement only when explicitly allowed. Fails closed: no measurement, no policy."""
    if allow_any_measurement:
        if measurements:
            raise ConfigError("--measurement and --allow-any-measurement exclude each other", code="CONFIG_INVALID")
        return ReleasePins(None, 1 if min_tee_svn is None else min_tee_svn)
    if measurements:
        bad = [m for m in measurements if not _MEASUREMENT.fullmatch(m)]
        if bad:
            raise ConfigError(f"--measurement takes 64 hex digits (`edb tee measurement`), not {bad[0][:70]!r}",
                              code="CONFIG_INVALID")
        return ReleasePins(tuple(m.lower() for m in measurements), 1 if min_tee_svn is None else min_tee_svn)
    socket = config.get("EDB_TEE_SOCKET")
    if socket is None:
        raise ConfigError("a release policy pins the TEE measurement: give --measurement HEX (`edb tee measurement` "
                          "on the device; repeatable), run with the local stack up, or pass --allow-any-measurement "
                          "(development only)", code="CONFIG_MISSING")
    from edb.tee.client import TeeClient

    with TeeClient(socket, reconnect_s=0) as tee:
        info = tee.device_info()  # TEE_UNAVAILABLE when the local TEE is not running: say so, pin nothing
    return ReleasePins((info.measurement,), info.tee_svn if min_tee_svn is None else min_tee_svn)


def ensure_release_policy(config: CloudConfig, package_id: str, *, devices: list[str], device_classes: list[str],
                          min_security_version: int, pins: ReleasePins) -> str:
    """Create the key release policy for ``package_id`` if none exists; returns what was done.
    ``min_security_version`` is the package's own by default (callers pass it), so nothing older
    than the first published version is ever released; ``pins`` from :func:`release_pins`."""
    if not config.get("EDB_KEYVAULT_URL"):
        return "skipped (no Key Vault configured)"
    from edb_cloud.keyvault.policies import get_policy, put_policy
    from key_release_service.policy import build_policy

    client = _vault(config).secret_client()
    if get_policy(client, package_id) is not None:
        return "kept (already set; change it with `edb keyvault policy ...`)"
    put_policy(client, build_policy(package_id, devices=devices, device_classes=device_classes,
                                    measurements=pins.measurements, min_security_version=min_security_version,
                                    min_tee_svn=pins.min_tee_svn))
    return f"created ({pins.describe()}, min package security version {min_security_version})"
