"""The records the typed TEE client returns (Contract 4), and their strict JSON forms.

Structured results cross the socket as JSON objects inside a ``Blob``; every ``from_json`` checks
member names and types and raises ``TEE_PROTOCOL`` on anything else, so a confused or hostile peer
cannot smuggle unexpected shapes into the modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edb.errors import TeeError
from edb.tee.errors import PROTOCOL

if TYPE_CHECKING:
    from edb.cpk.signed import SignedManifest

#: Installed package names: what a twin key may be (``packages.<name>``), never a path.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _bad(what: str) -> TeeError:
    return TeeError(f"TEE returned a malformed {what}", code=PROTOCOL)


def _obj(data: object, keys: set[str], what: str, optional: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _bad(what)
    allowed = keys | (optional or set())
    if not keys <= set(data) or not set(data) <= allowed:
        raise _bad(what)
    return data


def _str(data: dict[str, Any], key: str, what: str, max_len: int = 4096) -> str:
    v = data[key]
    if not isinstance(v, str) or len(v) > max_len:
        raise _bad(what)
    return v


def _int(data: dict[str, Any], key: str, what: str) -> int:
    v = data[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _bad(what)
    return v


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    device_class: str
    measurement: str  # 64 hex: SHA-256 over the TEE's code and measured configuration
    tee_svn: int
    legacy_v1: bool = False  # the weaker v1 key flow is enabled on this device

    def to_json(self) -> dict[str, Any]:
        return {"deviceId": self.device_id, "deviceClass": self.device_class, "measurement": self.measurement,
                "teeSvn": self.tee_svn, "legacyV1": self.legacy_v1}

    @classmethod
    def from_json(cls, data: object) -> DeviceInfo:
        d = _obj(data, {"deviceId", "deviceClass", "measurement", "teeSvn", "legacyV1"}, "device info")
        if not isinstance(d["legacyV1"], bool):
            raise _bad("device info")
        return cls(_str(d, "deviceId", "device info", 128), _str(d, "deviceClass", "device info", 128),
                   _str(d, "measurement", "device info", 64), _int(d, "teeSvn", "device info"), d["legacyV1"])


@dataclass(frozen=True)
class Evidence:
    """What the installer sends to the key release service (Contract 3)."""

    jws: str
    cert_chain: tuple[str, ...]  # base64 DER, leaf first
    one_time_jwk: dict[str, str]  # the TEE's one-time P-256 public key for this install

    def to_json(self) -> dict[str, Any]:
        return {"evidence": self.jws, "certChain": list(self.cert_chain), "oneTimeKey": dict(self.one_time_jwk)}

    @classmethod
    def from_json(cls, data: object) -> Evidence:
        d = _obj(data, {"evidence", "certChain", "oneTimeKey"}, "evidence")
        chain, otk = d["certChain"], d["oneTimeKey"]
        if not isinstance(chain, list) or not chain or len(chain) > 8 or not all(
            isinstance(c, str) and len(c) < 16384 for c in chain
        ):
            raise _bad("evidence")
        if not isinstance(otk, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in otk.items()):
            raise _bad("evidence")
        return cls(_str(d, "evidence", "evidence", 16384), tuple(chain), dict(otk))


@dataclass(frozen=True)
class InstallTicket:
    """An install in progress inside the TEE: the package was verified (signature, chain to the
    pinned publisher root, target, expiry, rollback floor) before this was returned."""

    txn: str
    name: str
    package_id: str
    version: str
    security_version: int
    format: str  # "cpk-v2", or "cpk-v1" (legacy: nothing was verified but the frame)
    signed_manifest: SignedManifest | None  # None for v1 packages
    sha256: str  # SHA-256 of the whole package file, as the TEE read it

    @property
    def legacy(self) -> bool:
        return self.format == "cpk-v1"

    def to_json(self) -> dict[str, Any]:
        return {"txn": self.txn, "name": self.name, "packageId": self.package_id, "version": self.version,
                "securityVersion": self.security_version, "format": self.format,
                "signedManifest": self.signed_manifest.to_json() if self.signed_manifest else None,
                "sha256": self.sha256}

    @classmethod
    def from_json(cls, data: object) -> InstallTicket:
        what = "install ticket"
        d = _obj(data, {"txn", "name", "packageId", "version", "securityVersion", "format", "signedManifest",
                        "sha256"}, what)
        signed = None
        if d["signedManifest"] is not None:
            from edb.cpk.signed import SignedManifest

            signed = SignedManifest.from_json(d["signedManifest"])
        fmt = _str(d, "format", what, 16)
        if fmt not in ("cpk-v1", "cpk-v2"):
            raise _bad(what)
        return cls(_str(d, "txn", what, 64), _str(d, "name", what, 64), _str(d, "packageId", what, 256),
                   _str(d, "version", what, 128), _int(d, "securityVersion", what), fmt, signed,
                   _str(d, "sha256", what, 64))


@dataclass(frozen=True)
class InstalledPackage:
    name: str
    package_id: str
    version: str
    security_version: int
    sha256: str  # SHA-256 of the package file that was installed
    payload_sha256: str = ""  # SHA-256 of the plaintext model (as the signed manifest states it)
    media_type: str = ""
    format: str = "cpk-v2"
    installed_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "packageId": self.package_id, "version": self.version,
                "securityVersion": self.security_version, "sha256": self.sha256,
                "payloadSha256": self.payload_sha256, "mediaType": self.media_type, "format": self.format,
                "installedAt": self.installed_at}

    @classmethod
    def from_json(cls, data: object) -> InstalledPackage:
        what = "installed package"
        d = _obj(data, {"name", "packageId", "version", "securityVersion", "sha256", "payloadSha256", "mediaType",
                        "format", "installedAt"}, what)
        return cls(_str(d, "name", what, 64), _str(d, "packageId", what, 256), _str(d, "version", what, 128),
                   _int(d, "securityVersion", what), _str(d, "sha256", what, 64), _str(d, "payloadSha256", what, 64),
                   _str(d, "mediaType", what, 128), _str(d, "format", what, 16), _str(d, "installedAt", what, 64))


@dataclass(frozen=True)
class InstallSummary:
    """What ``complete_install`` returns: the package is sealed and the floor raised."""

    package: InstalledPackage
    floor: int  # the rollback floor for this package id after the install
    replaced_version: str | None  # the version this install replaced under the same name

    def to_json(self) -> dict[str, Any]:
        return {"package": self.package.to_json(), "floor": self.floor, "replacedVersion": self.replaced_version}

    @classmethod
    def from_json(cls, data: object) -> InstallSummary:
        d = _obj(data, {"package", "floor", "replacedVersion"}, "install summary")
        rv = d["replacedVersion"]
        if rv is not None and not isinstance(rv, str):
            raise _bad("install summary")
        return cls(InstalledPackage.from_json(d["package"]), _int(d, "floor", "install summary"), rv)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy name ("float32"), "string", or "unknown" for types that cannot cross (seq, map)
    shape: tuple[int | str | None, ...]  # ints, symbolic dimension names, or None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: object) -> TensorSpec:
        d = _obj(data, {"name", "dtype", "shape"}, "tensor spec")
        shape = d["shape"]
        if not isinstance(shape, list) or len(shape) > 16 or not all(
            s is None or isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool)) for s in shape
        ):
            raise _bad("tensor spec")
        return cls(_str(d, "name", "tensor spec", 256), _str(d, "dtype", "tensor spec", 32), tuple(shape))


@dataclass(frozen=True)
class ModelHandle:
    handle: int
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    package_id: str = ""
    prepacked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "name": self.name, "version": self.version, "packageId": self.package_id,
                "prepacked": self.prepacked, "inputs": [i.to_json() for i in self.inputs],
                "outputs": [o.to_json() for o in self.outputs]}

    @classmethod
    def from_json(cls, data: object) -> ModelHandle:
        what = "model handle"
        d = _obj(data, {"handle", "name", "version", "packageId", "prepacked", "inputs", "outputs"}, what)
        ins, outs = d["inputs"], d["outputs"]
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) > 256 or len(outs) > 256:
            raise _bad(what)
        if not isinstance(d["prepacked"], bool):
            raise _bad(what)
        return cls(_int(d, "handle", what), _str(d, "name", what, 64), _str(d, "version", what, 128),
                   tuple(TensorSpec.from_json(i) for i in ins), tuple(TensorSpec.from_json(o) for o in outs),
                   _str(d, "packageId", what, 256), d["prepacked"])


#: bounds of :class:`ModelMetadata` (metadata is not secret, but a model must not flood the runner)
MAX_METADATA_ENTRIES = 256
MAX_METADATA_KEY = 256
MAX_METADATA_VALUE = 256 * 1024  # characters of one value (an OCR recognizer's dictionary: ~13 KB)
MAX_METADATA_TOTAL = 1024 * 1024  # characters of all values
MAX_METADATA_TEXT = 4096  # producer, domain, description...


@dataclass(frozen=True)
class ModelMetadata:
    """What a loaded model says about itself (ModelProto's top-level fields): producer, opsets,
    ``metadata_props`` (ONNX Runtime's ``custom_metadata_map``). Values over the bounds above are
    left out and their keys listed in ``truncated``, never cut silently."""

    name: str
    version: str
    ir_version: int
    producer_name: str
    producer_version: str
    domain: str
    model_version: int
    description: str
    graph_name: str
    opsets: dict[str, int]  # domain ("" = ai.onnx) -> version
    custom: dict[str, str]
    truncated: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "irVersion": self.ir_version,
                "producerName": self.producer_name, "producerVersion": self.producer_version,
                "domain": self.domain, "modelVersion": self.model_version, "description": self.description,
                "graphName": self.graph_name, "opsets": dict(self.opsets), "custom": dict(self.custom),
                "truncated": list(self.truncated)}

    @classmethod
    def from_json(cls, data: object) -> ModelMetadata:
        what = "model metadata"
        d = _obj(data, {"name", "version", "irVersion", "producerName", "producerVersion", "domain", "modelVersion",
                        "description", "graphName", "opsets", "custom", "truncated"}, what)
        opsets, custom, truncated = d["opsets"], d["custom"], d["truncated"]
        if not isinstance(opsets, dict) or len(opsets) > MAX_METADATA_ENTRIES or not all(
                isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, int) and not isinstance(v, bool)
                for k, v in opsets.items()):
            raise _bad(what)
        if not isinstance(custom, dict) or len(custom) > MAX_METADATA_ENTRIES or not all(
                isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str)
                and len(v) <= MAX_METADATA_VALUE for k, v in custom.items()) \
                or sum(len(v) for v in custom.values()) > MAX_METADATA_TOTAL:
            raise _bad(what)
        if not isinstance(truncated, list) or len(truncated) > MAX_METADATA_ENTRIES or not all(
                isinstance(k, str) and len(k) <= MAX_METADATA_KEY for k in truncated):
            raise _bad(what)
        text = MAX_METADATA_TEXT
        return cls(_str(d, "name", what, 64), _str(d, "version", what, 128), _int(d, "irVersion", what),
                   _str(d, "producerName", what, text), _str(d, "producerVersion", what, text),
                   _str(d, "domain", what, text), _int(d, "modelVersion", what), _str(d, "description", what, text),
                   _str(d, "graphName", what, text), dict(opsets), dict(custom), tuple(truncated))
