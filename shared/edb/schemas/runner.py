"""The inference runner's twin (Contract 6).

Desired: ``model = {name, minVersion}`` and ``batching = {maxBatch, maxLatencyMs}``.
Reported: ``model = {name, version, securityVersion, state, since, error, lastLoadFailure}`` and
``stats`` (latency percentiles and counts since start). ``model.state`` describes what serves now;
a version that failed to load while another keeps serving is in ``lastLoadFailure``. Parsing never
raises: a bad value yields an :class:`ErrorInfo` and the previous (or default) setting stays in force.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edb.schemas.common import ErrorInfo
from edb.schemas.packages import NAME_PATTERN, VERSION_PATTERN

MAX_BATCH_LIMIT = 256
MAX_LATENCY_MS_LIMIT = 10_000


@dataclass(frozen=True)
class ModelSpec:
    name: str
    min_version: str | None = None

    def to_twin(self) -> dict[str, Any]:
        return {"name": self.name, "minVersion": self.min_version}


@dataclass(frozen=True)
class BatchingSettings:
    max_batch: int = 8
    max_latency_ms: int = 20

    def to_twin(self) -> dict[str, Any]:
        return {"maxBatch": self.max_batch, "maxLatencyMs": self.max_latency_ms}


def parse_model_spec(value: object) -> ModelSpec | ErrorInfo | None:
    """None when no model is wanted (absent or null)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return ErrorInfo("RUNNER_INVALID_DESIRED", "desired.model must be an object")
    name, min_version = value.get("name"), value.get("minVersion")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return ErrorInfo("RUNNER_INVALID_DESIRED", "desired.model.name is not a valid package name")
    if min_version is not None and (not isinstance(min_version, str) or not VERSION_PATTERN.fullmatch(min_version)):
        return ErrorInfo("RUNNER_INVALID_DESIRED", "desired.model.minVersion must be a version string or null")
    return ModelSpec(name, min_version)


def parse_batching(value: object) -> BatchingSettings | ErrorInfo:
    if value is None:
        return BatchingSettings()
    if not isinstance(value, Mapping):
        return ErrorInfo("RUNNER_INVALID_DESIRED", "desired.batching must be an object")
    defaults = BatchingSettings()
    max_batch = value.get("maxBatch", defaults.max_batch)
    max_latency = value.get("maxLatencyMs", defaults.max_latency_ms)
    for label, number, upper in (("maxBatch", max_batch, MAX_BATCH_LIMIT), ("maxLatencyMs", max_latency,
                                                                           MAX_LATENCY_MS_LIMIT)):
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= upper:
            return ErrorInfo("RUNNER_INVALID_DESIRED", f"desired.batching.{label} must be an integer 0..{upper}")
    assert isinstance(max_batch, int) and isinstance(max_latency, int)
    return BatchingSettings(max(1, max_batch), max_latency)


class ModelState(StrEnum):
    WAITING = "waiting"  # no acceptable version installed yet
    LOADING = "loading"
    SERVING = "serving"
    FAILED = "failed"  # nothing serves: the wanted version failed to load (or the runner is stopping on a fault)


@dataclass(frozen=True)
class LoadFailure:
    """The last load of a version that failed (``model.lastLoadFailure``): kept, for operators and
    the rollout gates, while another version serves; gone once that version loads."""

    name: str
    version: str | None
    error: ErrorInfo
    at: str

    def to_twin(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "error": self.error.to_json(), "at": self.at}

    @classmethod
    def from_twin(cls, value: object) -> LoadFailure | None:
        """None for anything that is not a well-formed failure (never raises)."""
        if not isinstance(value, Mapping):
            return None
        name, version, at = value.get("name"), value.get("version"), value.get("at")
        error = ErrorInfo.from_json(value.get("error"))
        if not isinstance(name, str) or error is None or not (version is None or isinstance(version, str)):
            return None
        return cls(name, version, error, at if isinstance(at, str) else "")


@dataclass(frozen=True)
class ModelReport:
    """``name``/``version``: what serves (``state`` serving), is being loaded (loading) or is wanted
    (waiting, failed: nothing serves, version null)."""

    name: str | None
    version: str | None
    state: ModelState
    since: str
    error: ErrorInfo | None = None
    last_load_failure: LoadFailure | None = None

    def to_twin(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "since": self.since,
            "error": self.error.to_json() if self.error else None,
            "lastLoadFailure": self.last_load_failure.to_twin() if self.last_load_failure else None,
        }
