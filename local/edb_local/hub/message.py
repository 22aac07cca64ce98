"""The message the hub routes, stores and delivers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edb_local.hub.query.evaluate import UNDEFINED

_JSON_ENCODINGS = {"utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf-32": "utf-32"}


@dataclass(slots=True)
class HubMessage:
    """A message: body bytes, system properties (routing-language names without the `$`:
    messageId, correlationId, userId, contentType, contentEncoding, expiryTimeUtc, outputName,
    connectionDeviceId, connectionModuleId, enqueuedTime, ...) and application properties."""

    body: bytes
    system: dict[str, str] = field(default_factory=dict)
    application: dict[str, str | None] = field(default_factory=dict)
    _json: Any = field(default=None, repr=False)
    _json_done: bool = field(default=False, repr=False)

    def json_body(self) -> Any:
        """The body as JSON when content type is application/json and encoding UTF-8/16/32
        (what IoT Hub requires before `$body` can be queried); UNDEFINED otherwise."""
        if not self._json_done:
            self._json_done = True
            self._json = UNDEFINED
            content_type = self.system.get("contentType", "").split(";")[0].strip().lower()
            encoding = _JSON_ENCODINGS.get(self.system.get("contentEncoding", "").strip().lower())
            if content_type == "application/json" and encoding is not None:
                try:
                    self._json = json.loads(self.body.decode(encoding))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    self._json = UNDEFINED
        return self._json

    def to_record(self) -> dict[str, Any]:
        return {"system": self.system, "application": self.application}
