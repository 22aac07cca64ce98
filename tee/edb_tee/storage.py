"""Secure storage: sealed objects per trusted app, with their generations in the replay-protected store.

Each write makes a new generation in a new file (``objects/<ta>/<h(name)>.<gen>.sobj``), then
commits ``{gen, header hash}`` (and any other state change, such as a rollback floor) to the RPMB
store in one authenticated write, then removes older generations. A crash at any point leaves
either the old or the new object current, never a mix. Reads check, in this order: the header and
key authenticate (``TEE_SEALED_TAMPERED``), the object is the one asked for
(``TEE_SEALED_NAME_MISMATCH``: swapped with another), and it is the current generation
(``TEE_SEALED_ROLLBACK``: an older copy put back).

Large objects can be sealed while their plaintext is still being produced (:meth:`SecureStorage.
writer`): each sealed chunk is written as soon as its plaintext exists and its write-back to the
disk is started at once, so the fsync before the commit finds little left to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from edb.errors import TeeError
from edb.tee.errors import SEALED_MISSING, SEALED_ROLLBACK
from edb_tee import sealed
from edb_tee.hardening import SecureBuffer
from edb_tee.integrity import SealedFile, object_key, object_slot
from edb_tee.keys import KeyHierarchy
from edb_tee.paths import fsync_dir
from edb_tee.rpmb import ReplayProtectedStore, RpmbState

log = logging.getLogger("edb_tee.storage")
Mutation = Callable[[RpmbState], None]

#: Start the disk write-back of sealed bytes every this many bytes (posix_fadvise DONTNEED starts
#: it without waiting, unlike fsync), so writing overlaps with whatever produces the plaintext.
WRITEBACK_STEP = 8 * 1024 * 1024

_OBJECT_FILE = re.compile(r"^([0-9a-f]{32})\.([0-9]+)\.sobj$")
_key = object_key


class SecureStorage:
    def __init__(self, objects_dir: Path, keys: KeyHierarchy, rpmb: ReplayProtectedStore) -> None:
        self.dir = objects_dir
        self.keys = keys
        self.rpmb = rpmb

    def _path(self, ta: uuid.UUID, name: str, gen: int) -> Path:
        return self.dir / str(ta) / f"{object_slot(name)}.{gen}.sobj"

    def generation(self, ta: uuid.UUID, name: str) -> int | None:
        rec = self.rpmb.read().objects.get(_key(ta, name))
        return None if rec is None else int(rec["gen"])

    # -- write -------------------------------------------------------------------------------

    def write(self, ta: uuid.UUID, name: str, data: memoryview | bytes, also: Mutation | None = None,
              *, floors: Mapping[str, int] | None = None) -> int:
        """Seal ``data`` as the next generation of (ta, name) and commit it together with ``also``
        (``floors``: the rollback floors that ``also`` raises, recorded in the sealed header)."""
        src = memoryview(data).cast("B")
        with self.writer(ta, name, len(src), floors=floors) as writer:
            writer.advance(src, len(src))
            gen = writer.commit(also)
        writer.remove_previous()
        return gen

    def writer(self, ta: uuid.UUID, name: str, size: int, *,
               floors: Mapping[str, int] | None = None) -> ObjectWriter:
        """Seal ``size`` bytes as the next generation of (ta, name), piece by piece (see :class:`ObjectWriter`).

        The header records the store's write counter this object's commit will produce (the
        current one plus one; a lower bound if another commit comes first) and ``floors``, the
        rollback floors that commit raises: what the object proves at start-up
        (:mod:`edb_tee.integrity`). The caller serialises writers of one object (the install lock
        does for models)."""
        current = self.generation(ta, name)
        return ObjectWriter(self, ta, name, (current or 0) + 1, current, size,
                            ctr=self.rpmb.counter + 1, floors=floors)

    def delete(self, ta: uuid.UUID, name: str, also: Mutation | None = None) -> None:
        current = self.generation(ta, name)

        def mutate(state: RpmbState) -> None:
            state.objects.pop(_key(ta, name), None)
            if also is not None:
                also(state)

        self.rpmb.commit(mutate)
        if current is not None:
            self._path(ta, name, current).unlink(missing_ok=True)

    def _commit_object(self, ta: uuid.UUID, name: str, gen: int, header_sha: str, also: Mutation | None) -> None:
        def mutate(state: RpmbState) -> None:
            state.objects[_key(ta, name)] = {"gen": gen, "hdr": header_sha}
            if also is not None:
                also(state)

        self.rpmb.commit(mutate)

    # -- read --------------------------------------------------------------------------------

    def _open(self, ta: uuid.UUID, name: str) -> tuple[sealed.OpenedObject, Path]:
        rec = self.rpmb.read().objects.get(_key(ta, name))
        if rec is None:
            raise TeeError(f"no sealed object {name!r}", code=SEALED_MISSING)
        path = self._path(ta, name, int(rec["gen"]))
        return self._opened(path, ta, name, rec), path

    def _opened(self, path: Path, ta: uuid.UUID, name: str, rec: dict[str, object]) -> sealed.OpenedObject:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the caller through read()/read_into()
        except FileNotFoundError as exc:
            raise TeeError(f"sealed object {name!r} is missing from storage", code=SEALED_MISSING) from exc
        with fh:
            opened = sealed.open_sealed(fh, self.keys.tsk(ta), ta, name)
        if opened.header.gen != rec["gen"] or opened.header_sha256 != rec["hdr"]:
            raise TeeError(f"sealed object {name!r} is not the current generation (an older copy?)",
                           code=SEALED_ROLLBACK)
        return opened

    def read(self, ta: uuid.UUID, name: str) -> bytes:
        """A small object as bytes (keys, identity). Large ones: :meth:`read_into`."""
        buf = self.read_into(ta, name)
        try:
            return bytes(buf.view())
        finally:
            buf.close()

    def read_into(self, ta: uuid.UUID, name: str) -> SecureBuffer:
        """Unseal into a fresh :class:`SecureBuffer` (decrypted in place, no other plaintext copy)."""
        opened, path = self._open(ta, name)
        buf = SecureBuffer(opened.header.size)
        try:
            with open(path, "rb") as fh:
                sealed.unseal_into(fh, opened, buf.view())
        except BaseException:
            buf.close()
            raise
        return buf

    # -- housekeeping ------------------------------------------------------------------------

    def scan(self) -> list[SealedFile]:
        """Every sealed-object file with its authenticated header (``None`` if it does not
        authenticate under its directory's trusted-app key): the input of the start-up integrity
        check. Reads only headers; temporary files of unfinished writes are not listed."""
        found: list[SealedFile] = []
        if not self.dir.exists():
            return found
        for ta_dir in sorted(self.dir.iterdir()):
            try:
                ta = uuid.UUID(ta_dir.name)
            except ValueError:
                continue
            if not ta_dir.is_dir():
                continue
            tsk = self.keys.tsk(ta)
            for f in sorted(ta_dir.iterdir()):
                m = _OBJECT_FILE.fullmatch(f.name)
                if m is None or not f.is_file():
                    continue
                try:
                    with open(f, "rb") as fh:
                        opened = sealed.open_header(fh, tsk)
                except (OSError, TeeError):
                    found.append(SealedFile(str(f), ta, m[1], int(m[2]), None))
                    continue
                found.append(SealedFile(str(f), ta, m[1], int(m[2]), opened.header, opened.header_sha256))
        return found

    def sweep(self) -> int:
        """Remove files of no current generation (left by a crash between write and commit)."""
        current = {self._path(uuid.UUID(k.split("/", 1)[0]), k.split("/", 1)[1], int(v["gen"]))
                   for k, v in self.rpmb.read().objects.items()}
        removed = 0
        if not self.dir.exists():
            return 0
        for f in self.dir.glob("*/*"):
            if f.is_file() and f not in current:
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed += 1
        if removed:
            log.info("removed %d stale sealed-object files", removed)
        return removed


class ObjectWriter:
    """One sealed object being written: a temporary file until :meth:`commit` makes it current.

    ``advance(src, available)`` seals what the first ``available`` bytes of the plaintext buffer
    ``src`` allow (call it as the buffer fills, from one thread); ``commit(also)`` checks the object
    is complete, fsyncs it, renames it into place and commits {generation, header hash} together
    with ``also`` in one replay-protected write. ``remove_previous()`` then deletes the superseded
    generation's file (tens of milliseconds for a large model, so a caller may do it after
    answering: a file left by a crash in between is no current generation and the start-up sweep
    removes it). Leaving the ``with`` block without a commit (an error, a cancelled install)
    removes the temporary file: nothing changes."""

    def __init__(self, storage: SecureStorage, ta: uuid.UUID, name: str, gen: int, previous: int | None,
                 size: int, *, ctr: int = 0, floors: Mapping[str, int] | None = None) -> None:
        self._storage = storage
        self._ta, self._name, self._gen, self._previous = ta, name, gen, previous
        self.path = storage._path(ta, name, gen)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self._committed = False
        try:
            self._seal = sealed.SealWriter(self._fh, storage.keys.tsk(ta), ta, name, gen, size, ctr=ctr,
                                           floors=floors)
        except BaseException:
            self._discard()
            raise
        self._written = self._fh.tell()  # file offsets: the header and wrapped key come first
        self._kicked = 0  # bytes whose write-back has been started

    def advance(self, src: memoryview, available: int) -> None:
        self._written += self._seal.advance(src, available)
        if self._written - self._kicked >= WRITEBACK_STEP:
            self._fh.flush()
            os.posix_fadvise(self._fh.fileno(), self._kicked, self._written - self._kicked, os.POSIX_FADV_DONTNEED)
            self._kicked = self._written

    def commit(self, also: Mutation | None = None) -> int:
        if not self._seal.done:
            raise ValueError("sealed object is incomplete")
        storage = self._storage
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self.path)
            fsync_dir(self.path.parent)
            storage._commit_object(self._ta, self._name, self._gen, self._seal.header_sha256, also)
        except BaseException:
            if storage.generation(self._ta, self._name) != self._gen:
                self.path.unlink(missing_ok=True)
            raise
        self._committed = True
        return self._gen

    def remove_previous(self) -> None:
        if self._committed and self._previous is not None:
            self._storage._path(self._ta, self._name, self._previous).unlink(missing_ok=True)

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self._discard()
