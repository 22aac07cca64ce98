"""Start-up integrity check: is the replay-protected store at least as new as the sealed objects?

The simulated RPMB record (:mod:`edb_tee.rpmb`) is a file, so it can be replaced by an older
authentic copy while the service is stopped. A simulation cannot stop a whole-state rollback (the
record and every sealed file restored together), but it can catch a partial one: every sealed
object's authenticated header carries ``ctr``, the store's write counter that the object's commit
produces (the counter when its writer was made, plus one: a lower bound), and ``floors``, the
rollback floors that commit raises (:mod:`edb_tee.sealed`). When the service starts,
:func:`check_state` compares those headers with the record:

- a header with ``ctr >= counter + 2`` was written when the store was already past ``counter``:
  the record is older than that object, ``TEE_STATE_ROLLED_BACK``;
- a header with ``ctr == counter + 1`` belongs to a write whose commit the record does not have:
  either the service stopped between sealing and committing (a crash), or the record was replayed
  by exactly that one commit. A crash leaves a file of one precise shape: in its own slot, the next
  generation of its object, and the object's current generation (if any) still in place (the
  previous generation is deleted only after a commit). Any other shape cannot come from a crash:
  ``TEE_STATE_ROLLED_BACK``. The crash shape is kept as *uncommitted*: the caller removes it;
- every floor is at least what any authentic sealed file proves: ``max(record floor, header
  floors)``. Committed objects never prove more than the record holds (history is linear, floors
  only rise), so this raises a floor only from an uncommitted object: after a crash it raises the
  floor of a package that was verified, decrypted and validated on this device but not recorded
  (the next install of that version still succeeds); after a one-commit replay it restores the
  floor the replay removed. The two cannot be told apart, and the safe side is the higher floor.

What this does not catch (no file-based check can): the record replayed *and* every sealed file
written after it deleted (or restored to its older copy): that is a whole-state rollback. Files
that do not authenticate (edited, another device's, unfinished temporary files) prove nothing here;
reads of a current object still refuse them with their own codes.

Pure: the caller scans the files (``SecureStorage.scan``) and applies the verdict.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from edb.errors import TeeError
from edb.tee.errors import STATE_ROLLED_BACK
from edb_tee.rpmb import RpmbState
from edb_tee.sealed import SealedHeader


def object_slot(name: str) -> str:
    """The file-name stem of a sealed object's slot (the name itself never appears on disk)."""
    return hashlib.sha256(name.encode()).hexdigest()[:32]


def object_key(ta: uuid.UUID, name: str) -> str:
    """How the replay-protected store names an object."""
    return f"{ta}/{name}"


@dataclass(frozen=True)
class SealedFile:
    """What the start-up scan read of one sealed-object file."""

    path: str
    ta: uuid.UUID  # from its directory
    slot: str  # from its file name
    gen: int  # from its file name
    header: SealedHeader | None  # None: it did not authenticate, so it proves nothing
    header_sha256: str = ""

    @property
    def in_place(self) -> bool:
        """The file sits where its own header says it belongs (not moved or renamed)."""
        h = self.header
        return h is not None and h.ta == self.ta and object_slot(h.name) == self.slot and h.gen == self.gen


@dataclass(frozen=True)
class Verdict:
    raise_floors: dict[str, int] = field(default_factory=dict)  # package id -> floor the record must rise to
    uncommitted: tuple[str, ...] = ()  # files of a write whose commit the record lacks (remove them)
    unaccounted: tuple[str, ...] = ()  # listed objects whose current file is absent or not the recorded one


def _rolled_back(why: str) -> TeeError:
    return TeeError(f"the replay-protected store is older than the sealed objects ({why}); refusing to serve",
                    code=STATE_ROLLED_BACK)


def check_state(store: RpmbState, files: Iterable[SealedFile]) -> Verdict:
    """Decide whether ``store`` may be served with the sealed ``files`` beside it (see the module
    docstring). Raises ``TEE_STATE_ROLLED_BACK``; otherwise says which floors to raise and which
    files are an uncommitted write."""
    scanned = list(files)
    counter = store.counter
    current_ok = {object_key(f.header.ta, f.header.name) for f in scanned
                  if f.header is not None and f.in_place and _is_current(store, f)}
    uncommitted: list[str] = []
    for f in scanned:
        h = f.header
        if h is None:
            continue
        if h.ctr >= counter + 2:
            raise _rolled_back(f"an object was written at write counter {h.ctr - 1}, the store is at {counter}")
        if h.ctr == counter + 1:
            key = object_key(h.ta, h.name)
            record = store.objects.get(key)
            after_crash = f.in_place and (
                (record is None and h.gen == 1)
                or (record is not None and int(record["gen"]) == h.gen - 1 and key in current_ok))
            if not after_crash:
                raise _rolled_back("an object's commit is missing and its previous generation is gone")
            uncommitted.append(f.path)
    raise_floors: dict[str, int] = {}
    for f in scanned:
        if f.header is None:
            continue
        for package_id, floor in f.header.floors:
            if floor > max(store.floors.get(package_id, 0), raise_floors.get(package_id, 0)):
                raise_floors[package_id] = floor
    unaccounted = tuple(sorted(set(store.objects) - current_ok))
    return Verdict(raise_floors, tuple(uncommitted), unaccounted)


def _is_current(store: RpmbState, f: SealedFile) -> bool:
    assert f.header is not None
    record = store.objects.get(object_key(f.header.ta, f.header.name))
    return record is not None and int(record["gen"]) == f.header.gen and record["hdr"] == f.header_sha256
