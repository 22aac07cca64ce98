"""Manifest version 1 (interop with the original cpk-tool): parse and write its JSON exactly.

Kebab-case variant names, externally tagged enums (a unit variant is a string such as ``"none"``,
a struct variant an object with one key such as ``{"aes-gcm": {...}}``), snake_case fields inside
variants, unknown fields ignored, missing fields are errors. Numbers inside ``enc``/``dig``/
``sig``/``cert`` and ``payload.data`` are stream indices. Integer widths are the original tools'
(``key_strength`` and stream indices u16, version numbers u32) and ``payload.target`` needs both
``arch`` and ``os``. The format and every difference from the original tools: docs/cpk-v1.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edb.cpk import jsonstrict as js
from edb.cpk.errors import TOO_LARGE, package_error
from edb.cpk.limits import DEFAULT_LIMITS, Limits

MAX_U32 = 2**32 - 1
MAX_U16 = 2**16 - 1

# Certification variants and which of them carry a stream index.
CERT_STREAM_KINDS = ("embedded-x509-pem", "embedded-x509-der", "embedded-public-key-pem", "embedded-public-key-der")
CERT_KINDS = ("none", "target", "url", *CERT_STREAM_KINDS)


@dataclass(frozen=True)
class Encryption:
    """``"none"`` or ``aes-gcm {key_name, key_strength, nonce, tag}`` (nonce/tag are stream indices)."""

    kind: str  # "none" | "aes-gcm"
    key_name: str = ""
    key_strength: int = 0
    nonce: int = 0
    tag: int = 0

    def to_json(self) -> Any:
        if self.kind == "none":
            return "none"
        return {"aes-gcm": {"key_name": self.key_name, "key_strength": self.key_strength,
                            "nonce": self.nonce, "tag": self.tag}}


@dataclass(frozen=True)
class Digest:
    kind: str  # "none" | "sha256"
    data: int = 0

    def to_json(self) -> Any:
        return "none" if self.kind == "none" else {"sha256": {"data": self.data}}


@dataclass(frozen=True)
class Signing:
    kind: str  # "none" | "rsa-pkcs1v15"
    key_strength: int = 0
    data: int = 0

    def to_json(self) -> Any:
        if self.kind == "none":
            return "none"
        return {"rsa-pkcs1v15": {"key_strength": self.key_strength, "data": self.data}}


@dataclass(frozen=True)
class Certification:
    kind: str  # one of CERT_KINDS
    data: int = 0  # stream index for the embedded-* kinds
    domain: str = ""  # "target"
    url: str = ""  # "url"

    def to_json(self) -> Any:
        if self.kind == "none":
            return "none"
        if self.kind == "target":
            return {"target": {"domain": self.domain}}
        if self.kind == "url":
            return {"url": {"url": self.url}}
        return {self.kind: {"data": self.data}}


@dataclass(frozen=True)
class VersionV1:
    maj: int
    min: int
    rev: int
    date: str

    def __str__(self) -> str:
        return f"{self.maj}.{self.min}.{self.rev}"


@dataclass(frozen=True)
class PayloadV1:
    data: int
    target: dict[str, str]
    ver: VersionV1
    enc: Encryption
    dig: Digest
    sig: Signing
    cert: Certification


@dataclass(frozen=True)
class PackageSectionV1:
    map: tuple[int, ...]
    dig: Digest = field(default_factory=lambda: Digest("none"))
    sig: Signing = field(default_factory=lambda: Signing("none"))
    cert: Certification = field(default_factory=lambda: Certification("none"))


@dataclass(frozen=True)
class ManifestV1:
    cp_id: str
    cp_name: str
    cp_vendor: str
    payload: PayloadV1
    package: PackageSectionV1

    def stream_indices(self) -> list[int]:
        """Every stream index the manifest refers to."""
        p = self.payload
        out = [p.data]
        if p.enc.kind == "aes-gcm":
            out += [p.enc.nonce, p.enc.tag]
        if p.dig.kind == "sha256":
            out.append(p.dig.data)
        if p.sig.kind == "rsa-pkcs1v15":
            out.append(p.sig.data)
        if p.cert.kind in CERT_STREAM_KINDS:
            out.append(p.cert.data)
        return out

    def to_json(self) -> dict[str, Any]:
        p = self.payload
        return {
            "cp-id": self.cp_id,
            "cp-name": self.cp_name,
            "cp-vendor": self.cp_vendor,
            "payload": {
                "data": p.data,
                "target": dict(p.target),
                "ver": {"maj": p.ver.maj, "min": p.ver.min, "rev": p.ver.rev, "date": p.ver.date},
                "enc": p.enc.to_json(),
                "dig": p.dig.to_json(),
                "sig": p.sig.to_json(),
                "cert": p.cert.to_json(),
            },
            "package": {
                "map": list(self.package.map),
                "dig": self.package.dig.to_json(),
                "sig": self.package.sig.to_json(),
                "cert": self.package.cert.to_json(),
            },
        }

    def to_bytes(self) -> bytes:
        """Compact JSON in the original tool's member order."""
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _variant(value: Any, path: str, units: tuple[str, ...], structs: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        if value in units:
            return value, {}
        raise js.invalid(path, f"unknown variant {value!r}")
    if isinstance(value, dict) and len(value) == 1:
        (kind, body), = value.items()
        if kind in structs and isinstance(body, dict):
            return kind, body
        raise js.invalid(path, f"unknown variant {kind!r}")
    raise js.invalid(path, "must be a string or an object with exactly one key")


def _enc(value: Any, path: str) -> Encryption:
    kind, body = _variant(value, path, ("none",), ("aes-gcm",))
    if kind == "none":
        return Encryption("none")
    p = f"{path}.aes-gcm"
    return Encryption("aes-gcm", key_name=js.string(body, "key_name", p, max_len=256),
                      key_strength=js.integer(body, "key_strength", p, maximum=MAX_U16),
                      nonce=js.integer(body, "nonce", p, maximum=MAX_U16),
                      tag=js.integer(body, "tag", p, maximum=MAX_U16))


def _dig(value: Any, path: str) -> Digest:
    kind, body = _variant(value, path, ("none",), ("sha256",))
    return Digest("none") if kind == "none" else Digest("sha256", js.integer(body, "data", f"{path}.sha256",
                                                                            maximum=MAX_U16))


def _sig(value: Any, path: str) -> Signing:
    kind, body = _variant(value, path, ("none",), ("rsa-pkcs1v15",))
    if kind == "none":
        return Signing("none")
    p = f"{path}.rsa-pkcs1v15"
    return Signing("rsa-pkcs1v15", key_strength=js.integer(body, "key_strength", p, maximum=MAX_U16),
                   data=js.integer(body, "data", p, maximum=MAX_U16))


def _cert(value: Any, path: str) -> Certification:
    kind, body = _variant(value, path, ("none",), CERT_KINDS[1:])
    if kind == "none":
        return Certification("none")
    if kind == "target":
        return Certification("target", domain=js.string(body, "domain", f"{path}.target", max_len=1024))
    if kind == "url":
        return Certification("url", url=js.string(body, "url", f"{path}.url", max_len=2048))
    return Certification(kind, data=js.integer(body, "data", f"{path}.{kind}", maximum=MAX_U16))


# The original tools' Target struct: both members required, strings; other members ignored like
# every unknown field (so they are not kept either).
TARGET_FIELDS = ("arch", "os")


def _target(raw: dict[str, Any]) -> dict[str, str]:
    return {key: js.string(raw, key, "manifest.payload.target", max_len=256) for key in TARGET_FIELDS}


def parse_manifest_v1(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ManifestV1:
    if len(data) > limits.max_manifest_bytes:
        raise package_error(TOO_LARGE, f"manifest of {len(data)} bytes exceeds {limits.max_manifest_bytes}")
    root = js.loads_object(data)
    payload = js.obj(root, "payload", "manifest")
    target = _target(js.obj(payload, "target", "manifest.payload"))
    ver = js.obj(payload, "ver", "manifest.payload")
    package = js.obj(root, "package", "manifest")
    map_raw = js.field(package, "map", "manifest.package")
    if not isinstance(map_raw, list) or len(map_raw) > limits.max_streams or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_U16 for i in map_raw
    ):
        raise js.invalid("manifest.package.map", "must be a list of stream indices")
    date = js.field(ver, "date", "manifest.payload.ver")
    if not isinstance(date, str) or len(date) > 64:
        raise js.invalid("manifest.payload.ver.date", "must be a string of at most 64 characters")
    return ManifestV1(
        cp_id=js.string(root, "cp-id", "manifest", max_len=256),
        cp_name=js.string(root, "cp-name", "manifest", max_len=256),
        cp_vendor=js.string(root, "cp-vendor", "manifest", max_len=256),
        payload=PayloadV1(
            data=js.integer(payload, "data", "manifest.payload", maximum=MAX_U16),
            target=target,
            ver=VersionV1(
                maj=js.integer(ver, "maj", "manifest.payload.ver", maximum=MAX_U32),
                min=js.integer(ver, "min", "manifest.payload.ver", maximum=MAX_U32),
                rev=js.integer(ver, "rev", "manifest.payload.ver", maximum=MAX_U32),
                date=date,
            ),
            enc=_enc(js.field(payload, "enc", "manifest.payload"), "manifest.payload.enc"),
            dig=_dig(js.field(payload, "dig", "manifest.payload"), "manifest.payload.dig"),
            sig=_sig(js.field(payload, "sig", "manifest.payload"), "manifest.payload.sig"),
            cert=_cert(js.field(payload, "cert", "manifest.payload"), "manifest.payload.cert"),
        ),
        package=PackageSectionV1(
            map=tuple(map_raw),
            dig=_dig(js.field(package, "dig", "manifest.package"), "manifest.package.dig"),
            sig=_sig(js.field(package, "sig", "manifest.package"), "manifest.package.sig"),
            cert=_cert(js.field(package, "cert", "manifest.package"), "manifest.package.cert"),
        ),
    )
