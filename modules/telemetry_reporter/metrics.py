"""Aggregation of one metrics window from the raw observations the store journaled (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from edb.schemas import (
    EventKind,
    InferenceResult,
    LatencySummary,
    MessageError,
    MetricsReport,
    ModuleEvent,
)
from edb.schemas.common import iso_from_epoch


@dataclass(frozen=True)
class Observation:
    kind: str  # "result" or "event"
    body: Mapping[str, object]


def _same_label(predicted: object, expected: int) -> bool:
    if isinstance(predicted, bool):
        return False
    if isinstance(predicted, int | float):
        return predicted == expected
    return str(predicted) == str(expected)


def summarize(values: list[float]) -> LatencySummary:
    if not values:
        return LatencySummary(0, None, None, None, None)
    array = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (round(float(v), 3) for v in np.percentile(array, [50, 95, 99], method="inverted_cdf"))
    return LatencySummary(len(values), p50, p95, p99, round(float(array.max()), 3))


def update_active_versions(active: Mapping[str, str], event: ModuleEvent) -> dict[str, str]:
    """Active versions by package/model name, from installer and runner events."""
    out = dict(active)
    if event.package is None:
        return out
    if event.event is EventKind.MODEL_LOADED and event.version:
        out[f"model:{event.package}"] = event.version
    elif event.event is EventKind.PACKAGE_INSTALLED and event.version:
        out[event.package] = event.version
    elif event.event is EventKind.PACKAGE_REMOVED:
        out.pop(event.package, None)
    return out


def aggregate(
    observations: Iterable[Observation],
    *,
    active_versions: Mapping[str, str],
    window_start: float,
    window_end: float,
    alerts: int = 0,
) -> tuple[MetricsReport, dict[str, str]]:
    """The metrics report for the window and the active versions after it."""
    latencies: list[float] = []
    install_durations: list[float] = []
    by_version: Counter[str] = Counter()
    errors_by_code: Counter[str] = Counter()
    inferences = inference_errors = correct = labelled = installs = install_failures = 0
    active = dict(active_versions)
    last_result: dict[str, object] | None = None
    for observation in observations:
        try:
            if observation.kind == "result":
                result = InferenceResult.from_json(observation.body)
                inferences += 1
                if result.error is not None:
                    inference_errors += 1
                    errors_by_code[result.error.code] += 1
                    continue
                latencies.append(result.latency_ms)
                # predictions as text: a classifier's labels may be numbers or class names, and the
                # telemetry's schema (DTDL) needs one type
                last_result = {"requestId": result.request_id,
                               "predictions": [str(p) for p in result.predictions[:16]]
                               if result.predictions is not None else None,
                               "expected": result.expected,
                               "model": f"{result.model.name}@{result.model.version}" if result.model else None}
                if result.model is not None:
                    by_version[f"{result.model.name}@{result.model.version}"] += 1
                if result.expected is not None and result.predictions:
                    labelled += 1
                    correct += int(_same_label(result.predictions[0], result.expected))
            elif observation.kind == "event":
                event = ModuleEvent.from_json(observation.body)
                active = update_active_versions(active, event)
                if event.event is EventKind.PACKAGE_INSTALLED:
                    installs += 1
                    if event.duration_ms is not None:
                        install_durations.append(event.duration_ms)
                elif event.event in (EventKind.PACKAGE_FAILED, EventKind.MODEL_FAILED):
                    install_failures += event.event is EventKind.PACKAGE_FAILED
                    if event.error is not None:
                        errors_by_code[event.error.code] += 1
        except MessageError:
            errors_by_code["REPORTER_BAD_MESSAGE"] += 1
    seconds = max(window_end - window_start, 1e-9)
    report = MetricsReport(
        window_start=iso_from_epoch(window_start),
        window_end=iso_from_epoch(window_end),
        window_seconds=seconds,
        inferences=inferences,
        inference_errors=inference_errors,
        rate_per_second=inferences / seconds,
        latency_ms=summarize(latencies),
        correct=correct,
        labelled=labelled,
        by_version=dict(sorted(by_version.items())),
        active_versions=dict(sorted(active.items())),
        installs=installs,
        install_failures=install_failures,
        install_duration_ms=summarize(install_durations),
        alerts=alerts,
        errors_by_code=dict(sorted(errors_by_code.items())),
        last_result=last_result,
    )
    return report, active
