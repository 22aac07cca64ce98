"""The reconcile decision (pure): desired modules vs observed processes -> actions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edb_local.agent.deployment import ModuleSpec
from edb_local.agent.reconcile import (
    BackoffPolicy,
    ForgetModule,
    ModuleObservation,
    StartModule,
    StopModule,
    plan,
    runtime_status,
    should_restart,
)

BACKOFF = BackoffPolicy(base_s=1.0, max_s=8.0, reset_after_s=100.0)


def spec(module_id: str, *, status: str = "running", policy: str = "always", order: int = 10,
         image: str = "reg/app:1", version: str = "1.0") -> ModuleSpec:
    return ModuleSpec(module_id, version, status, policy, order, image)


def running(s: ModuleSpec, **kw: object) -> ModuleObservation:
    return ModuleObservation(fingerprint=s.fingerprint, running=True, started_at=0.0, **kw)  # type: ignore[arg-type]


def exited(s: ModuleSpec, code: int | None, *, at: float = 10.0, restarts: int = 0,
           reason: str | None = None, started: float = 5.0) -> ModuleObservation:
    return ModuleObservation(fingerprint=s.fingerprint, running=False, exit_code=code, stop_reason=reason,  # type: ignore[arg-type]
                             restart_count=restarts, started_at=started, exited_at=at)


def test_new_modules_start_in_startup_order_then_id() -> None:
    a, b, c = spec("a", order=2), spec("b", order=0), spec("c", order=2)
    result = plan({"a": a, "b": b, "c": c}, {}, 0.0, BACKOFF)
    assert result.actions == (StartModule(b, "new"), StartModule(a, "new"), StartModule(c, "new"))


def test_desired_stopped_module_is_not_started_and_running_one_is_stopped() -> None:
    s = spec("m", status="stopped")
    assert plan({"m": s}, {}, 0.0, BACKOFF).actions == ()
    assert plan({"m": s}, {"m": running(s)}, 0.0, BACKOFF).actions == (StopModule("m", "stopped"),)


def test_running_module_with_same_spec_is_left_alone() -> None:
    s = spec("m")
    assert plan({"m": s}, {"m": running(s)}, 0.0, BACKOFF).actions == ()


@pytest.mark.parametrize("change", [
    {"image": "reg/app:2"}, {"version": "2.0"}, {"env": (("A", "1"),)}, {"create_options_json": '{"Cmd":["x"]}'},
])
def test_changed_module_is_stopped_then_started(change: dict[str, object]) -> None:
    old = spec("m")
    new = replace(old, **change)  # type: ignore[arg-type]
    result = plan({"m": new}, {"m": running(old)}, 0.0, BACKOFF)
    assert result.actions == (StopModule("m", "changed"), StartModule(new, "changed"))


def test_restart_policy_or_status_change_does_not_restart_a_running_module() -> None:
    old = spec("m", policy="always")
    new = replace(old, restart_policy="never")
    assert new.fingerprint == old.fingerprint
    assert plan({"m": new}, {"m": running(old)}, 0.0, BACKOFF).actions == ()


def test_removed_module_is_stopped_and_forgotten_before_any_start() -> None:
    gone, new = spec("gone"), spec("new")
    result = plan({"new": new}, {"gone": running(gone)}, 0.0, BACKOFF)
    assert result.actions == (StopModule("gone", "removed"), ForgetModule("gone"), StartModule(new, "new"))
    assert plan({}, {"gone": exited(gone, 0)}, 0.0, BACKOFF).actions == (ForgetModule("gone"),)


@pytest.mark.parametrize(("policy", "exit_code", "reason", "restarts"), [
    ("never", 1, None, False), ("never", 0, None, False),
    ("on-failure", 1, None, True), ("on-failure", 0, None, False), ("on-failure", None, None, True),
    ("on-failure", None, "unhealthy", False),
    ("on-unhealthy", 1, None, True), ("on-unhealthy", 0, None, False), ("on-unhealthy", None, "unhealthy", True),
    ("always", 0, None, True), ("always", 3, None, True), ("always", None, "unhealthy", True),
    ("always", 0, "stopped", False), ("always", 0, "changed", False),
])
def test_restart_policy_table(policy: str, exit_code: int | None, reason: str | None, restarts: bool) -> None:
    s = spec("m", policy=policy)
    assert should_restart(policy, exited(s, exit_code, reason=reason)) is restarts


def test_failed_module_restarts_after_exponential_backoff() -> None:
    s = spec("m", policy="on-failure")
    for count, delay in ((0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (9, 8.0)):
        seen = exited(s, 1, at=100.0, restarts=count, started=99.0)
        waiting = plan({"m": s}, {"m": seen}, 100.0 + delay - 0.01, BACKOFF)
        assert waiting.actions == () and waiting.wake_at == pytest.approx(100.0 + delay)
        assert runtime_status(s, seen, 100.0, BACKOFF) == "backoff"
        assert plan({"m": s}, {"m": seen}, 100.0 + delay, BACKOFF).actions == (StartModule(s, "restart"),)


def test_backoff_series_resets_after_a_long_healthy_run() -> None:
    s = spec("m")
    seen = exited(s, 1, at=500.0, restarts=5, started=300.0)  # ran 200 s >= reset_after_s
    assert plan({"m": s}, {"m": seen}, 501.0, BACKOFF).actions == (StartModule(s, "restart"),)


def test_unhealthy_module_is_stopped_only_under_policies_that_care() -> None:
    for policy, expect in (("on-unhealthy", True), ("always", True), ("on-failure", False), ("never", False)):
        s = spec("m", policy=policy)
        actions = plan({"m": s}, {"m": running(s, healthy=False)}, 0.0, BACKOFF).actions
        assert (actions == (StopModule("m", "unhealthy"),)) is expect
        assert runtime_status(s, running(s, healthy=False), 0.0, BACKOFF) == "unhealthy"


def test_module_stopped_on_purpose_starts_at_once_when_wanted_again() -> None:
    s = spec("m", policy="never")
    seen = exited(s, 0, reason="stopped", restarts=4)
    assert plan({"m": s}, {"m": seen}, 10.0, BACKOFF).actions == (StartModule(s, "status"),)


def test_host_provided_modules_are_never_started_or_stopped() -> None:
    tee, app = spec("teeService", order=0), spec("app")
    result = plan({"teeService": tee, "app": app}, {}, 0.0, BACKOFF, host_provided=frozenset({"teeService"}))
    assert result.actions == (StartModule(app, "new"),)


def test_runtime_status_vocabulary() -> None:
    s = spec("m", policy="never")
    assert runtime_status(s, None, 0.0, BACKOFF) == "unknown"
    assert runtime_status(spec("m", status="stopped"), None, 0.0, BACKOFF) == "stopped"
    assert runtime_status(s, running(s), 0.0, BACKOFF) == "running"
    assert runtime_status(s, exited(s, 0), 0.0, BACKOFF) == "stopped"
    assert runtime_status(s, exited(s, 2), 0.0, BACKOFF) == "failed"
    assert runtime_status(s, exited(s, None), 0.0, BACKOFF) == "failed"
    assert runtime_status(s, exited(s, -15, reason="stopped"), 0.0, BACKOFF) == "stopped"


def test_plan_is_deterministic_for_many_modules() -> None:
    desired = {f"m{i:02d}": spec(f"m{i:02d}", order=i % 3) for i in range(20)}
    first = plan(desired, {}, 0.0, BACKOFF)
    assert first == plan(dict(reversed(list(desired.items()))), {}, 0.0, BACKOFF)
    orders = [a.spec.startup_order for a in first.actions if isinstance(a, StartModule)]
    assert orders == sorted(orders)
