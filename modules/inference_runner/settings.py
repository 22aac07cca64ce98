"""The runner's twin settings besides ``model`` and ``batching`` (pure parsers).

- ``limits = {maxInputBytes, maxOutputBytes, maxElements, allowNonFinite}`` (:class:`.signature.Limits`)
- ``results = {upstreamFraction}``: the fraction of per-input results (0..1) also sent on the
  ``resultsUpstream`` output, which the deployment routes to ``$upstream``; chosen by a hash of
  the request id, so the same input is always in or out of the sample.
- ``stats = {reportIntervalSeconds}``: the counters (reported ``stats``) are patched no more often
  than this (default 60 s, 5..3600); a change of the model's status or of a setting is reported at
  once (:func:`.status.report_wait`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edb.schemas import ErrorInfo
from inference_runner.signature import Limits
from inference_runner.status import DEFAULT_REPORT_INTERVAL_S, MAX_REPORT_INTERVAL_S, MIN_REPORT_INTERVAL_S

INVALID = "RUNNER_INVALID_DESIRED"
#: ceilings a twin cannot raise the limits above (the TEE's frame is 64 MiB)
MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_OUTPUT_BYTES = 60 * 1024 * 1024
MAX_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True)
class ResultSettings:
    upstream_fraction: float = 0.0

    def to_twin(self) -> dict[str, Any]:
        return {"upstreamFraction": self.upstream_fraction}

    def upstream(self, request_id: str) -> bool:
        """Whether this request's result goes upstream too (stable per request id)."""
        if self.upstream_fraction <= 0:
            return False
        if self.upstream_fraction >= 1:
            return True
        digest = hashlib.sha256(request_id.encode("utf-8", "backslashreplace")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.upstream_fraction


@dataclass(frozen=True)
class StatsSettings:
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S

    def to_twin(self) -> dict[str, Any]:
        return {"reportIntervalSeconds": self.report_interval_s}


def _int(value: Mapping[str, Any], key: str, default: int, upper: int) -> int | ErrorInfo:
    number = value.get(key, default)
    if not isinstance(number, int) or isinstance(number, bool) or not 1024 <= number <= upper:
        return ErrorInfo(INVALID, f"desired.limits.{key} must be an integer 1024..{upper}")
    return number


def parse_limits(value: object) -> Limits | ErrorInfo:
    if value is None:
        return Limits()
    if not isinstance(value, Mapping):
        return ErrorInfo(INVALID, "desired.limits must be an object")
    unknown = set(value) - {"maxInputBytes", "maxOutputBytes", "maxElements", "allowNonFinite"}
    if unknown:
        return ErrorInfo(INVALID, f"desired.limits has unknown setting {sorted(unknown)[0][:40]!r}")
    d = Limits()
    numbers = [_int(value, "maxInputBytes", d.max_input_bytes, MAX_INPUT_BYTES),
               _int(value, "maxOutputBytes", d.max_output_bytes, MAX_OUTPUT_BYTES),
               _int(value, "maxElements", d.max_elements, MAX_ELEMENTS)]
    for n in numbers:
        if isinstance(n, ErrorInfo):
            return n
    allow = value.get("allowNonFinite", d.allow_non_finite)
    if not isinstance(allow, bool):
        return ErrorInfo(INVALID, "desired.limits.allowNonFinite must be true or false")
    inp, out, elements = (int(n) for n in numbers if not isinstance(n, ErrorInfo))
    return Limits(inp, out, elements, allow)


def parse_results(value: object) -> ResultSettings | ErrorInfo:
    if value is None:
        return ResultSettings()
    if not isinstance(value, Mapping) or set(value) - {"upstreamFraction"}:
        return ErrorInfo(INVALID, "desired.results must be {upstreamFraction}")
    fraction = value.get("upstreamFraction", 0.0)
    if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
        return ErrorInfo(INVALID, "desired.results.upstreamFraction must be a number 0..1")
    return ResultSettings(float(fraction))


def parse_stats(value: object, default: StatsSettings | None = None) -> StatsSettings | ErrorInfo:
    """``default`` when absent (the service's own, 60 s unless its harness chose another)."""
    if value is None:
        return default or StatsSettings()
    if not isinstance(value, Mapping) or set(value) - {"reportIntervalSeconds"}:
        return ErrorInfo(INVALID, "desired.stats must be {reportIntervalSeconds}")
    interval = value.get("reportIntervalSeconds")
    if interval is None:
        return default or StatsSettings()
    if not isinstance(interval, int | float) or isinstance(interval, bool) \
            or not MIN_REPORT_INTERVAL_S <= interval <= MAX_REPORT_INTERVAL_S:
        return ErrorInfo(INVALID, f"desired.stats.reportIntervalSeconds must be a number "
                                  f"{MIN_REPORT_INTERVAL_S:g}..{MAX_REPORT_INTERVAL_S:g}")
    return StatsSettings(float(interval))
