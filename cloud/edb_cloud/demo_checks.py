"""What the demo verifies, as pure functions over what it observed (upstream events, twins)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TAMPER_CODES = frozenset({"CPK_TAG_MISMATCH", "CPK_DIGEST_MISMATCH", "CPK_SIGNATURE_INVALID", "INSTALL_HASH_MISMATCH"})
ROLLBACK_CODES = frozenset({"CPK_ROLLBACK", "TEE_ROLLBACK", "KR_PACKAGE_SVN_TOO_LOW"})


@dataclass(frozen=True)
class Upstream:
    """One upstream message as ``az iot hub monitor-events`` shows it."""

    seq: int
    module: str
    payload: Any
    application: dict[str, Any]
    system: dict[str, Any]

    @classmethod
    def from_monitor(cls, item: Mapping[str, Any]) -> Upstream:
        event = item.get("event", item)
        properties = event.get("properties") or {}
        return cls(int(item.get("seq", 0)), str(event.get("module") or ""), event.get("payload"),
                   dict(properties.get("application") or {}), dict(properties.get("system") or {}))

    @property
    def is_json_utf8(self) -> bool:
        return (self.system.get("content_type") == "application/json"
                and str(self.system.get("content_encoding", "")).lower() == "utf-8" and isinstance(self.payload, dict))


def metrics_with_results(events: Iterable[Upstream], model: str) -> list[Upstream]:
    """Metrics windows (JSON, messageType=metrics) that counted answers from ``model`` (name@version)."""
    found = []
    for e in events:
        if e.application.get("messageType") != "metrics" or not e.is_json_utf8:
            continue
        by_version = ((e.payload.get("inference") or {}).get("byVersion") or {})
        if by_version.get(model, 0) > 0:
            found.append(e)
    return found


def alerts(events: Iterable[Upstream], alert_type: str, codes: frozenset[str]) -> list[Upstream]:
    return [e for e in events
            if e.application.get("messageType") == "alert" and e.is_json_utf8
            and e.payload.get("alertType") == alert_type and e.payload.get("code") in codes]


def answered_everything(sensor_reported: Mapping[str, Any], runner_reported: Mapping[str, Any]) -> tuple[bool, str]:
    """Every frame the sensor sent got exactly one answer (redeliveries are not answered twice)."""
    sent = (sensor_reported.get("sensor") or {}).get("sent")
    stats = runner_reported.get("stats") or {}
    answered, duplicates = stats.get("count"), stats.get("duplicates", 0)
    if not isinstance(sent, int) or not isinstance(answered, int):
        return False, f"counts not reported yet (sent {sent}, answered {answered})"
    ok = sent == answered and duplicates == 0
    return ok, f"sensor sent {sent}, runner answered {answered}, duplicates suppressed {duplicates}"
