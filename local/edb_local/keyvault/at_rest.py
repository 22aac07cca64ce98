"""Private keys and secret values at rest: AES-256-GCM under a master key file.

The master key is 32 random bytes in ``master.key`` (mode 0600) beside the SQLite database. Each
sealed blob is ``nonce(12) || ciphertext+tag`` with associated data naming what it is
(``key|<name>|<version>``), so a blob copied into another row fails to open.

What this protects against: the database file leaking on its own (a copied or backed-up
``vault.sqlite3``, a database attached to a bug report, rows swapped between keys). What it does
not: anyone who can read the whole state directory as the vault's user has the master key too.
A real Key Vault keeps keys in HSMs; this is a development stand-in.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.errors import LocalStackError

MASTER_KEY_FILE = "master.key"
_NONCE = 12


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise LocalStackError("Key Vault master key must be 32 bytes", code="LOCAL_KV_MASTER_KEY")
        self._aead = AESGCM(master_key)

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Sealer:
        path = state_dir / MASTER_KEY_FILE
        if not path.exists():
            write_private_file(path, secrets.token_bytes(32))
        if path.stat().st_mode & 0o077:
            raise LocalStackError(f"{path} must not be readable by group or others (chmod 600)",
                                  code="LOCAL_KV_MASTER_KEY")
        return cls(path.read_bytes())

    def seal(self, data: bytes, label: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, label.encode())

    def open(self, blob: bytes, label: str) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], label.encode())
        except (InvalidTag, ValueError) as exc:
            raise LocalStackError(f"sealed object {label!r} does not open with this master key",
                                  code="LOCAL_KV_SEALED") from exc
