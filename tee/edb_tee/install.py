"""Install transactions (Contract 4), inside the TEE.

``begin`` (package passed as a descriptor) -> verify with the package library: signature and chain
to the publisher roots pinned at provisioning, target = this device, not expired, security version
>= the floor; no key is involved yet. ``evidence`` -> a fresh one-time P-256 key and a statement
binding it to the package id, version, security version and manifest hash. ``complete`` -> open the
released key with the one-time key (it must be bound to this package and the manifest's KEK kid),
re-check the floor, decrypt into a locked buffer, validate the model with ONNX Runtime, seal it, and
commit {sealed generation, install record, raised floor} in one replay-protected write.

``begin`` applies every size limit before any pass over the caller's file (:mod:`edb_tee.
package_file`), authenticates the manifest and checks target, expiry and floor, and only then
hashes the whole file (the ticket's ``sha256``) and checks the payload's chunk-list digest against
the manifest (so a damaged or tampered payload is refused before any key release), at the same
time on two threads: they are independent passes over the same bytes. An aligned-layout payload is
sealed while it is decrypted (each sealed chunk written, and its disk write-back started, as soon as
its plaintext is there), so the fsync before the commit overlaps the decryption instead of
following it.

Any failure before that commit leaves the installed set, the floors and the serving model exactly
as they were; the transaction is dropped and the plaintext buffer overwritten.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec, padding

from edb import onnx_layout
from edb.attestation.evidence import PackageBinding
from edb.attestation.keywrap import open_released_key
from edb.cpk import FORMAT_V2, PackageReader, VerifiedPackage, decrypt_payload, open_package, verify_package
from edb.cpk.digests import payload_ciphertext_digest
from edb.cpk.errors import DIGEST_MISMATCH, ROLLBACK
from edb.errors import PackageError, TeeError
from edb.tee import errors as E
from edb.tee.commands import INSTALLER_TA
from edb.tee.types import NAME_PATTERN, Evidence, InstalledPackage, InstallSummary, InstallTicket
from edb_tee.hardening import SecureBuffer
from edb_tee.models import LoadedModel, ModelManager, choose_prepack
from edb_tee.package_file import FileHash, check_file_size, check_unaccounted, file_sha256, reader_limits
from edb_tee.rpmb import RpmbState
from edb_tee.storage import ObjectWriter

if TYPE_CHECKING:
    from edb_tee.core import DeviceState

log = logging.getLogger("edb_tee.install")

MODEL_MEDIA_TYPES = (onnx_layout.MEDIA_TYPE, "application/onnx", "application/vnd.onnx",
                     "application/octet-stream")
MAX_OPEN_PER_OWNER = 4
MAX_OPEN = 32
#: Superseded sealed models at least this large are deleted after the install answers.
REMOVE_IN_BACKGROUND_BYTES = 16 * 1024 * 1024

#: Fills the plaintext buffer; calls the progress callback (if given) with each run of bytes that
#: is ready, in order from the front.
Fill = Callable[[SecureBuffer, Callable[[int], None] | None], None]


def model_object(name: str) -> str:
    return f"model/{name}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Transaction:
    txn: str
    name: str
    owner: int
    file: IO[bytes]
    reader: PackageReader
    verified: VerifiedPackage | None  # None for legacy v1
    package_id: str
    version: str
    security_version: int
    format: str
    sha256: str
    media_type: str
    payload_sha256: str
    created: float = field(default_factory=time.monotonic)
    one_time_key: ec.EllipticCurvePrivateKey | None = None

    def close(self) -> None:
        self.one_time_key = None
        self.reader.close()
        self.file.close()

    def ticket(self) -> InstallTicket:
        return InstallTicket(self.txn, self.name, self.package_id, self.version, self.security_version,
                             self.format, self.verified.signed if self.verified else None, self.sha256)


class InstallEngine:
    def __init__(self, state: DeviceState, models: ModelManager, *, clock: Any = _utcnow) -> None:
        self.state = state
        self.models = models
        self.clock = clock
        self._txns: dict[str, Transaction] = {}
        self._lock = threading.Lock()  # the transaction table
        self._commit = threading.Lock()  # one complete() at a time

    # -- queries -----------------------------------------------------------------------------

    def installed(self) -> list[InstalledPackage]:
        return [_record_to_package(n, r) for n, r in sorted(self.state.rpmb.read().installed.items())]

    def record(self, name: str) -> dict[str, Any]:
        rec = self.state.rpmb.read().installed.get(name)
        if rec is None:
            raise TeeError(f"no model named {name!r} is installed", code=E.NOT_INSTALLED)
        return rec

    def open_count(self) -> int:
        with self._lock:
            return len(self._txns)

    # -- transactions ------------------------------------------------------------------------

    def _take(self, txn: str, owner: int) -> Transaction:
        self._expire()
        with self._lock:
            t = self._txns.get(txn)
            if t is None or t.owner != owner:
                raise TeeError("no such install transaction", code=E.INSTALL_UNKNOWN)
            return t

    def _drop(self, t: Transaction) -> None:
        with self._lock:
            self._txns.pop(t.txn, None)
        t.close()

    def _expire(self) -> None:
        ttl = self.state.config.measured.install_ttl_s
        now = time.monotonic()
        with self._lock:
            old = [t for t in self._txns.values() if now - t.created > ttl]
            for t in old:
                del self._txns[t.txn]
        for t in old:
            t.close()

    def begin(self, name: str, fd: int, owner: int) -> InstallTicket:
        """Takes ownership of ``fd``. Every size limit applies before any pass over the file."""
        max_model = self.state.config.measured.max_model_bytes
        try:
            if not NAME_PATTERN.fullmatch(name):
                raise TeeError(f"invalid package name {name!r}", code=E.BAD_NAME)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise TeeError("the package descriptor is not a regular file", code=E.PACKAGE_FILE)
            check_file_size(st.st_size, max_model)
            self._expire()
            with self._lock:
                mine = sum(1 for t in self._txns.values() if t.owner == owner)
                if mine >= MAX_OPEN_PER_OWNER or len(self._txns) >= MAX_OPEN:
                    raise TeeError("too many open install transactions", code=E.BUSY)
        except BaseException:
            os.close(fd)
            raise
        file = os.fdopen(fd, "rb", closefd=True)
        try:
            reader = open_package(file, limits=reader_limits(max_model))  # bounded reads only
        except BaseException:
            file.close()
            raise
        try:
            if reader.frame.file_size != st.st_size:
                raise TeeError("the package file changed size while the TEE read it", code=E.PACKAGE_FILE)
            check_unaccounted(reader.frame)
            t = self._verify(name, owner, file, reader, st.st_size)
        except BaseException:
            reader.close()
            file.close()
            raise
        with self._lock:
            self._txns[t.txn] = t
        log.info("install %s begun: %s %s (%s)", t.txn[:8], t.package_id, t.version, t.format)
        return t.ticket()

    def _verify(self, name: str, owner: int, file: IO[bytes], reader: PackageReader, size: int) -> Transaction:
        """Authenticate and check the package, then make the two passes over the file (its SHA-256 and
        the payload digest) at the same time on two threads: no pass before the limits, the
        signature, the target, the expiry and the floor have been checked."""
        ident = self.state.identity
        txn = secrets.token_hex(16)
        if reader.format != FORMAT_V2:
            if not self.state.config.measured.legacy_v1:
                raise TeeError("v1 packages need the legacy key flow, which is disabled on this device",
                               code=E.LEGACY_DISABLED)
            m1 = reader.manifest_v1
            check_name_binding(name, m1.cp_id.lower())  # an upper-case UUID from the original tools
            return Transaction(txn, name, owner, file, reader, None, m1.cp_id, str(m1.payload.ver), 0,
                               reader.format, file_sha256(file.fileno(), size), "application/onnx", "")
        if not ident.publisher_roots:
            raise TeeError("no publisher root is pinned on this device", code=E.NO_TRUST_ROOT)
        floor = self.floor(reader.manifest_v2.package_id)
        verified = verify_package(reader, trust_roots=ident.publisher_roots, now=self.clock(),
                                  device_id=ident.device_id, device_class=ident.device_class,
                                  security_floor=floor, check_payload_digest=False)
        m = verified.manifest
        check_name_binding(name, m.package_id)  # authenticated now; before any pass over the payload
        if m.media_type not in MODEL_MEDIA_TYPES:
            raise TeeError(f"payload media type {m.media_type!r} is not a model this TEE loads", code=E.MODEL_INVALID)
        if m.plaintext_size > self.state.config.measured.max_model_bytes:
            raise TeeError("model larger than this TEE accepts", code=E.MODEL_TOO_LARGE)
        file_hash = FileHash(file.fileno(), size)
        try:
            # one thread for the payload digest: the file hash has the other core
            digest = payload_ciphertext_digest(reader, m, threads=1)
        except BaseException:
            file_hash.join()
            raise
        if digest != m.ciphertext_sha256:
            file_hash.join()
            raise PackageError("payload ciphertext SHA-256 differs from the signed manifest", code=DIGEST_MISMATCH)
        sha256 = file_hash.result()
        verified = dataclasses.replace(verified, payload_digest_checked=True)
        return Transaction(txn, name, owner, file, reader, verified, m.package_id, m.version, m.security_version,
                           reader.format, sha256, m.media_type, m.plaintext_sha256)

    def floor(self, package_id: str) -> int | None:
        """The rollback floor of ``package_id`` (from the replay-protected store)."""
        return self.state.rpmb.read().floors.get(package_id)

    def evidence(self, txn: str, nonce: str, owner: int) -> Evidence:
        t = self._take(txn, owner)
        if t.verified is None:
            raise TeeError("legacy v1 installs have no attestation; use the legacy key flow", code=E.INSTALL_STATE)
        key = ec.generate_private_key(ec.SECP256R1())
        binding = PackageBinding(t.package_id, t.version, t.security_version, t.verified.signed.manifest_sha256)
        ev = self.state.identity.evidence(nonce=nonce, measurement=self.state.measurement,
                                          tee_svn=self.state.config.measured.tee_svn,
                                          one_time_key=key.public_key(), package=binding)
        t.one_time_key = key  # a new request replaces (and so revokes) the previous one-time key
        return ev

    def abort(self, txn: str, owner: int) -> None:
        self._drop(self._take(txn, owner))

    def release_owner(self, owner: int) -> None:
        with self._lock:
            mine = [t for t in self._txns.values() if t.owner == owner]
        for t in mine:
            self._drop(t)

    def close(self) -> None:
        with self._lock:
            txns = list(self._txns.values())
            self._txns.clear()
        for t in txns:
            t.close()

    # -- complete ----------------------------------------------------------------------------

    def complete(self, txn: str, jwe: str, owner: int) -> InstallSummary:
        t = self._take(txn, owner)
        try:
            if t.verified is None or t.one_time_key is None:
                raise TeeError("ask for install evidence before completing", code=E.INSTALL_STATE)
            released = open_released_key(jwe, t.one_time_key, package_id=t.package_id, version=t.version)
            if released.kid != t.verified.manifest.kid:
                raise TeeError("released key is for another KEK than the manifest names", code=E.KEY_MISMATCH)
            verified = t.verified

            def fill(buf: SecureBuffer, progress: Callable[[int], None] | None) -> None:
                decrypt_payload(verified, released.dek, buf.view(), progress=progress)

            # Only an aligned payload is sealed as decrypted; a plain ONNX one is converted first.
            return self._install(t, fill, verified.manifest.plaintext_size,
                                 stream_seal=t.media_type == onnx_layout.MEDIA_TYPE)
        finally:
            self._drop(t)

    def complete_legacy(self, txn: str, wrapped_b64: str, owner: int) -> InstallSummary:
        """LEGACY v1: content key RSA-PKCS#1 v1.5-wrapped to the device's legacy key."""
        t = self._take(txn, owner)
        try:
            if t.verified is not None:
                raise TeeError("v2 packages use the attested key flow", code=E.INSTALL_STATE)
            if not self.state.config.measured.legacy_v1:
                raise TeeError("the legacy v1 key flow is disabled", code=E.LEGACY_DISABLED)
            try:
                wrapped = base64.b64decode(wrapped_b64, validate=True)
                key = self.state.identity.legacy_key.decrypt(wrapped, padding.PKCS1v15())
            except (binascii.Error, ValueError) as exc:
                raise TeeError("legacy wrapped key does not open with this device's key", code=E.KEY_MISMATCH) from exc
            return self._install_legacy(t, key)
        finally:
            self._drop(t)

    def _install_legacy(self, t: Transaction, key: bytes) -> InstallSummary:
        try:
            from edb.cpk.v1 import decrypt_payload_v1
        except ImportError as exc:  # pragma: no cover - depends on the package library version
            raise TeeError("this build has no v1 payload decryption", code=E.LEGACY_UNSUPPORTED) from exc
        size = t.reader.span(t.reader.manifest_v1.payload.data).size
        if size > self.state.config.measured.max_model_bytes:
            raise TeeError("model larger than this TEE accepts", code=E.MODEL_TOO_LARGE)

        def fill(buf: SecureBuffer, progress: Callable[[int], None] | None) -> None:
            view, position = buf.view(), 0

            def sink(chunk: bytes | memoryview) -> None:
                nonlocal position
                view[position:position + len(chunk)] = chunk
                position += len(chunk)

            decrypt_payload_v1(t.reader, key, sink)

        return self._install(t, fill, size)

    def _install(self, t: Transaction, fill: Fill, size: int, *, stream_seal: bool = False) -> InstallSummary:
        with self._commit, ExitStack() as cleanup:
            started = time.monotonic()
            floor = self.floor(t.package_id)
            if floor is not None and t.security_version < floor:
                raise PackageError(f"security version {t.security_version} is below the floor {floor}",
                                   code=ROLLBACK)
            # what the commit will raise, recorded in the sealed header (edb_tee.integrity); the
            # commit lock keeps every other floor change out until then
            floors = {t.package_id: max(floor or 0, t.security_version)} if t.format == FORMAT_V2 else {}
            buf = SecureBuffer(size)
            writer: ObjectWriter | None = None
            try:
                if stream_seal:
                    writer = cleanup.enter_context(
                        self.state.storage.writer(INSTALLER_TA, model_object(t.name), size, floors=floors))
                    _fill_and_seal(buf, fill, writer)
                else:
                    fill(buf, None)
                converted = _to_layout(buf)
                if converted is not buf:
                    writer = None  # what was sealed is not what will serve; sealed again below
                buf = converted
            except BaseException:
                buf.close()
                raise
            decrypted = time.monotonic()
            # validate with ONNX Runtime in the mode a default load_model will use, and keep it warm
            prepack = choose_prepack(None, buf.size, self.state.config.measured.prepack_max_bytes)
            model = self.models.make(t.name, t.version, t.package_id, buf, prepack=prepack)
            try:
                return self._seal(t, model, writer, floors, started, decrypted)
            except BaseException:
                model.close()
                raise

    def _seal(self, t: Transaction, model: LoadedModel, writer: ObjectWriter | None, floors: dict[str, int],
              started: float, decrypted: float) -> InstallSummary:
        previous = self.state.rpmb.read().installed.get(t.name)
        record = {"packageId": t.package_id, "version": t.version, "securityVersion": t.security_version,
                  "size": model.buffer.size, "sha256": t.sha256, "payloadSha256": t.payload_sha256,
                  "mediaType": t.media_type, "format": t.format,
                  "installedAt": self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")}
        key = f"{INSTALLER_TA}/{model_object(t.name)}"
        after: dict[str, int] = {}

        def commit(state: RpmbState) -> None:
            state.installed[t.name] = {**record, "gen": state.objects[key]["gen"]}
            if t.format == FORMAT_V2:
                state.floors[t.package_id] = max(state.floors.get(t.package_id, 0), t.security_version)
            after["floor"] = state.floors.get(t.package_id, 0)

        if writer is not None:  # already sealed while it was decrypted: only the commit is left
            writer.commit(also=commit)
            if model.buffer.size >= REMOVE_IN_BACKGROUND_BYTES:
                # Deleting a superseded 100 MB file takes ~20 ms: not on the way to the answer.
                threading.Thread(target=writer.remove_previous, name="edb-tee-remove-old", daemon=True).start()
            else:
                writer.remove_previous()
        else:
            self.state.storage.write(INSTALLER_TA, model_object(t.name), model.buffer.view(), also=commit,
                                     floors=floors)
        self.models.keep_warm(model)
        done = time.monotonic()
        log.info("installed %s: %s %s (svn %d) in %.0f ms (decrypt%s %.0f ms, validate and commit %.0f ms)", t.name,
                 t.package_id, t.version, t.security_version, (done - started) * 1000,
                 " and seal" if writer is not None else "", (decrypted - started) * 1000, (done - decrypted) * 1000)
        return InstallSummary(_record_to_package(t.name, record), after["floor"],
                              previous["version"] if previous else None)

    def uninstall(self, name: str) -> None:
        with self._commit:
            self.record(name)

            def drop(state: RpmbState) -> None:
                state.installed.pop(name, None)  # the floor stays: uninstalling never allows a rollback

            self.state.storage.delete(INSTALLER_TA, model_object(name), also=drop)
        self.models.drop_warm(name)
        log.info("uninstalled %s", name)


def _fill_and_seal(buf: SecureBuffer, fill: Fill, writer: ObjectWriter) -> None:
    """Run ``fill`` on this thread and seal behind it on another, as far as the plaintext is ready.

    The sealing thread only ever reads bytes ``fill`` has finished (the progress watermark). On
    any error both stop and the caller discards the buffer and the unfinished sealed file."""
    ready = 0
    finished = False
    failure: list[BaseException] = []
    changed = threading.Condition()

    def progress(n: int) -> None:
        nonlocal ready
        with changed:
            ready += n
            changed.notify()

    def seal_behind() -> None:
        view = buf.view()
        try:
            sealed_upto = 0
            while True:
                with changed:
                    while ready == sealed_upto and not finished:
                        changed.wait()
                    upto, last = ready, finished
                writer.advance(view, upto)
                sealed_upto = upto
                if last:
                    return
        except BaseException as exc:  # reported to the calling thread below
            failure.append(exc)
        finally:
            view.release()

    sealer = threading.Thread(target=seal_behind, name="edb-tee-seal", daemon=True)
    sealer.start()
    try:
        fill(buf, progress)
    finally:
        with changed:
            finished = True
            changed.notify()
        sealer.join()
    if failure:
        raise failure[0]


def _to_layout(buf: SecureBuffer) -> SecureBuffer:
    """Plain ONNX -> the aligned layout, inside the TEE (transiently two copies of the weights)."""
    view = buf.view()
    if onnx_layout.is_layout(view):
        return buf
    plan = onnx_layout.plan(view)
    out = SecureBuffer(plan.total_size)
    try:
        onnx_layout.write_into(plan, view, out.view())
    except BaseException:
        out.close()
        raise
    del view
    buf.close()
    return out


def check_name_binding(name: str, signed_id: str) -> None:
    """The name a model is installed (and so served) under is the package's signed id: whoever
    holds the installer role may install any authentic package, but only under its own name, so a
    compromised installer cannot make the runner serve another authentic model under a served name.
    Pure: the caller passes the id from an authenticated manifest (v1: its cp-id in lower case)."""
    if name != signed_id:
        raise TeeError(f"the package is signed as {signed_id[:64]!r}; it installs only under that name, "
                       f"not {name[:64]!r}", code=E.NAME_MISMATCH)


def _record_to_package(name: str, r: dict[str, Any]) -> InstalledPackage:
    return InstalledPackage(name, r["packageId"], r["version"], r["securityVersion"], r["sha256"],
                            r.get("payloadSha256", ""), r.get("mediaType", ""), r.get("format", FORMAT_V2),
                            r.get("installedAt", ""))
