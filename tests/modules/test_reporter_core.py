"""The reporter's pure parts and its durable store: alerts, windows, store-and-forward."""

from __future__ import annotations

from pathlib import Path

from edb.schemas import (
    AlertType,
    ErrorInfo,
    EventKind,
    InferenceResult,
    ModelRef,
    ModuleEvent,
    decode_json,
    encode_json,
)
from telemetry_reporter.alerts import classify, classify_code, legacy_install
from telemetry_reporter.metrics import Observation, aggregate
from telemetry_reporter.store import ReporterStore


def failed(code: str) -> ModuleEvent:
    return ModuleEvent(EventKind.PACKAGE_FAILED, "package_installer", "digits", "2", None, "failed",
                       ErrorInfo(code, "m"))


def result(i: int, version: str = "1", latency: float = 1.0, ok: bool = True) -> InferenceResult:
    return InferenceResult(f"m{i}", ModelRef("digits", version), [i % 10] if ok else None,
                           expected=i % 10 if i % 4 else (i + 1) % 10, latency_ms=latency,
                           error=None if ok else ErrorInfo("RUNNER_NO_MODEL", "x"))


def test_alert_classification() -> None:
    assert classify_code("CPK_TAG_MISMATCH") is AlertType.TAMPER
    assert classify_code("INSTALL_HASH_MISMATCH") is AlertType.TAMPER
    assert classify_code("TEE_ROLLBACK") is AlertType.ROLLBACK
    assert classify_code("CPK_ROLLBACK") is AlertType.ROLLBACK
    assert classify_code("KR_POLICY_DENIED") is AlertType.DENIAL
    assert classify_code("KR_UNAVAILABLE") is None
    assert classify_code("KR_RATE_LIMITED") is None
    assert classify_code("KR_KEYVAULT_UNAVAILABLE") is None and classify_code("KR_BUSY") is None
    assert classify_code("KR_PACKAGE_SVN_TOO_LOW") is AlertType.ROLLBACK
    assert classify_code("KR_DEVICE_NOT_ALLOWED") is AlertType.DENIAL
    assert classify_code("TEE_SEALED_TAMPERED") is AlertType.TAMPER
    assert classify_code("INSTALL_DOWNLOAD_FAILED") is None
    alert = classify(failed("TEE_ROLLBACK"))
    assert alert is not None and alert.alert_type is AlertType.ROLLBACK and alert.package == "digits"
    assert classify(ModuleEvent(EventKind.PACKAGE_INSTALLED, "i", "digits", "2")) is None
    assert classify_code("KR_UNREACHABLE") is None
    transient = ModuleEvent(EventKind.PACKAGE_FAILED, "i", "digits", "2", error=ErrorInfo("KR_HTTP_418", "x"),
                            retryable=True)
    assert classify(transient) is None


def test_aggregate_counts_rates_percentiles_versions_and_installs() -> None:
    obs = [Observation("result", result(i, "1" if i < 50 else "2", latency=float(i))) for i in range(1, 101)]
    obs = [Observation("result", o.body.to_json()) for o in obs]  # type: ignore[attr-defined]
    obs.append(Observation("result", result(0, ok=False).to_json()))
    obs.append(Observation("event", ModuleEvent(EventKind.PACKAGE_INSTALLED, "i", "digits", "2", 2,
                                                duration_ms=1500.0).to_json()))
    obs.append(Observation("event", ModuleEvent(EventKind.MODEL_LOADED, "r", "digits", "2").to_json()))
    obs.append(Observation("event", failed("CPK_TAG_MISMATCH").to_json()))
    obs.append(Observation("result", {"nonsense": True}))
    report, active = aggregate(obs, active_versions={"digits": "1"}, window_start=0, window_end=10, alerts=1)
    body = report.to_json()
    assert body["inference"]["count"] == 101 and body["inference"]["errors"] == 1
    assert body["inference"]["ratePerSecond"] == 10.1
    assert body["inference"]["latencyMs"]["p50"] == 50 and body["inference"]["latencyMs"]["p99"] == 99
    assert body["inference"]["byVersion"] == {"digits@1": 49, "digits@2": 51}
    assert 0 < body["inference"]["accuracy"] < 1
    assert body["installs"] == {"count": 1, "failed": 1, "durationMs": {"count": 1, "p50": 1500.0, "p95": 1500.0,
                                                                        "p99": 1500.0, "max": 1500.0}}
    assert active == {"digits": "2", "model:digits": "2"}
    assert body["errors"] == {"CPK_TAG_MISMATCH": 1, "REPORTER_BAD_MESSAGE": 1, "RUNNER_NO_MODEL": 1}
    assert body["alerts"] == 1


def test_empty_window_is_well_formed() -> None:
    report, _ = aggregate([], active_versions={}, window_start=0, window_end=5)
    body = report.to_json()
    assert body["inference"]["latencyMs"]["p50"] is None and body["inference"]["accuracy"] is None


