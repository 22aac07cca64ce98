"""A simulated replay-protected memory block (RPMB): the rollback floors, the install registry and
the current generation of every sealed object, in one authenticated record with a write counter.

On eMMC/UFS hardware the write counter lives in the storage controller and only the holder of the
RPMB key can write, so an old image can never be replayed. Here the record is a file
(``<device>/tee/rpmb.json``) authenticated with HMAC-SHA256 under a key derived from the HUK:

- editing it is caught (``TEE_RPMB_TAMPERED``): nobody without the HUK can recompute the MAC;
- replacing it with an older copy *while the service runs* is caught (``TEE_RPMB_ROLLBACK``): the
  service keeps the counter in memory and checks the file against it before every write;
- replacing it with an older copy *while the service is stopped* is caught at start-up when a
  sealed object written after that copy is still there (its header carries the write counter:
  :mod:`edb_tee.integrity`, ``TEE_STATE_ROLLED_BACK``, or the floors restored from it);
- replacing the whole device directory (this record and the sealed objects together), or this
  record while deleting every object written after it, is NOT caught: a restarted process has
  nothing newer to compare with. That is exactly what RPMB hardware (or a TPM NV counter) adds.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edb.errors import TeeError
from edb.tee.errors import RPMB_ROLLBACK, RPMB_TAMPERED
from edb_tee.paths import write_private

MAX_RECORD_BYTES = 4 * 1024 * 1024  # real RPMB partitions hold 128 KiB - 16 MiB


@dataclass
class RpmbState:
    counter: int = 0
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # "<ta>/<name>" -> {gen, hdr}
    floors: dict[str, int] = field(default_factory=dict)  # package id -> minimum security version
    installed: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> install record

    def body(self) -> dict[str, Any]:
        return {"v": 1, "counter": self.counter, "objects": self.objects, "floors": self.floors,
                "installed": self.installed}


def _mac(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def encode_state(state: RpmbState, key: bytes) -> bytes:
    body = state.body()
    return json.dumps({"body": body, "mac": _mac(key, body)}, sort_keys=True).encode()


def decode_state(data: bytes, key: bytes) -> RpmbState:
    """Authenticate and parse; ``TEE_RPMB_TAMPERED`` on any mismatch. Pure."""
    try:
        outer = json.loads(data)
        body, mac = outer["body"], outer["mac"]
        if not isinstance(body, dict) or not isinstance(mac, str):
            raise ValueError("shape")
    except (ValueError, KeyError, TypeError) as exc:
        raise TeeError("replay-protected store is unreadable", code=RPMB_TAMPERED) from exc
    if not hmac.compare_digest(_mac(key, body), mac):
        raise TeeError("replay-protected store fails authentication", code=RPMB_TAMPERED)
    try:
        if body["v"] != 1:
            raise ValueError("version")
        counter = body["counter"]
        if not isinstance(counter, int) or counter < 0:
            raise ValueError("counter")
        return RpmbState(counter, dict(body["objects"]), dict(body["floors"]), dict(body["installed"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise TeeError("replay-protected store has an unexpected shape", code=RPMB_TAMPERED) from exc


class ReplayProtectedStore:
    """The service's authoritative copy is in memory; the file is checked before every write."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key
        self._lock = threading.RLock()
        self._state = self._read_file()

    @classmethod
    def create(cls, path: Path, key: bytes) -> ReplayProtectedStore:
        write_private(path, encode_state(RpmbState(), key))
        return cls(path, key)

    def _read_file(self) -> RpmbState:
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise TeeError(f"replay-protected store missing: {exc.strerror}", code=RPMB_TAMPERED) from exc
        if len(data) > MAX_RECORD_BYTES:
            raise TeeError("replay-protected store too large", code=RPMB_TAMPERED)
        return decode_state(data, self._key)

    def read(self) -> RpmbState:
        with self._lock:
            return copy.deepcopy(self._state)

    @property
    def counter(self) -> int:
        """The write counter of the last commit (no copy of the record)."""
        with self._lock:
            return self._state.counter

    def commit(self, mutate: Callable[[RpmbState], None]) -> RpmbState:
        """Apply ``mutate`` to a copy, bump the counter, write atomically, then adopt it."""
        with self._lock:
            on_disk = self._read_file()
            if on_disk.counter < self._state.counter:
                raise TeeError("replay-protected store was replaced by an older copy", code=RPMB_ROLLBACK)
            if on_disk.counter != self._state.counter or on_disk.body() != self._state.body():
                raise TeeError("replay-protected store changed behind the TEE", code=RPMB_TAMPERED)
            new = copy.deepcopy(self._state)
            mutate(new)
            new.counter = self._state.counter + 1
            data = encode_state(new, self._key)
            if len(data) > MAX_RECORD_BYTES:
                raise TeeError("replay-protected store would exceed its capacity", code=RPMB_TAMPERED)
            write_private(self.path, data)
            self._state = new
            return copy.deepcopy(new)
