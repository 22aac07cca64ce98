"""Framework-neutral request/response types: the handlers take and return these, so the same code
runs under Azure Functions (``function_app.py``) and the local aiohttp host (``host.py``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from key_release_service.codes import Denied


@dataclass(frozen=True)
class ApiRequest:
    method: str
    body: bytes = field(default=b"", repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    route_params: Mapping[str, str] = field(default_factory=dict)
    remote: str | None = None


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()

    @classmethod
    def from_denial(cls, denial: Denied) -> ApiResponse:
        headers = {"Cache-Control": "no-store"}
        if denial.retry_after is not None:
            headers["Retry-After"] = str(denial.retry_after)
        return cls(denial.status, {"error": denial.to_dict()}, headers)


def ok(body: dict[str, Any]) -> ApiResponse:
    # released keys and nonces must never be cached by a proxy
    return ApiResponse(200, body, {"Cache-Control": "no-store"})