def test_store_survives_restart_and_acks_remove_only_sent_messages(tmp_path: Path) -> None:
    path = tmp_path / "reporter.db"
    store = ReporterStore(path)
    store.window_start(100.0)
    for i in range(5):
        store.journal("result", result(i + 1).to_json(), at=101.0)
    alert = classify(failed("CPK_SIGNATURE_INVALID"))
    assert alert is not None
    store.record_alert(alert, now=102.0)
    store.close()

    store = ReporterStore(path)  # restart: nothing lost
    assert store.counts() == {"journal": 5, "outbox": 1}
    store.flush_window(now=110.0)
    assert store.counts() == {"journal": 0, "outbox": 2}
    first, second = store.pending()
    assert first.message_type == "alert" and first.properties["messageType"] == "alert"
    assert first.properties["alertType"] == "tamper"
    metrics = decode_json(second.body)
    assert metrics["inference"]["count"] == 5 and metrics["alerts"] == 1 and metrics["windowSeconds"] == 10
    store.ack(first.id)
    store.close()

    store = ReporterStore(path)
    assert [i.message_type for i in store.pending()] == ["metrics"]
    store.flush_window(now=120.0)
    later = decode_json(store.pending()[1].body)
    assert later["inference"]["count"] == 0 and later["alerts"] == 0 and later["windowSeconds"] == 10
    store.close()


def test_full_outbox_drops_old_metrics_never_alerts(tmp_path: Path) -> None:
    store = ReporterStore(tmp_path / "r.db", max_outbox=3)
    store.window_start(0)
    alert = classify(failed("TEE_ROLLBACK"))
    assert alert is not None
    store.record_alert(alert, now=0)
    for t in range(1, 5):
        store.flush_window(now=float(t))
    items = store.pending()
    assert [i.message_type for i in items] == ["alert", "metrics", "metrics"]
    store.flush_window(now=10.0)
    newest = decode_json(store.pending()[-1].body)
    assert newest["errors"]["REPORTER_OUTBOX_DROPPED"] >= 1
    store.close()


def test_redelivered_messages_are_journaled_once(tmp_path: Path) -> None:
    store = ReporterStore(tmp_path / "r.db")
    store.window_start(0)
    body = result(1).to_json()
    assert store.journal("result", body, at=1.0, message_id="m-1")
    assert not store.journal("result", body, at=2.0, message_id="m-1")
    assert store.journal("result", body, at=2.0, message_id="m-2")
    store.close()
    store = ReporterStore(tmp_path / "r.db")  # remembered across a restart
    assert not store.journal("result", body, at=3.0, message_id="m-2")
    store.flush_window(now=10.0)
    assert decode_json(store.pending()[0].body)["inference"]["count"] == 2
    store.close()


def installed(name: str, version: str, key_flow: str | None) -> ModuleEvent:
    return ModuleEvent(EventKind.PACKAGE_INSTALLED, "package_installer", name, version, 0, "installed",
                       key_flow=key_flow)


def test_a_legacy_install_raises_one_warning_per_package_across_restarts(tmp_path: Path) -> None:
    assert legacy_install(installed("digits", "1.0.0", None)) is None            # attested release: nothing
    assert legacy_install(failed("INSTALL_LEGACY_UNSUPPORTED")) is None         # not an install
    first = legacy_install(installed("digits", "1.0.0", "legacy-wrapkey"))
    assert first is not None
    alert, once_key = first
    assert alert.alert_type is AlertType.LEGACY_KEY_FLOW and alert.severity == "warning"
    assert alert.code == "INSTALL_LEGACY_KEY_FLOW" and alert.package == "digits"
    # the event survives the JSON hop between the modules with its keyFlow
    assert legacy_install(ModuleEvent.from_json(decode_json(
        encode_json(installed("digits", "1.0.0", "legacy-wrapkey").to_json())))) is not None

    path = tmp_path / "r.db"
    store = ReporterStore(path)
    store.window_start(0)
    assert store.record_alert_once(alert, once_key, now=1.0) is not None
    again = legacy_install(installed("digits", "1.1.0", "legacy-wrapkey"))
    assert again is not None and store.record_alert_once(again[0], again[1], now=2.0) is None
    store.close()
    store = ReporterStore(path)                                                  # remembered across a restart
    assert store.record_alert_once(alert, once_key, now=3.0) is None
    other = legacy_install(installed("other", "1.0.0", "legacy-wrapkey"))
    assert other is not None and store.record_alert_once(other[0], other[1], now=4.0) is not None
    items = store.pending()
    assert [i.properties["alertType"] for i in items] == ["legacy-key-flow", "legacy-key-flow"]
    assert [i.properties["severity"] for i in items] == ["warning", "warning"]
    assert [decode_json(i.body)["package"] for i in items] == ["digits", "other"]
    store.flush_window(now=10.0)
    assert decode_json(store.pending()[-1].body)["alerts"] == 2
    store.close()
