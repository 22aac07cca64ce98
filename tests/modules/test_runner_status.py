"""What the runner reports and when: the model status from the facts (``status.model_report``), the
counters' reporting rule (``status.report_wait``), the twin's ``stats`` setting, and the report loop
that applies them (fake module client: what it would patch)."""

from __future__ import annotations

import asyncio
import itertools
import time
from types import SimpleNamespace
from typing import Any

import pytest

from edb.schemas import ErrorInfo, LoadFailure, ModelReport, ModelState
from inference_runner.service import RunnerService
from inference_runner.settings import StatsSettings, parse_stats
from inference_runner.status import Facts, failure_after_load, model_report, report_wait

pytestmark = pytest.mark.timeout(30)

BAD = LoadFailure("m", "2.0.0", ErrorInfo("TEE_MODEL_INVALID", "does not load"), "2026-01-01T00:00:00.000Z")
START = ModelReport(None, None, ModelState.WAITING, "t0")


def status(report: ModelReport) -> tuple[str, str | None, str | None, str | None]:
    return report.state.value, report.name, report.version, report.error.code if report.error else None


def test_the_status_describes_what_serves_and_the_failure_is_kept_apart() -> None:
    """The rollout sequence of one device: 1.0.0 serves, 2.0.0 fails to load, 1.0.0 is reinstalled."""
    serving = model_report(Facts("m", ("m", "1.0.0")), START, "t1")
    assert status(serving) == ("serving", "m", "1.0.0", None) and serving.last_load_failure is None
    loading = model_report(Facts("m", ("m", "1.0.0"), loading="2.0.0"), serving, "t2")
    assert status(loading) == ("loading", "m", "2.0.0", None)
    failed = model_report(Facts("m", ("m", "1.0.0"), failure=BAD), loading, "t3")
    assert status(failed) == ("serving", "m", "1.0.0", None)  # not "failed": 1.0.0 answers
    assert failed.last_load_failure == BAD and failed.to_twin()["lastLoadFailure"]["version"] == "2.0.0"
    # the rollback reinstalls 1.0.0, already serving: nothing to load, the status stays true
    rolled_back = model_report(Facts("m", ("m", "1.0.0"), failure=BAD), failed, "t4")
    assert status(rolled_back) == ("serving", "m", "1.0.0", None) and rolled_back.since == "t3"


def test_failed_only_when_nothing_serves_and_waiting_says_why() -> None:
    failed = model_report(Facts("m", None, failure=BAD), START, "t1")
    assert status(failed) == ("failed", "m", None, "TEE_MODEL_INVALID")
    assert failed.version is None  # (a version with "failed" used to mean "this one still serves")
    waiting = model_report(Facts("m", None, waiting="m is not installed", failure=BAD), failed, "t2")
    assert status(waiting) == ("waiting", "m", None, "RUNNER_WAITING") and waiting.last_load_failure == BAD
    other = model_report(Facts("n", None, failure=BAD), START, "t3")  # a failure of another model
    assert status(other) == ("waiting", "n", None, None)
    assert status(model_report(Facts(None, None), failed, "t4")) == ("waiting", None, None, None)
    assert status(model_report(Facts(None, ("m", "1.0.0")), START, "t5")) == ("serving", "m", "1.0.0", None)


def test_since_changes_with_the_status_only_and_a_load_clears_its_own_failure() -> None:
    first = model_report(Facts("m", ("m", "1.0.0")), START, "t1")
    assert model_report(Facts("m", ("m", "1.0.0")), first, "t2") == first
    with_failure = model_report(Facts("m", ("m", "1.0.0"), failure=BAD), first, "t3")
    assert with_failure.since == "t1" and with_failure != first  # reported, the status unchanged
    assert failure_after_load(BAD, "m", "2.0.0") is None  # that version loads after all
    assert failure_after_load(BAD, "m", "1.0.0") is BAD and failure_after_load(BAD, "n", "2.0.0") is BAD
    assert failure_after_load(None, "m", "1.0.0") is None


def test_load_failure_twin_form_round_trips_and_never_raises() -> None:
    assert LoadFailure.from_twin(BAD.to_twin()) == BAD
    for bad in (None, 3, {}, {"name": "m"}, {"name": "m", "error": {"code": 1}}, {"name": 2, "error": {"code": "X"}},
                {"name": "m", "version": 3, "error": {"code": "X"}}):
        assert LoadFailure.from_twin(bad) is None
    assert LoadFailure.from_twin({"name": "m", "version": None, "error": {"code": "X"}}) == \
        LoadFailure("m", None, ErrorInfo("X", ""), "")


def test_report_wait_rule() -> None:
    # a change of status or settings, or the first report: at once
    assert report_wait(now=100.0, last_sent=99.0, urgent=True, counters_changed=False, interval_s=60) == 0.0
    assert report_wait(now=100.0, last_sent=None, urgent=False, counters_changed=False, interval_s=60) == 0.0
    # counters: at most once per interval, and only when they changed
    assert report_wait(now=100.0, last_sent=90.0, urgent=False, counters_changed=True, interval_s=60) == 50.0
    assert report_wait(now=150.0, last_sent=90.0, urgent=False, counters_changed=True, interval_s=60) == 0.0
    assert report_wait(now=500.0, last_sent=90.0, urgent=False, counters_changed=False, interval_s=60) is None


