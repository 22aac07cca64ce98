"""Small pieces every twin and message schema shares: error objects, timestamps, twin merging."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edb.errors import EdbError

#: Longest error message we put in a twin or a message (a twin value is limited to 4 KB).
MAX_ERROR_MESSAGE = 300


@dataclass(frozen=True)
class ErrorInfo:
    """The ``{"code", "message"}`` object of Contract 6. Never carries key material or plaintext."""

    code: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        if isinstance(exc, EdbError):
            return cls(exc.code, _clip(exc.message))
        # Unexpected exceptions are reported by type only: their text may echo inputs we do not control.
        return cls("EDB_INTERNAL", type(exc).__name__)

    @classmethod
    def from_json(cls, value: object) -> ErrorInfo | None:
        if not isinstance(value, Mapping):
            return None
        code, message = value.get("code"), value.get("message")
        if not isinstance(code, str):
            return None
        return cls(code[:64], _clip(message if isinstance(message, str) else ""))

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_MESSAGE else text[: MAX_ERROR_MESSAGE - 3] + "..."


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_utc(moment: dt.datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``, the form IoT Hub uses for its own timestamps."""
    moment = moment or utc_now()
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def iso_from_epoch(seconds: float) -> str:
    return iso_utc(dt.datetime.fromtimestamp(seconds, dt.UTC))


def merge_twin_patch(document: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a twin desired/reported patch the way IoT Hub does: objects merge, ``null`` deletes.

    Returns a new document; neither input is modified.
    """
    merged: dict[str, Any] = dict(document)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_twin_patch(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = merge_twin_patch({}, value)
        else:
            merged[key] = value
    return merged


def desired_from_twin(twin: Mapping[str, Any]) -> dict[str, Any]:
    """The desired document of a whole twin as ``get_twin()`` returns it, without its ``$version``."""
    desired = dict(twin.get("desired") or {})
    desired.pop("$version", None)
    return desired


def apply_desired_patch(document: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` with a desired-properties patch applied (:func:`merge_twin_patch`); the patch's
    ``$version`` is the twin's metadata, not a property, and stays out."""
    return merge_twin_patch(document, {k: v for k, v in patch.items() if k != "$version"})


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions like ``1.2.10 > 1.2.9``: numeric parts compare as numbers, others as text.

    Numbers sort before text in the same position so ``1.0.0 < 1.0.0-rc`` never claims to be
    semver; the project only needs a total, predictable order for ``minVersion``.
    """
    parts: list[tuple[int, int | str]] = []
    for piece in version.replace("-", ".").replace("+", ".").split("."):
        if piece.isdigit():
            parts.append((0, int(piece)))
        else:
            parts.append((1, piece))
    return tuple(parts)
