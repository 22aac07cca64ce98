"""The hub's durable state: one SQLite file (WAL) under the hub's state directory.

Tables: identities, twins, configurations, device deployments, MQTT sessions (subscriptions
survive a hub restart: the device SDK connects with clean_session=False and never re-subscribes,
so a hub that forgot them would leave reconnected clients deaf), the store-and-forward queue of
module inputs, and the upstream log (what IoT Hub received; read by `edb monitor`).

Writes are grouped: they open a transaction that commits once per event-loop turn; callbacks
registered with :meth:`after_commit` (PUBACKs of stored messages) run after that commit, so an
acknowledged message is on disk (WAL, synchronous=NORMAL: durable across a process crash).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    device_id TEXT NOT NULL, module_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS twins (
    device_id TEXT NOT NULL, module_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (device_id, module_id));
CREATE TABLE IF NOT EXISTS configurations (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deployments (device_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT NOT NULL, topic_filter TEXT NOT NULL, qos INTEGER NOT NULL,
    PRIMARY KEY (client_id, topic_filter));
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, module_id TEXT NOT NULL,
    input TEXT NOT NULL, priority INTEGER NOT NULL, expires REAL NOT NULL,
    body BLOB NOT NULL, props TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS pending_target ON pending (device_id, module_id);
CREATE TABLE IF NOT EXISTS upstream (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, enqueued REAL NOT NULL, device_id TEXT NOT NULL,
    module_id TEXT, body BLOB NOT NULL, props TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class PendingRow:
    seq: int
    device_id: str
    module_id: str
    input: str
    priority: int
    expires: float
    body: bytes
    props: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    seq: int
    enqueued: float
    device_id: str
    module_id: str | None
    body: bytes
    props: dict[str, Any]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._in_tx = False
        self._callbacks: list[Callable[[], None]] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Group commits on this loop; without one every write commits at once."""
        self._loop = loop

    # -- transactions ----------------------------------------------------------------------

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True
        cursor = self._db.execute(sql, params)
        self._schedule()
        return cursor

    def _schedule(self) -> None:
        if self._loop is None:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        if self._in_tx:
            self._callbacks.append(callback)
        else:
            callback()

    def close(self) -> None:
        self.flush()
        self._db.close()

    # -- documents ---------------------------------------------------------------------------

    def put_identity(self, device_id: str, module_id: str | None, doc: dict[str, Any]) -> None:
        self._execute("INSERT OR REPLACE INTO identities VALUES (?, ?, ?)", (device_id, module_id or "", _dumps(doc)))

    def delete_identity(self, device_id: str, module_id: str | None) -> None:
        self._execute("DELETE FROM identities WHERE device_id = ? AND module_id = ?", (device_id, module_id or ""))

    def identities(self) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
        for device_id, module_id, doc in self._db.execute("SELECT device_id, module_id, doc FROM identities"):
            yield device_id, module_id or None, json.loads(doc)

    def put_twin(self, device_id: str, module_id: str | None, doc: dict[str, Any]) -> None:
        self._execute("INSERT OR REPLACE INTO twins VALUES (?, ?, ?)", (device_id, module_id or "", _dumps(doc)))

    def delete_twin(self, device_id: str, module_id: str | None) -> None:
        self._execute("DELETE FROM twins WHERE device_id = ? AND module_id = ?", (device_id, module_id or ""))

    def twins(self) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
        for device_id, module_id, doc in self._db.execute("SELECT device_id, module_id, doc FROM twins"):
            yield device_id, module_id or None, json.loads(doc)

    def put_configuration(self, config_id: str, doc: dict[str, Any]) -> None:
        self._execute("INSERT OR REPLACE INTO configurations VALUES (?, ?)", (config_id, _dumps(doc)))

    def delete_configuration(self, config_id: str) -> None:
        self._execute("DELETE FROM configurations WHERE id = ?", (config_id,))

    def configurations(self) -> Iterator[dict[str, Any]]:
        for (doc,) in self._db.execute("SELECT doc FROM configurations"):
            yield json.loads(doc)

    def put_deployment(self, device_id: str, doc: dict[str, Any] | None) -> None:
        if doc is None:
            self._execute("DELETE FROM deployments WHERE device_id = ?", (device_id,))
        else:
            self._execute("INSERT OR REPLACE INTO deployments VALUES (?, ?)", (device_id, _dumps(doc)))

    def deployments(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for device_id, doc in self._db.execute("SELECT device_id, doc FROM deployments"):
            yield device_id, json.loads(doc)

    # -- MQTT sessions -----------------------------------------------------------------------

    def session(self, client_id: str) -> dict[str, int]:
        rows = self._db.execute("SELECT topic_filter, qos FROM sessions WHERE client_id = ?", (client_id,))
        return {topic_filter: qos for topic_filter, qos in rows}

    def has_session(self, client_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM sessions WHERE client_id = ? LIMIT 1", (client_id,)).fetchone()
        return row is not None

    def subscribe(self, client_id: str, topic_filter: str, qos: int) -> None:
        self._execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)", (client_id, topic_filter, qos))

    def unsubscribe(self, client_id: str, topic_filter: str) -> None:
        self._execute("DELETE FROM sessions WHERE client_id = ? AND topic_filter = ?", (client_id, topic_filter))

    def clear_session(self, client_id: str) -> None:
        self._execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))

    # -- store and forward -------------------------------------------------------------------

    def add_pending(self, device_id: str, module_id: str, input_name: str, priority: int, expires: float,
                    body: bytes, props: dict[str, Any]) -> int:
        cursor = self._execute(
            "INSERT INTO pending (device_id, module_id, input, priority, expires, body, props) VALUES (?,?,?,?,?,?,?)",
            (device_id, module_id, input_name, priority, expires, body, _dumps(props)))
        return int(cursor.lastrowid or 0)

    def delete_pending(self, seq: int) -> None:
        self._execute("DELETE FROM pending WHERE seq = ?", (seq,))

    def pending(self) -> Iterator[PendingRow]:
        for row in self._db.execute(
                "SELECT seq, device_id, module_id, input, priority, expires, body, props FROM pending ORDER BY seq"):
            yield PendingRow(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), json.loads(row[7]))

    def delete_pending_for(self, device_id: str, module_id: str | None = None) -> None:
        if module_id is None:
            self._execute("DELETE FROM pending WHERE device_id = ?", (device_id,))
        else:
            self._execute("DELETE FROM pending WHERE device_id = ? AND module_id = ?", (device_id, module_id))

    # -- upstream log ------------------------------------------------------------------------

    def add_upstream(self, device_id: str, module_id: str | None, body: bytes, props: dict[str, Any],
                     enqueued: float | None = None) -> int:
        cursor = self._execute(
            "INSERT INTO upstream (enqueued, device_id, module_id, body, props) VALUES (?,?,?,?,?)",
            (time.time() if enqueued is None else enqueued, device_id, module_id, body, _dumps(props)))
        return int(cursor.lastrowid or 0)

    def upstream_since(self, since: int, limit: int) -> list[UpstreamRow]:
        rows = self._db.execute(
            "SELECT seq, enqueued, device_id, module_id, body, props FROM upstream WHERE seq > ? ORDER BY seq LIMIT ?",
            (since, limit))
        return [UpstreamRow(r[0], r[1], r[2], r[3], bytes(r[4]), json.loads(r[5])) for r in rows]

    def upstream_seq_before(self, enqueued: float, *, inclusive: bool = False) -> int:
        """The last sequence number enqueued at or before ``enqueued`` (before it when ``inclusive``:
        a reader starting after the result then sees messages enqueued at that instant too)."""
        op = "<" if inclusive else "<="
        row = self._db.execute(f"SELECT MAX(seq) FROM upstream WHERE enqueued {op} ?", (enqueued,)).fetchone()  # noqa: S608
        return int(row[0] or 0)

    def upstream_by_device(self) -> list[tuple[str, int, int, float]]:
        """(device id, first seq, last seq, last enqueued) per device: partition properties."""
        rows = self._db.execute(
            "SELECT device_id, MIN(seq), MAX(seq), MAX(enqueued) FROM upstream GROUP BY device_id")
        return [(r[0], int(r[1]), int(r[2]), float(r[3])) for r in rows]

    def upstream_last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM upstream").fetchone()
        return int(row[0] or 0)

    def trim_upstream(self, keep: int) -> None:
        self._execute("DELETE FROM upstream WHERE seq <= (SELECT MAX(seq) FROM upstream) - ?", (keep,))
