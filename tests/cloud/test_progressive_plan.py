"""Progressive rollouts, the pure part: plan validation (every bad plan refused with its code), phase
assignment, and the decision state machine (gates, breach, floors, silent devices, clock skew)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edb_cloud.progressive import (
    Advance,
    Breach,
    Complete,
    DeviceObservation,
    DeviceState,
    Idle,
    PlanError,
    RolloutState,
    Stalled,
    Status,
    Wait,
    assign_phases,
    decide,
    eta,
    parse_plan,
)

GATES = {"minSoakSeconds": 10, "maxInstallFailureRate": 0.1, "maxInferenceErrorRate": 0.05,
         "maxLatencyRegression": 1.5, "minReporting": 0.8, "timeoutSeconds": 100}
PLAN = {"target": "*", "phases": [{"name": "canary", "percent": 5, "gates": GATES},
                                  {"name": "early", "percent": 30, "gates": GATES},
                                  {"name": "rest", "percent": 100, "gates": GATES}]}


def plan_with(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(PLAN)
    for path, value in changes.items():
        index, key = path.split("__")
        if key in GATES:
            doc["phases"][int(index)]["gates"][key] = value
        else:
            doc["phases"][int(index)][key] = value
    return doc


@pytest.mark.parametrize(("doc", "code"), [
    ({"target": "*", "phases": []}, "CLOUD_PLAN_EMPTY_PHASE"),
    (plan_with(**{"1__percent": 5}), "CLOUD_PLAN_EMPTY_PHASE"),        # does not grow: empty phase
    (plan_with(**{"1__percent": 0}), "CLOUD_PLAN_EMPTY_PHASE"),
    (plan_with(**{"2__percent": 101}), "CLOUD_PLAN_EMPTY_PHASE"),
    (plan_with(**{"1__name": "canary"}), "CLOUD_PLAN_OVERLAP"),
    ({"target": "*", "phases": [{"name": "a", "condition": "tags.x='1'", "gates": GATES},
                                {"name": "b", "condition": " tags.x='1' ", "gates": GATES}]}, "CLOUD_PLAN_OVERLAP"),
    (plan_with(**{"0__timeoutSeconds": 10}), "CLOUD_PLAN_GATE_UNEVALUABLE"),  # soak == timeout: always stalls
    (plan_with(**{"0__minReporting": 1.5}), "CLOUD_PLAN_GATE_UNEVALUABLE"),
    (plan_with(**{"0__minReporting": 0}), "CLOUD_PLAN_GATE_UNEVALUABLE"),
    (plan_with(**{"0__maxLatencyRegression": 0.5}), "CLOUD_PLAN_GATE_UNEVALUABLE"),  # would breach on no change
    (plan_with(**{"0__maxInstallFailureRate": -0.1}), "CLOUD_PLAN_GATE_UNEVALUABLE"),
    (plan_with(**{"0__maxInferenceErrorRate": float("nan")}), "CLOUD_PLAN_INVALID"),
    (plan_with(**{"0__minSoakSeconds": True}), "CLOUD_PLAN_INVALID"),
    ({"target": "*", "phases": [{"name": "a", "percent": 5, "gates": {"maxInstallFailureRate": 0.1}}]},
     "CLOUD_PLAN_INVALID"),                                               # soak is required
    ({"target": "*", "phases": [{"name": "a", "percent": 5, "gates": {"minSoakSeconds": 1, "typo": 1}}]},
     "CLOUD_PLAN_INVALID"),
    ({"target": "*", "phases": [{"name": "a", "percent": 5, "condition": "tags.x='1'", "gates": GATES}]},
     "CLOUD_PLAN_INVALID"),
    ({"target": "", "phases": PLAN["phases"]}, "CLOUD_PLAN_INVALID"),
    ({"target": "*", "phases": [{"name": "bad name'", "percent": 5, "gates": GATES}]}, "CLOUD_PLAN_INVALID"),
    ([], "CLOUD_PLAN_INVALID"),
])
def test_bad_plans_are_refused_with_a_code(doc: Any, code: str) -> None:
    with pytest.raises(PlanError) as refused:
        parse_plan(doc)
    assert refused.value.code == code


def test_percentages_are_cumulative_and_the_order_is_stable_per_rollout() -> None:
    plan = parse_plan(PLAN)
    devices = [f"d{n:03d}" for n in range(200)]
    phases = assign_phases(plan, "r1", devices, {})
    assert [len(p) for p in phases] == [10, 50, 140]
    assert sorted(d for p in phases for d in p) == devices  # every device once
    assert phases == assign_phases(plan, "r1", list(reversed(devices)), {})
    assert phases[0] != assign_phases(plan, "r2", devices, {})[0]  # another rollout, another canary
    small = assign_phases(plan, "r1", devices[:10], {})  # 5% of 10 rounds up to one device
    assert [len(p) for p in small] == [1, 2, 7]


def test_small_populations_refuse_a_phase_left_empty() -> None:
    plan = parse_plan({"target": "*", "phases": [{"name": "a", "percent": 50, "gates": GATES},
                                                 {"name": "b", "percent": 60, "gates": GATES}]})
    with pytest.raises(PlanError) as empty:
        assign_phases(plan, "r1", ["x", "y", "z"], {})  # 50% and 60% of 3 devices are both 2 devices
    assert empty.value.code == "CLOUD_PLAN_EMPTY_PHASE"
    with pytest.raises(PlanError) as nobody:
        assign_phases(plan, "r1", [], {})
    assert nobody.value.code == "CLOUD_PLAN_EMPTY_PHASE"


def test_condition_phases_refuse_overlap_and_empty_matches() -> None:
    plan = parse_plan({"target": "*", "phases": [{"name": "lab", "condition": "tags.site='lab'", "gates": GATES},
                                                 {"name": "rest", "percent": 100, "gates": GATES}]})
    assert assign_phases(plan, "r", ["a", "b", "c"], {"lab": {"a"}}) == [["a"], ["b", "c"]]
    with pytest.raises(PlanError) as empty:
        assign_phases(plan, "r", ["a", "b"], {"lab": {"zzz"}})  # matches nobody in the population
    assert empty.value.code == "CLOUD_PLAN_EMPTY_PHASE"
    two = parse_plan({"target": "*", "phases": [{"name": "x", "condition": "tags.a='1'", "gates": GATES},
                                                {"name": "y", "condition": "tags.b='1'", "gates": GATES}]})
    with pytest.raises(PlanError) as overlap:
        assign_phases(two, "r", ["a", "b"], {"x": {"a"}, "y": {"a", "b"}})
    assert overlap.value.code == "CLOUD_PLAN_OVERLAP"


def serving(device: str, p50: float = 2.0, answers: int = 100, errors: int = 0, svn: int = 2) -> DeviceObservation:
    return DeviceObservation(device, DeviceState.SERVING, answers, errors, p50, svn)


STATE = RolloutState("r1", Status.RUNNING, 0, phase_started=1000.0, started=1000.0, baseline_p50_ms=2.0)


def run(observations: list[DeviceObservation], now: float, state: RolloutState = STATE,
        previous_svn: int | None = 2, new_svn: int = 2) -> Any:
    return decide(parse_plan(PLAN), state, observations, now, previous_svn=previous_svn, new_svn=new_svn)


def test_gates_wait_for_soak_and_reporting_then_advance_then_complete() -> None:
    healthy = [serving(f"d{n}") for n in range(10)]
    early = run(healthy, 1005.0)
    assert isinstance(early, Wait) and early.waiting_for == ("minSoakSeconds",)
    partial = run(healthy[:7] + [DeviceObservation(f"p{n}", DeviceState.INSTALLING) for n in range(3)], 1011.0)
    assert isinstance(partial, Wait) and partial.waiting_for == ("minReporting",)  # 0.7 < 0.8
    assert partial.values.counts["installing"] == 3 and partial.values.counts["serving"] == 7
    advance = run(healthy, 1010.0)
    assert isinstance(advance, Advance) and advance.next_phase == 1
    last = RolloutState("r1", Status.RUNNING, 2, 1000.0, 900.0, 2.0)
    assert isinstance(run(healthy, 1010.0, last), Complete)
    no_answers = [DeviceObservation(f"d{n}", DeviceState.SERVING, 0, 0, None, 2) for n in range(10)]
    waiting = run(no_answers, 1010.0)
    assert isinstance(waiting, Wait) and set(waiting.waiting_for) == {"maxInferenceErrorRate", "maxLatencyRegression"}


@pytest.mark.parametrize(("observations", "gate"), [
    ([serving(f"d{n}") for n in range(8)] + [DeviceObservation("f1", DeviceState.FAILED),
                                             DeviceObservation("f2", DeviceState.FAILED)], "maxInstallFailureRate"),
    ([serving("d0", errors=60)] + [serving(f"d{n}") for n in range(1, 10)], "maxInferenceErrorRate"),
    ([serving(f"d{n}", p50=4.0) for n in range(10)], "maxLatencyRegression"),
])
def test_a_breach_halts_at_once_even_during_the_soak(observations: list[DeviceObservation], gate: str) -> None:
    decision = run(observations, 1001.0)  # one second into a 10 s soak
    assert isinstance(decision, Breach) and decision.gate == gate
    assert set(decision.rollback) == {o.device_id for o in observations} and decision.floor_blocked == ()


def test_rollback_floors_decide_which_devices_can_go_back() -> None:
    observations = [serving("raised", svn=3), DeviceObservation("failed", DeviceState.FAILED, installed_svn=None),
                    DeviceObservation("f2", DeviceState.FAILED), DeviceObservation("pending", DeviceState.PENDING)]
    decision = run(observations, 1001.0, previous_svn=2, new_svn=3)
    assert isinstance(decision, Breach)
    assert decision.floor_blocked == ("raised",)  # installed security version 3 > the previous release's 2
    assert decision.rollback == ("f2", "failed", "pending")
    first_release = run(observations, 1001.0, previous_svn=None, new_svn=3)
    assert isinstance(first_release, Breach) and len(first_release.floor_blocked) == 4  # nothing to go back to


def test_devices_that_never_report_stall_the_phase_at_its_timeout() -> None:
    observations = [serving(f"d{n}") for n in range(5)] + [DeviceObservation(f"s{n}", DeviceState.PENDING)
                                                           for n in range(5)]
    assert isinstance(run(observations, 1099.0), Wait)
    stalled = run(observations, 1100.0)
    assert isinstance(stalled, Stalled) and stalled.silent == tuple(f"s{n}" for n in range(5))


def test_clock_skew_and_stopped_states() -> None:
    healthy = [serving(f"d{n}") for n in range(10)]
    # the orchestrator's clock went back (or the state was written by a host ahead of it): no time passed
    behind = run(healthy, 500.0)
    assert isinstance(behind, Wait) and behind.values.soak_s == 0.0
    for status in (Status.PAUSED, Status.HALTED, Status.ABORTED, Status.DONE):
        stopped = RolloutState("r1", status, 0, 1000.0, 1000.0, 2.0)
        assert run(healthy, 5000.0, stopped) == Idle(status)


def test_eta_counts_the_soak_left_and_the_pace() -> None:
    plan = parse_plan(PLAN)
    assert eta(plan, STATE, 1000.0).seconds == 30.0
    later = RolloutState("r1", Status.RUNNING, 1, phase_started=1040.0, started=1000.0, baseline_p50_ms=2.0)
    estimate = eta(plan, later, 1045.0)
    assert estimate.seconds is not None and estimate.seconds == pytest.approx(15 * 3.0)  # 45 s for 15 s of soak
    assert eta(plan, RolloutState("r1", Status.PAUSED, 0, 0, 0), 10).seconds is None


def test_transient_failures_are_installing_and_errors_count_from_when_first_seen_serving() -> None:
    from edb_cloud.progressive_driver import is_transient, since_watching

    for code in ("KR_RATE_LIMITED", "KR_BUSY", "KR_NONCE_STORE_UNAVAILABLE", "INSTALL_TIMEOUT", "TEE_BUSY"):
        assert is_transient(code)
    for code in ("KR_DEVICE_NOT_ALLOWED", "CPK_ROLLBACK", "INSTALL_HASH_MISMATCH", "TEE_MODEL_INVALID", None):
        assert not is_transient(code)
    baselines: dict[str, tuple[int, int]] = {}
    first = since_watching([serving("d", answers=500, errors=100)], baselines, "r/0")
    assert (first[0].answers, first[0].errors) == (0, 0)  # "no model yet" answers before the switch drop out
    later = since_watching([serving("d", answers=600, errors=101), DeviceObservation("p", DeviceState.PENDING)],
                           baselines, "r/0")
    assert (later[0].answers, later[0].errors) == (100, 1) and later[1].state is DeviceState.PENDING
    other_phase = since_watching([serving("d", answers=600, errors=101)], baselines, "r/1")
    assert other_phase[0].answers == 0


def test_a_device_is_classified_from_its_installer_and_runner_reports() -> None:
    """The runner reports what serves (``model.state``) and a failed load apart
    (``model.lastLoadFailure``); a runner of before that field reported ``failed`` with the version
    that still served. Both count as a failed load of the new version, never a device that rolled
    back and serves the old one."""
    from edb.schemas import ReportedPackage
    from edb_cloud.progressive_driver import classify

    def installer(state: str, version: str = "2.0.0", code: str | None = None) -> ReportedPackage | None:
        return ReportedPackage.from_twin({"state": state, "version": version, "securityVersion": 1,
                                          "error": {"code": code, "message": ""} if code else None})

    failure = {"name": "digits", "version": "2.0.0", "error": {"code": "TEE_MODEL_INVALID", "message": "x"},
               "at": "2026-01-01T00:00:00.000Z"}

    def state(reported: ReportedPackage | None, **model: Any) -> str:
        return classify("d", "digits", "2.0.0", reported, {"name": "digits", **model},
                        {"count": 5, "errors": 1, "p50Ms": 2.5}).state.value

    serving_new = classify("d", "digits", "2.0.0", installer("installed"),
                           {"name": "digits", "version": "2.0.0", "state": "serving"}, {"count": 5, "errors": 1})
    assert (serving_new.state.value, serving_new.answers, serving_new.errors) == ("serving", 5, 1)
    assert state(installer("installed"), version="1.0.0", state="serving", lastLoadFailure=failure) == "failed"
    assert state(installer("installed"), version=None, state="failed", lastLoadFailure=failure) == "failed"
    assert state(installer("installed"), version="1.0.0", state="failed") == "failed"  # an older runner
    assert state(installer("installed"), version="2.0.0", state="loading", lastLoadFailure=failure) == "installed"
    assert state(installer("installed"), version="1.0.0", state="serving") == "installed"  # not loaded yet
    # rolled back by hand (the installer has 1.0.0 again): the old failure is history, not this version's
    assert state(installer("installed", "1.0.0"), version="1.0.0", state="serving", lastLoadFailure=failure) \
        == "pending"
    assert state(installer("installing"), version="1.0.0", state="serving", lastLoadFailure=failure) == "installing"
    assert state(installer("failed", code="INSTALL_SIGNATURE_INVALID"), version="1.0.0", state="serving") == "failed"
    assert state(installer("failed", code="KR_UNAVAILABLE"), version="1.0.0", state="serving") == "installing"
    assert state(None, version="1.0.0", state="serving") == "pending"
