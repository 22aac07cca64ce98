"""Messages between the modules and upstream (Contract 6).

Every message body is UTF-8 JSON (content type ``application/json``, encoding ``utf-8``) carrying a
``messageType`` field that is also set as an application property, so edgeHub routes and IoT Hub
routing queries can select on it without reading the body. Nothing here ever holds a key, a
plaintext model, or a device secret.

| messageType | from -> to (output -> input)                    | body class          |
|-------------|-------------------------------------------------|---------------------|
| event       | installer/runner ``events`` -> reporter ``events`` | :class:`ModuleEvent` |
| event       | installer ``notifications`` -> runner ``packages`` | :class:`ModuleEvent` |
| frame       | sensor ``frames`` -> runner ``frames``          | :class:`Frame`      |
| result      | runner ``results`` -> reporter ``results``      | :class:`InferenceResult` |
| metrics     | reporter ``telemetry`` -> ``$upstream``         | :class:`MetricsReport` |
| alert       | reporter ``alerts`` -> ``$upstream``            | :class:`Alert`      |
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from edb.schemas.common import ErrorInfo, iso_utc

CONTENT_TYPE_JSON = "application/json"
CONTENT_ENCODING_UTF8 = "utf-8"
#: Binary tensors: a NumPy ``.npy`` document (self-describing dtype and shape, parsed without pickle).
CONTENT_TYPE_NPY = "application/x-npy"
#: IoT Hub caps a device-to-cloud message at 256 KB; nothing we accept may be larger.
MAX_MESSAGE_BYTES = 256 * 1024


class MessageType(StrEnum):
    EVENT = "event"
    FRAME = "frame"
    RESULT = "result"
    METRICS = "metrics"
    ALERT = "alert"


class EventKind(StrEnum):
    PACKAGE_STATE = "package.state"  # a state transition during an install
    PACKAGE_INSTALLED = "package.installed"
    PACKAGE_FAILED = "package.failed"
    PACKAGE_REMOVED = "package.removed"
    MODEL_LOADED = "model.loaded"  # the runner serves a (new) version
    MODEL_FAILED = "model.failed"


class AlertType(StrEnum):
    TAMPER = "tamper"
    DENIAL = "denial"
    ROLLBACK = "rollback"
    #: Not an attack: an authentic package whose model does not load on the device (severity error).
    MODEL = "model"
    #: Not an attack: a package was installed with the weaker legacy v1 key flow (severity warning).
    LEGACY_KEY_FLOW = "legacy-key-flow"


class MessageError(ValueError):
    """A message body is not what its schema says (the receiver logs and counts it)."""


def encode_json(body: Mapping[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message body of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode_json(data: bytes | bytearray | str) -> dict[str, Any]:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("message body too large")
    try:
        value = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(value, dict):
        raise MessageError("message body must be a JSON object")
    return value


def application_properties(message_type: MessageType, **extra: str) -> dict[str, str]:
    """Application properties for routing (``WHERE messageType = 'alert'``)."""
    return {"messageType": message_type.value, **extra}


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _opt_dict(value: object) -> dict[str, dict[str, Any]] | None:
    if not isinstance(value, Mapping):
        return None
    return {str(k): dict(v) for k, v in value.items() if isinstance(v, Mapping)}


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True)
class ModuleEvent:
    event: EventKind
    source: str
    package: str | None = None
    version: str | None = None
    security_version: int | None = None
    state: str | None = None
    error: ErrorInfo | None = None
    duration_ms: float | None = None
    at: str = field(default_factory=iso_utc)
    #: For failures: the installer will try again by itself (a transient error, not an alert).
    retryable: bool | None = None
    #: ``legacy-wrapkey`` when the package was (or is being) installed with the weaker v1 key flow.
    key_flow: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "messageType": MessageType.EVENT.value,
            "event": self.event.value,
            "source": self.source,
            "package": self.package,
            "version": self.version,
            "securityVersion": self.security_version,
            "state": self.state,
            "error": self.error.to_json() if self.error else None,
            "durationMs": self.duration_ms,
            "at": self.at,
            "retryable": self.retryable,
            "keyFlow": self.key_flow,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ModuleEvent:
        try:
            kind = EventKind(str(body.get("event")))
        except ValueError:
            raise MessageError("unknown event kind") from None
        return cls(
            event=kind,
            source=_opt_str(body.get("source")) or "unknown",
            package=_opt_str(body.get("package")),
            version=_opt_str(body.get("version")),
            security_version=_opt_int(body.get("securityVersion")),
            state=_opt_str(body.get("state")),
            error=ErrorInfo.from_json(body.get("error")),
            duration_ms=_opt_float(body.get("durationMs")),
            at=_opt_str(body.get("at")) or iso_utc(),
            retryable=body.get("retryable") if isinstance(body.get("retryable"), bool) else None,
            key_flow=key_flow if isinstance(key_flow := body.get("keyFlow"), str) and len(key_flow) <= 32 else None,
        )


@dataclass(frozen=True)
class Frame:
    """A sensor reading: ``input`` is a list of rows of features (digits: 64 pixel values 0..16)."""

    input: list[list[float]]
    label: int | None = None
    sequence: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"messageType": MessageType.FRAME.value, "input": self.input, "label": self.label,
                "sequence": self.sequence}


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str


#: A classifier's label for one input row: an integer class, a number, or a string class name.
Prediction = int | float | str | bool


@dataclass(frozen=True)
class InferenceResult:
    """The answer to one input message: which message, which model version, what it predicted.

    A classifier's answer is ``predictions`` (one label per input row) and ``scores`` (the highest
    class probability per row); any other model's answer is ``outputs``: every output tensor by
    name, as nested lists with one entry per input row.
    """

    request_id: str
    model: ModelRef | None
    predictions: list[Prediction] | None
    scores: list[float] | None = None
    expected: int | None = None
    latency_ms: float = 0.0
    batch_size: int = 1
    error: ErrorInfo | None = None
    at: str = field(default_factory=iso_utc)
    outputs: dict[str, list[Any]] | None = None
    #: every output's {shape, dtype} (per input), for any model
    tensors: dict[str, dict[str, Any]] | None = None
    #: outputs too large to list, summarised (shape, dtype, min/max/mean/std, top values)
    summaries: dict[str, dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.tensors is not None:
            extra["tensors"] = self.tensors
        if self.summaries is not None:
            extra["summaries"] = self.summaries
        return {
            "messageType": MessageType.RESULT.value,
            "requestId": self.request_id,
            "model": asdict(self.model) if self.model else None,
            "predictions": self.predictions,
            "scores": self.scores,
            "outputs": self.outputs,
            "expected": self.expected,
            "latencyMs": round(self.latency_ms, 3),
            "batchSize": self.batch_size,
            "error": self.error.to_json() if self.error else None,
            "at": self.at,
            **extra,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> InferenceResult:
        request_id = body.get("requestId")
        if not isinstance(request_id, str):
            raise MessageError("result without requestId")
        model = body.get("model")
        ref = None
        if isinstance(model, Mapping) and isinstance(model.get("name"), str) and isinstance(model.get("version"), str):
            ref = ModelRef(model["name"], model["version"])
        predictions = body.get("predictions")
        scores = body.get("scores")
        outputs = body.get("outputs")
        return cls(
            request_id=request_id,
            model=ref,
            predictions=[p for p in predictions if isinstance(p, int | float | str)]
            if isinstance(predictions, list) else None,
            scores=[float(s) for s in scores if isinstance(s, int | float)] if isinstance(scores, list) else None,
            outputs={str(k): v for k, v in outputs.items() if isinstance(v, list)}
            if isinstance(outputs, Mapping) else None,
            expected=_opt_int(body.get("expected")),
            latency_ms=_opt_float(body.get("latencyMs")) or 0.0,
            batch_size=_opt_int(body.get("batchSize")) or 1,
            error=ErrorInfo.from_json(body.get("error")),
            at=_opt_str(body.get("at")) or iso_utc(),
            tensors=_opt_dict(body.get("tensors")),
            summaries=_opt_dict(body.get("summaries")),
        )


@dataclass(frozen=True)
class LatencySummary:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "p50": self.p50, "p95": self.p95, "p99": self.p99, "max": self.max}


@dataclass(frozen=True)
class MetricsReport:
    window_start: str
    window_end: str
    window_seconds: float
    inferences: int
    inference_errors: int
    rate_per_second: float
    latency_ms: LatencySummary
    correct: int
    labelled: int
    by_version: dict[str, int]
    active_versions: dict[str, str]
    installs: int
    install_failures: int
    install_duration_ms: LatencySummary
    alerts: int
    errors_by_code: dict[str, int]
    #: The newest answered request of the window (id, model version, prediction): a sample for operators.
    last_result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "messageType": MessageType.METRICS.value,
            "windowStart": self.window_start,
            "windowEnd": self.window_end,
            "windowSeconds": round(self.window_seconds, 3),
            "inference": {
                "count": self.inferences,
                "errors": self.inference_errors,
                "ratePerSecond": round(self.rate_per_second, 3),
                "latencyMs": self.latency_ms.to_json(),
                "accuracy": round(self.correct / self.labelled, 4) if self.labelled else None,
                "byVersion": self.by_version,
            },
            "activeVersions": self.active_versions,
            "installs": {
                "count": self.installs,
                "failed": self.install_failures,
                "durationMs": self.install_duration_ms.to_json(),
            },
            "alerts": self.alerts,
            "errors": self.errors_by_code,
            "lastResult": self.last_result,
        }


@dataclass(frozen=True)
class Alert:
    alert_type: AlertType
    code: str
    message: str
    package: str | None
    version: str | None
    source: str
    at: str = field(default_factory=iso_utc)
    severity: str = "critical"

    def to_json(self) -> dict[str, Any]:
        return {
            "messageType": MessageType.ALERT.value,
            "alertType": self.alert_type.value,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "package": self.package,
            "version": self.version,
            "source": self.source,
            "at": self.at,
        }
