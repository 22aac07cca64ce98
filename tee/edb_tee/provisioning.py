"""Factory provisioning of a simulated device (``edb device provision``).

Runs the TEE's own code, offline (the service is not running yet), like a factory station does:

1. make ``<device>/`` and the TEE-only ``<device>/tee/`` (0700);
2. create the hardware unique key (the simulated fuse) and the replay-protected store;
3. inside the TEE code, generate the P-256 attestation key and the RSA-2048 legacy key; only the
   attestation *public* key leaves, to the manufacturer CA, which returns the device certificate;
4. seal the identity (keys, certificate chain, pinned publisher roots) for the device trusted app;
5. write the normal-world files: ``device.json`` and ``device-cert.pem`` (public).

The caller allow-list (which uids/gids hold the installer, runner and admin roles) is written to
``<device>/tee/config.json`` with the rest of the TEE configuration; without per-role ids it is the
single-uid development default. :func:`set_access` changes it later, while the service is stopped.

The private keys are never written anywhere unsealed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edb.errors import TeeError
from edb.tee.commands import DEVICE_TA
from edb.tee.errors import ALREADY_PROVISIONED, BAD_NAME, NOT_PROVISIONED, STATE_LOCKED
from edb_tee.config import AccessConfig, MeasuredConfig, TeeConfig
from edb_tee.identity import IDENTITY_OBJECT, DeviceIdentity
from edb_tee.keys import KeyHierarchy, new_huk
from edb_tee.manufacturer import ManufacturerCA
from edb_tee.measurement import measure
from edb_tee.paths import DEVICE_ID_PATTERN, DeviceLayout, check_device_id, write_private
from edb_tee.rpmb import ReplayProtectedStore
from edb_tee.storage import SecureStorage

DEFAULT_DEVICE_CLASS = "trustbox-edge-201"


@dataclass(frozen=True)
class ProvisionResult:
    layout: DeviceLayout
    device_id: str
    device_class: str
    certificate: x509.Certificate
    manufacturer_ca: Path
    measurement: str
    access: AccessConfig

    def to_json(self) -> dict[str, object]:
        return {
            "deviceId": self.device_id,
            "deviceClass": self.device_class,
            "deviceDir": str(self.layout.root),
            "certificate": str(self.layout.certificate),
            "manufacturerCa": str(self.manufacturer_ca),
            "socket": str(self.layout.socket),
            "measurement": self.measurement,
            "certificateSha256": self.certificate.fingerprint(hashes.SHA256()).hex(),
        }


def provision(
    state_dir: Path,
    device_id: str,
    *,
    device_class: str = DEFAULT_DEVICE_CLASS,
    publisher_roots: Sequence[x509.Certificate] = (),
    measured: MeasuredConfig | None = None,
    access: AccessConfig | None = None,
) -> ProvisionResult:
    check_device_id(device_id)
    if not DEVICE_ID_PATTERN.fullmatch(device_class):
        raise TeeError(f"invalid device class {device_class!r}", code=BAD_NAME)
    layout = DeviceLayout.for_device(state_dir, device_id)
    if layout.provisioned():
        raise TeeError(f"device {device_id!r} is already provisioned in {layout.root}", code=ALREADY_PROVISIONED)
    ca = ManufacturerCA.load_or_create(Path(state_dir) / "manufacturer")

    layout.root.mkdir(parents=True, exist_ok=True)
    for d in (layout.tee, layout.objects, layout.ort_empty):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    layout.cache.mkdir(mode=0o700, exist_ok=True)

    config = TeeConfig(measured or MeasuredConfig(), access or AccessConfig.single_user(os.getuid()))
    config.save(layout.config)
    huk = new_huk()
    keys = KeyHierarchy(huk, device_id)
    rpmb = ReplayProtectedStore.create(layout.rpmb, keys.rpmb_key)
    storage = SecureStorage(layout.objects, keys, rpmb)

    # inside the TEE: keys are generated here and only the public half goes to the factory CA
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    legacy_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = ca.issue_device(attestation_key.public_key(), device_id, device_class)
    identity = DeviceIdentity(device_id, device_class, attestation_key, legacy_key, (certificate,),
                              tuple(publisher_roots))
    storage.write(DEVICE_TA, IDENTITY_OBJECT, identity.to_sealed_bytes())
    # the HUK is written last: a device without it is not provisioned and can be provisioned again
    write_private(layout.huk, huk)

    layout.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    layout.device_json.write_text(json.dumps({
        "deviceId": device_id,
        "deviceClass": device_class,
        "certificate": layout.certificate.name,
        "manufacturerCa": str(ca.cert_path.resolve()),
        "socket": layout.socket.name,
        "cache": layout.cache.name,
    }, indent=2) + "\n")
    return ProvisionResult(layout, device_id, device_class, certificate, ca.cert_path,
                           measure(config.measured), config.access)


def trust_publisher(layout: DeviceLayout, roots: Sequence[x509.Certificate], *, replace: bool = False) -> int:
    """Pin publisher roots on a provisioned device (offline: the service must be stopped)."""
    from edb_tee.core import open_device_state

    state = open_device_state(layout)
    try:
        current = state.identity
        pinned = list(() if replace else current.publisher_roots)
        for root in roots:
            if root not in pinned:
                pinned.append(root)
        updated = DeviceIdentity(current.device_id, current.device_class, current.attestation_key,
                                 current.legacy_key, current.cert_chain, tuple(pinned))
        state.storage.write(DEVICE_TA, IDENTITY_OBJECT, updated.to_sealed_bytes())
        return len(pinned)
    finally:
        state.close()


@contextlib.contextmanager
def _service_stopped(layout: DeviceLayout) -> Iterator[None]:
    """Hold the device lock the TEE service holds while it runs: offline changes cannot race it."""
    if not layout.provisioned():
        raise TeeError(f"no provisioned device in {layout.root} (run `edb device provision`)", code=NOT_PROVISIONED)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TeeError(f"the TEE service is running for {layout.root}: stop it first", code=STATE_LOCKED) from exc
        yield
    finally:
        os.close(fd)  # releases the lock


def read_access(layout: DeviceLayout) -> AccessConfig:
    return TeeConfig.load(layout.config).access


def set_access(layout: DeviceLayout, access: AccessConfig) -> AccessConfig:
    """Replace the caller allow-list of a provisioned device (offline: the service must be stopped;
    it reads the list at start). The measured configuration, hence the measurement, is unchanged."""
    with _service_stopped(layout):
        config = TeeConfig.load(layout.config)
        TeeConfig(config.measured, access).save(layout.config)
    return access
