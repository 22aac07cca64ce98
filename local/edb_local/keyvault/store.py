"""SQLite persistence for keys, secrets, soft-deleted names and registered clients.

Keys and secrets share one table (``kind`` = key | secret): every version is a row; the newest
version of a name is the one with the highest ``seq``. Private keys and secret values are stored
sealed (:mod:`edb_local.keyvault.at_rest`); everything else is plain JSON columns so an operator can
inspect the database. Soft delete keeps all versions and records the deletion in ``deleted``. Names are case-insensitive
as in Azure (every lookup is ``COLLATE NOCASE``; a name keeps the spelling it was created with).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edb_local.keyvault.at_rest import Sealer
from edb_local.keyvault.errors import (
    deleted_conflict,
    deleted_not_found,
    key_not_found,
    secret_not_found,
)

DB_FILE = "vault.sqlite3"
RETENTION_DAYS = 90

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,
    meta TEXT NOT NULL, sealed BLOB NOT NULL, enabled INTEGER NOT NULL, nbf INTEGER, exp INTEGER,
    created INTEGER NOT NULL, updated INTEGER NOT NULL, tags TEXT,
    PRIMARY KEY (kind, name, version)
);
CREATE INDEX IF NOT EXISTS objects_by_name ON objects (kind, name, seq);
CREATE TABLE IF NOT EXISTS deleted (
    kind TEXT NOT NULL, name TEXT NOT NULL, deleted_date INTEGER NOT NULL, purge_date INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL, role TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class VaultObject:
    kind: str
    name: str
    version: str
    seq: int
    meta: dict[str, Any]
    sealed: bytes = field(repr=False)
    enabled: bool
    nbf: int | None
    exp: int | None
    created: int
    updated: int
    tags: dict[str, str] | None

    @property
    def label(self) -> str:
        """Associated data binding the sealed blob to this row."""
        return f"{self.kind}|{self.name}|{self.version}"


@dataclass(frozen=True)
class Deletion:
    kind: str
    name: str
    deleted_date: int
    purge_date: int


def _not_found(kind: str, name: str) -> Exception:
    return key_not_found(name) if kind == "key" else secret_not_found(name)


class VaultStore:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / DB_FILE
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.sealer = Sealer.load_or_create(state_dir)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- objects ---------------------------------------------------------------------------------

    def _row(self, row: tuple[Any, ...]) -> VaultObject:
        kind, name, version, seq, meta, sealed, enabled, nbf, exp, created, updated, tags = row
        return VaultObject(kind, name, version, seq, json.loads(meta), bytes(sealed), bool(enabled), nbf, exp,
                           created, updated, json.loads(tags) if tags else None)

    def _is_deleted(self, kind: str, name: str) -> bool:
        cur = self._db.execute("SELECT 1 FROM deleted WHERE kind=? AND name=? COLLATE NOCASE", (kind, name))
        return cur.fetchone() is not None

    def _stored_name(self, kind: str, name: str) -> str:
        """The name as first created: Key Vault names are case-insensitive and keep their first spelling."""
        row = self._db.execute("SELECT name FROM objects WHERE kind=? AND name=? COLLATE NOCASE LIMIT 1",
                               (kind, name)).fetchone()
        return str(row[0]) if row else name

    def add_version(self, kind: str, name: str, meta: dict[str, Any], plaintext: bytes, *, enabled: bool,
                    nbf: int | None, exp: int | None, tags: dict[str, str] | None) -> VaultObject:
        now = int(time.time())
        with self._lock:
            if self._is_deleted(kind, name):
                raise deleted_conflict(kind, name)
            cur = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM objects WHERE kind=? AND name=? COLLATE NOCASE", (kind, name))
            seq = int(cur.fetchone()[0]) + 1
            name = self._stored_name(kind, name)
            version = uuid.uuid4().hex
            obj = VaultObject(kind, name, version, seq, meta, b"", enabled, nbf, exp, now, now, tags)
            obj = replace(obj, sealed=self.sealer.seal(plaintext, obj.label))
            self._db.execute(
                "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (kind, name, version, seq, json.dumps(meta), obj.sealed, int(enabled), nbf, exp, now, now,
                 json.dumps(tags) if tags is not None else None),
            )
        return obj

    def get(self, kind: str, name: str, version: str | None = None) -> VaultObject:
        with self._lock:
            if self._is_deleted(kind, name):
                raise _not_found(kind, name)
            if version:
                cur = self._db.execute("SELECT * FROM objects WHERE kind=? AND name=? COLLATE NOCASE AND version=?",
                                       (kind, name, version))
            else:
                cur = self._db.execute(
                    "SELECT * FROM objects WHERE kind=? AND name=? COLLATE NOCASE ORDER BY seq DESC LIMIT 1",
                    (kind, name))
            row = cur.fetchone()
        if row is None:
            raise _not_found(kind, name)
        return self._row(row)

    def versions(self, kind: str, name: str) -> list[VaultObject]:
        with self._lock:
            if self._is_deleted(kind, name):
                raise _not_found(kind, name)
            rows = self._db.execute("SELECT * FROM objects WHERE kind=? AND name=? COLLATE NOCASE ORDER BY seq",
                                    (kind, name)).fetchall()
        if not rows:
            raise _not_found(kind, name)
        return [self._row(r) for r in rows]

    def latest_of_each(self, kind: str) -> list[VaultObject]:
        with self._lock:
            rows = self._db.execute(
                "SELECT o.* FROM objects o JOIN (SELECT name, MAX(seq) AS seq FROM objects WHERE kind=? "
                "GROUP BY name) m ON o.name = m.name AND o.seq = m.seq WHERE o.kind=? AND o.name NOT IN "
                "(SELECT name FROM deleted WHERE kind=?) ORDER BY o.name",
                (kind, kind, kind),
            ).fetchall()
        return [self._row(r) for r in rows]

    def update(self, obj: VaultObject, *, meta: dict[str, Any] | None = None, enabled: bool | None = None,
               nbf: int | None = None, exp: int | None = None, tags: dict[str, str] | None = None) -> VaultObject:
        new = replace(
            obj,
            meta=meta if meta is not None else obj.meta,
            enabled=enabled if enabled is not None else obj.enabled,
            nbf=nbf if nbf is not None else obj.nbf,
            exp=exp if exp is not None else obj.exp,
            tags=tags if tags is not None else obj.tags,
            updated=int(time.time()),
        )
        with self._lock:
            self._db.execute(
                "UPDATE objects SET meta=?, enabled=?, nbf=?, exp=?, tags=?, updated=? "
                "WHERE kind=? AND name=? COLLATE NOCASE AND version=?",
                (json.dumps(new.meta), int(new.enabled), new.nbf, new.exp,
                 json.dumps(new.tags) if new.tags is not None else None, new.updated, obj.kind, obj.name,
                 obj.version),
            )
        return new

    def open(self, obj: VaultObject) -> bytes:
        return self.sealer.open(obj.sealed, obj.label)

    # -- soft delete -----------------------------------------------------------------------------

    def delete(self, kind: str, name: str) -> tuple[Deletion, VaultObject]:
        latest = self.get(kind, name)
        now = int(time.time())
        deletion = Deletion(kind, latest.name, now, now + RETENTION_DAYS * 86400)
        with self._lock:
            self._db.execute("INSERT INTO deleted VALUES (?,?,?,?)", (kind, latest.name, now, deletion.purge_date))
        return deletion, latest

    def get_deleted(self, kind: str, name: str) -> tuple[Deletion, VaultObject]:
        with self._lock:
            row = self._db.execute("SELECT * FROM deleted WHERE kind=? AND name=? COLLATE NOCASE",
                                   (kind, name)).fetchone()
            latest = self._db.execute(
                "SELECT * FROM objects WHERE kind=? AND name=? COLLATE NOCASE ORDER BY seq DESC LIMIT 1",
                (kind, name)).fetchone()
        if row is None or latest is None:
            raise deleted_not_found(kind, name)
        return Deletion(*row), self._row(latest)

    def list_deleted(self, kind: str) -> list[tuple[Deletion, VaultObject]]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM deleted WHERE kind=? ORDER BY name", (kind,))]
        return [self.get_deleted(kind, n) for n in names]

    def purge(self, kind: str, name: str) -> None:
        self.get_deleted(kind, name)
        with self._lock:
            self._db.execute("DELETE FROM objects WHERE kind=? AND name=? COLLATE NOCASE", (kind, name))
            self._db.execute("DELETE FROM deleted WHERE kind=? AND name=? COLLATE NOCASE", (kind, name))

    def recover(self, kind: str, name: str) -> VaultObject:
        self.get_deleted(kind, name)
        with self._lock:
            self._db.execute("DELETE FROM deleted WHERE kind=? AND name=? COLLATE NOCASE", (kind, name))
        return self.get(kind, name)

    # -- clients ---------------------------------------------------------------------------------

    def put_client(self, client_id: str, secret_sha256: str, role: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO clients VALUES (?,?,?)", (client_id, secret_sha256, role))

    def get_client(self, client_id: str) -> tuple[str, str] | None:
        with self._lock:
            row = self._db.execute("SELECT secret_sha256, role FROM clients WHERE client_id=?",
                                   (client_id,)).fetchone()
        return (str(row[0]), str(row[1])) if row else None