def test_stats_setting_from_the_twin() -> None:
    default = StatsSettings(60.0)
    assert parse_stats(None, default) == default and parse_stats({}, default) == default
    assert parse_stats({"reportIntervalSeconds": None}, StatsSettings(7.0)) == StatsSettings(7.0)
    assert parse_stats({"reportIntervalSeconds": 5}) == StatsSettings(5.0)
    assert parse_stats({"reportIntervalSeconds": 300.5}).to_twin() == {"reportIntervalSeconds": 300.5}  # type: ignore[union-attr]
    for bad in ([], {"reportIntervalSeconds": 2}, {"reportIntervalSeconds": 4000}, {"reportIntervalSeconds": True},
                {"reportIntervalSeconds": "60"}, {"interval": 60}):
        refused = parse_stats(bad)
        assert isinstance(refused, ErrorInfo) and refused.code == "RUNNER_INVALID_DESIRED", bad


async def test_the_twin_sets_the_interval_and_the_production_default_is_60_s() -> None:
    twin = Twin({"model": {"name": "m"}})
    service = RunnerService(twin, Tee())
    await service.load_twin()
    assert service.reported_patch()["stats"]["reportIntervalSeconds"] == 60.0
    await service.on_desired_patch({"stats": {"reportIntervalSeconds": 5}})
    assert service.stats_settings.report_interval_s == 5.0 and service.desired_error is None
    await service.on_desired_patch({"stats": {"reportIntervalSeconds": 1}})  # below the minimum: refused
    assert service.desired_error is not None and "reportIntervalSeconds" in service.desired_error.message
    assert service.reported_patch()["stats"]["reportIntervalSeconds"] == 5.0  # the last valid one stays
    await service.on_desired_patch({"stats": None})
    assert service.stats_settings.report_interval_s == 60.0 and service.desired_error is None


class Twin:
    """The module client's twin side: desired in, reported patches out (with the time of each)."""

    def __init__(self, desired: dict[str, Any]) -> None:
        self.desired = desired
        self.patches: list[tuple[float, dict[str, Any]]] = []

    async def get_twin(self) -> dict[str, Any]:
        return {"desired": {"$version": 1, **self.desired}, "reported": {}}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        self.patches.append((time.monotonic(), patch))

    async def send_message_to_output(self, message: Any, output: str) -> None:
        pass


class Tee:
    def __init__(self) -> None:
        self.version = "1.0.0"

    def list_installed(self) -> list[Any]:
        return [SimpleNamespace(name="m", version=self.version)]

    def load_model(self, name: str) -> Any:
        return SimpleNamespace(version=self.version)

    def unload(self, handle: Any) -> None:
        pass


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_report_loop_sends_counters_no_more_often_than_the_interval() -> None:
    twin = Twin({"model": {"name": "m"}})
    # the harness's own interval (the twin's minimum is 5 s; a real interval would make this test slow)
    service = RunnerService(twin, Tee(), report_interval_s=0.5)
    await service.load_twin()
    loop = asyncio.create_task(service.report_loop())
    try:
        await _until(lambda: len(twin.patches) == 1)  # the first report at once
        assert twin.patches[0][1]["stats"]["reportIntervalSeconds"] == 0.5
        started = time.monotonic()
        while time.monotonic() - started < 1.6:  # answers every 10 ms for 1.6 s
            service.stats.record(1.0)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.6)  # the last counters go out once
        counts = [p["stats"]["count"] for _, p in twin.patches[1:]]
        assert len(counts) >= 2 and counts == sorted(counts), counts  # ~160 answers in a few patches
        times = [t for t, _ in twin.patches]
        # the property itself: never two counter reports closer than the interval (lower bounds only,
        # so a slow machine cannot fail it)
        assert all(b - a >= 0.45 for a, b in itertools.pairwise(times)), times
        settled = len(twin.patches)
        await asyncio.sleep(1.2)  # nothing changes: nothing is sent
        assert len(twin.patches) == settled
    finally:
        loop.cancel()


async def test_the_report_loop_sends_a_change_of_status_at_once() -> None:
    twin = Twin({"model": {"name": "m"}})
    service = RunnerService(twin, Tee(), report_interval_s=60.0)  # counters would wait a minute
    await service.load_twin()
    loop = asyncio.create_task(service.report_loop())
    try:
        await _until(lambda: len(twin.patches) == 1)
        sent = len(twin.patches)
        await service.select()  # 1.0.0 loads: each change of status goes out at once, not in 60 s
        await _until(lambda: twin.patches[-1][1]["model"]["state"] == "serving", timeout=20.0)
        states = [p["model"]["state"] for _, p in twin.patches[sent:]]
        assert states in (["serving"], ["loading", "serving"]), states  # (a quick load can be one patch)
    finally:
        loop.cancel()
