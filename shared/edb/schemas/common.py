"""Small pieces every twin and message schema shares: error objects, timestamps, twin merging."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edb.errors import EdbError

#: Longest error message we put in a twin or a message (characters; a twin value is limited to 4 KB, and
#: the messages this bounds are ASCII in practice: ONNX Runtime's, our own). Long enough for the root cause
#: of a refused model (ONNX Runtime nests it at the end of a long message).
MAX_ERROR_MESSAGE = 1024


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
    return clip_message(text, MAX_ERROR_MESSAGE)


def clip_message(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: a longer one keeps its head (about a third: what
    failed) and its tail (the root cause, where nested errors put it), cut at spaces, joined by
    `` ... ``. Pure."""
    if len(text) <= limit:
        return text
    marker = " ... "
    room = max(limit - len(marker), 2)
    head_len = room // 3
    head = text[:head_len]
    cut = head.rfind(" ")
    head = head[:cut] if cut > head_len // 2 else head
    tail_len = room - len(head)
    tail = text[len(text) - tail_len:]
    cut = tail.find(" ")
    tail = tail[cut + 1:] if 0 <= cut < tail_len // 2 else tail
    return f"{head}{marker}{tail}"


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
