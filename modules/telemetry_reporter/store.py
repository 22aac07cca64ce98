"""The reporter's durable state in one SQLite file: a journal of raw observations and an outbox.

Why both: an input message is journaled as soon as it arrives, and a metrics window is computed,
queued for upstream and removed from the journal in ONE transaction; an upstream message leaves
the outbox only after IoT Hub (edgeHub) acknowledged it. So a crash or restart at any point loses
nothing and counts nothing twice (the one gap is the SDK's own: it acknowledges an input message
to edgeHub before our handler runs, so a crash inside that handler can lose that one message).

Alerts go into the outbox with a higher priority than metrics, and are sent first. Input message
ids are remembered for a day, so a message edgeHub delivers twice is counted once.
When the outbox is full (long offline periods), the oldest *metrics* are dropped, never alerts, and
the drop is counted in the next window (``errors.REPORTER_OUTBOX_DROPPED``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edb.schemas import Alert, MessageType, application_properties, encode_json
from telemetry_reporter.metrics import Observation, aggregate

PRIORITY_ALERT = 10
PRIORITY_METRICS = 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
                                    kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT NULL,
                                   message_type TEXT NOT NULL, body BLOB NOT NULL, properties TEXT NOT NULL,
                                   created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, at REAL NOT NULL);
"""
#: How long a message id is remembered to drop edgeHub redeliveries (at-least-once delivery).
SEEN_TTL_S = 24 * 3600
#: How many "raise once" alert keys are remembered (the oldest are forgotten first).
MAX_ONCE_KEYS = 1000


@dataclass(frozen=True)
class OutboxItem:
    id: int
    message_type: str
    body: bytes
    properties: dict[str, str]


class ReporterStore:
    def __init__(self, path: Path, *, max_outbox: int = 50_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_outbox = max_outbox
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged alert must survive power loss
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- state -----------------------------------------------------------------------------------
    def _get(self, key: str, default: Any) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def _set(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def store_id(self) -> str:
        """A random id of this store, persisted: outbox message ids are ``<store id>-<row id>``, stable
        across restarts, so a message re-sent after a crash can be recognised upstream."""
        value = self._get("store_id", None)
        if value is None:
            import secrets

            value = secrets.token_hex(8)
            self._set("store_id", value)
        return str(value)

    def window_start(self, now: float) -> float:
        """When the current window began (persisted, so a restart continues the same window)."""
        start = self._get("window_start", None)
        if start is None:
            self._set("window_start", now)
            return now
        return float(start)

    # --- inputs ----------------------------------------------------------------------------------
    def journal(self, kind: str, body: dict[str, Any], at: float, message_id: str | None = None) -> bool:
        """Record one input; False (and nothing recorded) if ``message_id`` was journaled before."""
        with self._transaction():
            if message_id is not None:
                cursor = self._db.execute("INSERT OR IGNORE INTO seen (message_id, at) VALUES (?, ?)",
                                          (message_id[:128], at))
                if cursor.rowcount == 0:
                    return False
            self._db.execute("INSERT INTO journal (at, kind, body) VALUES (?, ?, ?)", (at, kind, json.dumps(body)))
        return True

    def record_alert(self, alert: Alert, now: float) -> int:
        with self._transaction():
            return self._record_alert(alert, now)

    def record_alert_once(self, alert: Alert, once_key: str, now: float) -> int | None:
        """Record ``alert`` unless an alert was recorded under ``once_key`` before (remembered across
        restarts, in the same transaction as the outbox entry). None if it was already raised."""
        with self._transaction():
            raised = list(self._get("alerted_once", []))
            if once_key in raised:
                return None
            self._set("alerted_once", [*raised, once_key][-MAX_ONCE_KEYS:])
            return self._record_alert(alert, now)

    def _record_alert(self, alert: Alert, now: float) -> int:
        self._set("alerts_in_window", int(self._get("alerts_in_window", 0)) + 1)
        return self._enqueue(MessageType.ALERT, alert.to_json(), PRIORITY_ALERT, now,
                             alertType=alert.alert_type.value, severity=alert.severity)

    # --- windows ---------------------------------------------------------------------------------
    def flush_window(self, now: float, extra_properties: dict[str, str] | None = None) -> int:
        """Aggregate everything journaled so far into one metrics message in the outbox. Atomic."""
        with self._transaction():
            start = self.window_start(now)
            rows = self._db.execute("SELECT id, kind, body FROM journal ORDER BY id").fetchall()
            observations = [Observation(kind, json.loads(body)) for _, kind, body in rows]
            report, active = aggregate(
                observations,
                active_versions=self._get("active_versions", {}),
                window_start=start,
                window_end=now,
                alerts=int(self._get("alerts_in_window", 0)),
            )
            body = report.to_json()
            dropped = int(self._get("dropped", 0))
            if dropped:
                body["errors"] = {**body["errors"], "REPORTER_OUTBOX_DROPPED": dropped}
            if rows:
                self._db.execute("DELETE FROM journal WHERE id <= ?", (rows[-1][0],))
            self._set("active_versions", active)
            self._set("alerts_in_window", 0)
            self._set("dropped", 0)
            self._set("window_start", now)
            self._db.execute("DELETE FROM seen WHERE at < ?", (now - SEEN_TTL_S,))
            return self._enqueue(MessageType.METRICS, body, PRIORITY_METRICS, now, **(extra_properties or {}))

    # --- outbox ----------------------------------------------------------------------------------
    def _enqueue(self, message_type: MessageType, body: dict[str, Any], priority: int, now: float,
                 **properties: str) -> int:
        data = encode_json(body)
        props = application_properties(message_type, **properties)
        cursor = self._db.execute(
            "INSERT INTO outbox (priority, message_type, body, properties, created) VALUES (?, ?, ?, ?, ?)",
            (priority, message_type.value, data, json.dumps(props), now),
        )
        self._trim()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _trim(self) -> None:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        excess = count - self.max_outbox
        if excess <= 0:
            return
        victims = self._db.execute(
            "SELECT id FROM outbox WHERE priority = ? ORDER BY id LIMIT ?", (PRIORITY_METRICS, excess)
        ).fetchall()
        self._db.executemany("DELETE FROM outbox WHERE id = ?", victims)
        self._set("dropped", int(self._get("dropped", 0)) + len(victims))

    def pending(self, limit: int = 50) -> list[OutboxItem]:
        rows = self._db.execute(
            "SELECT id, message_type, body, properties FROM outbox ORDER BY priority DESC, id LIMIT ?", (limit,)
        ).fetchall()
        return [OutboxItem(i, t, bytes(b), json.loads(p)) for i, t, b, p in rows]

    def ack(self, item_id: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

    def counts(self) -> dict[str, int]:
        (journal,) = self._db.execute("SELECT COUNT(*) FROM journal").fetchone()
        (outbox,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return {"journal": int(journal), "outbox": int(outbox)}

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
