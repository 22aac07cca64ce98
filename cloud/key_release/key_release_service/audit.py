"""Audit log: one JSON line per decision. Never a key, a DEK, a JWE or evidence bytes.

Fields: ``time`` (RFC 3339 UTC), ``event`` (release | legacy-wrap | legacy-provision | nonce), ``decision``
(allow | deny | error), ``code`` (KR_OK or the denial code), ``device``, ``deviceClass``,
``deviceVerified`` (false when the id is only what the request claimed), ``package``, ``version``,
``securityVersion``, ``kid``, ``remote``, ``ms``. In Azure Functions the lines go to the
``edb.keyrelease.audit`` logger (Application Insights traces); locally to a file or stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

AUDIT_LOGGER = "edb.keyrelease.audit"


@dataclass
class AuditRecord:
    event: str
    decision: str = "deny"
    code: str = ""
    device: str | None = None
    deviceClass: str | None = None
    deviceVerified: bool = False
    package: str | None = None
    version: str | None = None
    securityVersion: int | None = None
    kid: str | None = None
    remote: str | None = None
    ms: float | None = None

    def to_line(self, now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.UTC)
        data: dict[str, Any] = {"time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        data.update({k: v for k, v in asdict(self).items() if v is not None})
        return json.dumps(data, separators=(",", ":"), sort_keys=False)


class AuditLog:
    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def write(self, record: AuditRecord) -> None:
        self._sink(record.to_line())

    @classmethod
    def to_logger(cls, name: str = AUDIT_LOGGER) -> AuditLog:
        logger = logging.getLogger(name)
        return cls(lambda line: logger.info("%s", line))

    @classmethod
    def to_file(cls, path: Path | str) -> AuditLog:
        lock = threading.Lock()
        handle = Path(path).open("a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the service

        def sink(line: str) -> None:
            with lock:
                handle.write(line + "\n")

        return cls(sink)
