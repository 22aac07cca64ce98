"""The opened device state and the TEE core behind the trusted apps.

:func:`open_device_state` takes the device directory's lock (one TEE per device), reads the HUK,
derives the key hierarchy, authenticates the replay-protected store, checks it against the headers
of the sealed objects (:mod:`edb_tee.integrity`: ``TEE_STATE_ROLLED_BACK`` if it is older than an
object written after it), unseals the identity and computes the measurement. :class:`TeeCore` is
what the trusted apps call; it has no socket code, so tests can drive it in-process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edb.errors import TeeError
from edb.tee import errors as E
from edb.tee.commands import DEVICE_TA, INSTALLER_TA
from edb.tee.types import DeviceInfo, Evidence, InstalledPackage, ModelHandle
from edb_tee import hardening, integrity
from edb_tee.config import TeeConfig
from edb_tee.identity import IDENTITY_OBJECT, DeviceIdentity
from edb_tee.install import InstallEngine, model_object
from edb_tee.keys import HUK_BYTES, KeyHierarchy
from edb_tee.measurement import measure
from edb_tee.models import ModelManager, choose_prepack
from edb_tee.paths import DeviceLayout, check_device_id
from edb_tee.rpmb import ReplayProtectedStore
from edb_tee.storage import SecureStorage

log = logging.getLogger("edb_tee.core")


@dataclass
class DeviceState:
    layout: DeviceLayout
    config: TeeConfig
    keys: KeyHierarchy
    rpmb: ReplayProtectedStore
    storage: SecureStorage
    identity: DeviceIdentity
    measurement: str
    lock_fd: int

    def close(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def open_device_state(layout: DeviceLayout) -> DeviceState:
    if not layout.provisioned():
        raise TeeError(f"no provisioned device in {layout.root} (run `edb device provision`)",
                       code=E.NOT_PROVISIONED)
    device_id = check_device_id(layout.root.name)
    lock_fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TeeError(f"another TEE process serves {layout.root}", code=E.STATE_LOCKED) from exc
        config = TeeConfig.load(layout.config)
        huk = layout.huk.read_bytes()
        if len(huk) != HUK_BYTES:
            raise TeeError("hardware unique key is damaged", code=E.SEALED_TAMPERED)
        keys = KeyHierarchy(huk, device_id)
        del huk
        rpmb = ReplayProtectedStore(layout.rpmb, keys.rpmb_key)
        storage = SecureStorage(layout.objects, keys, rpmb)
        check_integrity(rpmb, storage)
        identity = DeviceIdentity.from_sealed_bytes(storage.read(DEVICE_TA, IDENTITY_OBJECT))
        if identity.device_id != device_id:
            raise TeeError("sealed identity belongs to another device", code=E.SEALED_NAME_MISMATCH)
        return DeviceState(layout, config, keys, rpmb, storage, identity, measure(config.measured), lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise


def check_integrity(rpmb: ReplayProtectedStore, storage: SecureStorage) -> integrity.Verdict:
    """Run the start-up check (``TEE_STATE_ROLLED_BACK``) and apply its verdict: raise the floors the
    sealed objects prove in one replay-protected write, then remove the files of an uncommitted
    write and any other stale generation (the sweep)."""
    verdict = integrity.check_state(rpmb.read(), storage.scan())
    if verdict.raise_floors:
        log.warning("rollback floors raised to what sealed objects prove (an interrupted install, or a "
                    "replay-protected store replayed by one write): %s", verdict.raise_floors)
        raised = verdict.raise_floors
        rpmb.commit(lambda state: state.floors.update(
            {p: max(state.floors.get(p, 0), f) for p, f in raised.items()}))
    if verdict.unaccounted:
        log.warning("%d sealed object(s) listed by the replay-protected store are missing or not the recorded "
                    "generation; reading them will fail", len(verdict.unaccounted))
    storage.sweep()
    return verdict


class TeeCore:
    def __init__(self, state: DeviceState) -> None:
        self.state = state
        self.hardening = hardening.report()
        state.layout.ort_empty.mkdir(mode=0o700, exist_ok=True)
        self.models = ModelManager(state.layout.ort_empty)
        self.installer = InstallEngine(state, self.models)
        self.boot_id = secrets.token_hex(8)

    # -- device TA ---------------------------------------------------------------------------

    def device_info(self) -> DeviceInfo:
        ident, m = self.state.identity, self.state.config.measured
        return DeviceInfo(ident.device_id, ident.device_class, self.state.measurement, m.tee_svn, m.legacy_v1)

    def evidence(self, nonce: str, user_data: bytes) -> Evidence:
        """Evidence without a package binding; the one-time key is made and discarded here (the
        statement proves freshness and identity; installs use the installer TA's evidence)."""
        otk = ec.generate_private_key(ec.SECP256R1())
        return self.state.identity.evidence(nonce=nonce, measurement=self.state.measurement,
                                            tee_svn=self.state.config.measured.tee_svn,
                                            one_time_key=otk.public_key(), user_data=user_data or None)

    def list_installed(self) -> list[InstalledPackage]:
        return self.installer.installed()

    def legacy_public_key(self) -> bytes:
        if not self.state.config.measured.legacy_v1:
            raise TeeError("the legacy v1 key flow is disabled on this device", code=E.LEGACY_DISABLED)
        return self.state.identity.legacy_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def status(self) -> dict[str, Any]:
        return {"bootId": self.boot_id, "hardening": hardening.report().to_json(), "models": self.models.status(),
                "installs": self.installer.open_count(), "rpmbCounter": self.state.rpmb.read().counter}

    # -- runner TA ---------------------------------------------------------------------------

    def load_model(self, name: str, owner: int, *, prepack: bool | None) -> ModelHandle:
        for _ in range(3):  # an install may commit between reading the record and unsealing
            record = self.installer.record(name)
            gen = record["gen"]
            chosen = choose_prepack(prepack, record.get("size"), self.state.config.measured.prepack_max_bytes)

            def unseal(gen: int = gen) -> hardening.SecureBuffer:
                current = self.state.storage.generation(INSTALLER_TA, model_object(name))
                if current != gen:
                    raise _Moved()
                return self.state.storage.read_into(INSTALLER_TA, model_object(name))

            try:
                return self.models.load(name, record["version"], record["packageId"], owner, prepack=chosen,
                                        unseal=unseal)
            except _Moved:
                continue
        raise TeeError(f"model {name!r} keeps changing; try again", code=E.INSTALL_STATE)

    # -- lifecycle ---------------------------------------------------------------------------

    def release_owner(self, pid: int) -> None:
        self.models.release_owner(pid)
        self.installer.release_owner(pid)

    def close(self) -> None:
        self.installer.close()
        self.models.close()
        self.state.close()


class _Moved(Exception):
    pass
