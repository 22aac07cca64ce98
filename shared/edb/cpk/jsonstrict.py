"""Strict JSON decoding for manifests: UTF-8, one object, no duplicate keys, no NaN/Infinity,
bounded nesting. Typed field accessors raise CPK_MANIFEST_INVALID with the field's path."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from edb.cpk.errors import MANIFEST_INVALID, PackageError, package_error

_RFC3339_UTC = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$")
MAX_DEPTH = 8
MAX_INT = 2**63 - 1


def invalid(path: str, why: str) -> PackageError:
    return package_error(MANIFEST_INVALID, f"manifest field {path}: {why}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        raise ValueError("JSON nested too deeply")
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def loads_object(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        _depth(value)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise package_error(MANIFEST_INVALID, f"manifest is not strict UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise package_error(MANIFEST_INVALID, "manifest is not a JSON object")
    return value


def obj(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = field(parent, key, path)
    if not isinstance(value, dict):
        raise invalid(f"{path}.{key}", "must be an object")
    return value


def field(parent: dict[str, Any], key: str, path: str) -> Any:
    if key not in parent:
        raise invalid(f"{path}.{key}", "missing")
    return parent[key]


def exact_keys(value: dict[str, Any], keys: set[str], path: str) -> None:
    unknown = set(value) - keys
    if unknown:
        raise invalid(path, f"unknown member(s) {sorted(unknown)}")
    missing = keys - set(value)
    if missing:
        raise invalid(path, f"missing member(s) {sorted(missing)}")


def integer(parent: dict[str, Any], key: str, path: str, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    value = field(parent, key, path)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{path}.{key}", "must be an integer")
    if not minimum <= value <= maximum:
        raise invalid(f"{path}.{key}", f"must be in [{minimum}, {maximum}]")
    return value


def string(
    parent: dict[str, Any], key: str, path: str, *, max_len: int = 256, pattern: re.Pattern[str] | None = None
) -> str:
    value = field(parent, key, path)
    if not isinstance(value, str):
        raise invalid(f"{path}.{key}", "must be a string")
    check_text(value, f"{path}.{key}", max_len=max_len, pattern=pattern)
    return value


def check_text(value: str, path: str, *, max_len: int, pattern: re.Pattern[str] | None = None) -> None:
    if not 0 < len(value) <= max_len:
        raise invalid(path, f"must be 1..{max_len} characters")
    if not value.isprintable():
        raise invalid(path, "must not contain control characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise invalid(path, f"does not match {pattern.pattern}")


def timestamp(parent: dict[str, Any], key: str, path: str) -> dt.datetime:
    value = field(parent, key, path)
    if not isinstance(value, str):
        raise invalid(f"{path}.{key}", "must be an RFC 3339 UTC string")
    return parse_timestamp(value, f"{path}.{key}")


def parse_timestamp(value: str, path: str) -> dt.datetime:
    match = _RFC3339_UTC.fullmatch(value)
    if not match:
        raise invalid(path, "must look like 2025-01-31T12:00:00Z")
    try:
        y, mo, d, h, mi, s = (int(g) for g in match.groups())
        return dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.UTC)
    except ValueError as exc:
        raise invalid(path, str(exc)) from None


def format_timestamp(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
