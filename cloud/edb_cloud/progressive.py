"""Progressive rollouts: the plan (parsing, validation, phase assignment) and the decision state
machine. Pure code: given the plan, the rollout's state, what the phase's devices report and the
orchestrator's clock, :func:`decide` says what to do next. The driver (``progressive_driver``) reads
the hub, calls it and carries the action out.

A plan (JSON or YAML-free JSON file)::

    {"target": "*",                                   # the population (a twin query condition)
     "phases": [
       {"name": "canary", "percent": 5,  "gates": {...}},       # cumulative share of the population
       {"name": "early",  "percent": 30, "gates": {...}},
       {"name": "rest",   "percent": 100, "gates": {...}}]}
    or a phase {"name": "lab", "condition": "tags.site = 'lab'", "gates": {...}}

Gates (every one optional but ``minSoakSeconds``): ``maxInstallFailureRate`` (failed / phase devices,
installer ``failed`` or runner ``failed`` for the new version), ``maxInferenceErrorRate`` (runner
errors / answers over devices serving the new version), ``maxLatencyRegression`` (median p50 of the
phase's new-version devices / the population's median p50 before the rollout), ``minSoakSeconds``
(from the phase's start, orchestrator clock only), ``minReporting`` (share of the phase's devices that
must be serving the new version, 0 < x <= 1), ``timeoutSeconds`` (the phase halts as stalled when the
other gates have not passed by then).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from edb.errors import EdbError


class PlanError(EdbError):
    code = "CLOUD_PLAN_INVALID"


@dataclass(frozen=True)
class Gates:
    min_soak_s: float
    max_install_failure_rate: float | None = None
    max_error_rate: float | None = None
    max_latency_regression: float | None = None
    min_reporting: float = 1.0
    timeout_s: float = 600.0

    def to_json(self) -> dict[str, Any]:
        return {"minSoakSeconds": self.min_soak_s, "maxInstallFailureRate": self.max_install_failure_rate,
                "maxInferenceErrorRate": self.max_error_rate, "maxLatencyRegression": self.max_latency_regression,
                "minReporting": self.min_reporting, "timeoutSeconds": self.timeout_s}


@dataclass(frozen=True)
class Phase:
    name: str
    gates: Gates
    percent: float | None = None
    condition: str | None = None


@dataclass(frozen=True)
class Plan:
    target: str
    phases: tuple[Phase, ...]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "phases": [
            {"name": p.name, **({"percent": p.percent} if p.percent is not None else {"condition": p.condition}),
             "gates": p.gates.to_json()} for p in self.phases]}


_GATE_KEYS = {"minSoakSeconds", "maxInstallFailureRate", "maxInferenceErrorRate", "maxLatencyRegression",
              "minReporting", "timeoutSeconds"}


def _number(gates: Mapping[str, Any], key: str, phase: str, *, low: float = 0.0, high: float = math.inf,
            default: float | None = None) -> float | None:
    value = gates.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PlanError(f"phase {phase}: {key} must be a number")
    if not low <= value <= high:
        raise PlanError(f"phase {phase}: {key} {value} is outside [{low}, {high}]: the gate could never be "
                        "evaluated or never pass", code="CLOUD_PLAN_GATE_UNEVALUABLE")
    return float(value)


def parse_gates(raw: Any, phase: str) -> Gates:
    if not isinstance(raw, Mapping):
        raise PlanError(f"phase {phase}: gates must be an object")
    unknown = set(raw) - _GATE_KEYS
    if unknown:
        raise PlanError(f"phase {phase}: unknown gates {sorted(unknown)}")
    soak = _number(raw, "minSoakSeconds", phase, high=86400.0)
    if soak is None:
        raise PlanError(f"phase {phase}: minSoakSeconds is required (0 allowed)")
    timeout = _number(raw, "timeoutSeconds", phase, low=1.0, high=7 * 86400.0, default=600.0)
    assert timeout is not None
    if timeout <= soak:
        raise PlanError(f"phase {phase}: timeoutSeconds {timeout} is not above minSoakSeconds {soak}: the phase "
                        "would always stall", code="CLOUD_PLAN_GATE_UNEVALUABLE")
    reporting = _number(raw, "minReporting", phase, low=1e-9, high=1.0, default=1.0)
    assert reporting is not None
    return Gates(min_soak_s=soak, max_install_failure_rate=_number(raw, "maxInstallFailureRate", phase, high=1.0),
                 max_error_rate=_number(raw, "maxInferenceErrorRate", phase, high=1.0),
                 max_latency_regression=_number(raw, "maxLatencyRegression", phase, low=1.0, high=1000.0),
                 min_reporting=reporting, timeout_s=timeout)


def parse_plan(doc: Any) -> Plan:
    """Validate a plan document; every refusal is a PlanError with a stable code."""
    if not isinstance(doc, Mapping):
        raise PlanError("a plan is a JSON object with target and phases")
    target = doc.get("target", "*")
    if not isinstance(target, str) or not target.strip():
        raise PlanError("target must be a non-empty twin query condition ('*' for every edge device)")
    phases_raw = doc.get("phases")
    if not isinstance(phases_raw, list) or not phases_raw:
        raise PlanError("phases must be a non-empty list", code="CLOUD_PLAN_EMPTY_PHASE")
    if len(phases_raw) > 10:
        raise PlanError("at most 10 phases")
    phases: list[Phase] = []
    seen: set[str] = set()
    last_percent = 0.0
    conditions: set[str] = set()
    for index, raw in enumerate(phases_raw):
        if not isinstance(raw, Mapping):
            raise PlanError(f"phase {index}: must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 32:
            raise PlanError(f"phase {index}: name must be 1-32 letters, digits, '-' or '_'")
        if name in seen:
            raise PlanError(f"phase {name}: duplicate name", code="CLOUD_PLAN_OVERLAP")
        seen.add(name)
        percent, condition = raw.get("percent"), raw.get("condition")
        if (percent is None) == (condition is None):
            raise PlanError(f"phase {name}: exactly one of percent or condition")
        gates = parse_gates(raw.get("gates", {}), name)
        if percent is not None:
            if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 < percent <= 100:
                raise PlanError(f"phase {name}: percent must be in (0, 100]", code="CLOUD_PLAN_EMPTY_PHASE")
            if percent <= last_percent:
                raise PlanError(f"phase {name}: percent {percent} does not grow past the previous phase's "
                                f"{last_percent} (percentages are cumulative): the phase would be empty",
                                code="CLOUD_PLAN_EMPTY_PHASE")
            last_percent = float(percent)
            phases.append(Phase(name, gates, percent=float(percent)))
        else:
            if not isinstance(condition, str) or not condition.strip():
                raise PlanError(f"phase {name}: condition must be a non-empty twin query condition",
                                code="CLOUD_PLAN_EMPTY_PHASE")
            if condition.strip() in conditions:
                raise PlanError(f"phase {name}: same condition as an earlier phase", code="CLOUD_PLAN_OVERLAP")
            conditions.add(condition.strip())
            phases.append(Phase(name, gates, condition=condition))
    return Plan(target=target, phases=tuple(phases))


def _rank(rollout_id: str, device_id: str) -> str:
    """A stable pseudo-random order of devices per rollout (no device is always first)."""
    return hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()


def assign_phases(plan: Plan, rollout_id: str, population: list[str],
                  condition_members: Mapping[str, set[str]]) -> list[list[str]]:
    """Devices per phase, decided once at the start. Condition phases take the population devices
    their condition matches; percentage phases take devices in the rollout's stable order until the
    cumulative share is reached. Refuses overlapping or empty phases."""
    remaining = sorted(set(population), key=lambda d: _rank(rollout_id, d))
    total = len(remaining)
    if total == 0:
        raise PlanError(f"no edge device matches the plan's target {plan.target!r}", code="CLOUD_PLAN_EMPTY_PHASE")
    taken: set[str] = set()
    out: list[list[str]] = []
    for phase in plan.phases:
        if phase.condition is not None:
            members = set(condition_members.get(phase.name, set())) & set(population)
            overlap = members & taken
            if overlap:
                raise PlanError(f"phase {phase.name}: {len(overlap)} device(s) already in an earlier phase "
                                f"({', '.join(sorted(overlap)[:5])})", code="CLOUD_PLAN_OVERLAP")
            chosen = sorted(members)
        else:
            assert phase.percent is not None
            want = math.ceil(total * phase.percent / 100.0 - 1e-9)
            chosen = [d for d in remaining if d not in taken][: max(0, want - len(taken))]
        if not chosen:
            raise PlanError(f"phase {phase.name}: no device (population {total})", code="CLOUD_PLAN_EMPTY_PHASE")
        taken.update(chosen)
        out.append(sorted(chosen))
    return out


# -- observations and decisions -----------------------------------------------------------------

class DeviceState(StrEnum):
    PENDING = "pending"          # nothing reported about the new version yet (or offline)
    INSTALLING = "installing"
    INSTALLED = "installed"      # installed, the runner does not serve it yet
    SERVING = "serving"          # the runner serves the new version
    FAILED = "failed"            # installer failed, or the runner failed to load the new version
    ROLLED_BACK = "rolled-back"  # moved out of the phase after a breach


@dataclass(frozen=True)
class DeviceObservation:
    device_id: str
    state: DeviceState
    answers: int = 0
    errors: int = 0
    p50_ms: float | None = None
    installed_svn: int | None = None  # the security version the installer reports installed


class Status(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    DONE = "done"


@dataclass(frozen=True)
class RolloutState:
    rollout_id: str
    status: Status
    phase: int
    phase_started: float       # orchestrator wall clock (epoch seconds)
    started: float
    baseline_p50_ms: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class GateValues:
    devices: int
    counts: dict[str, int]
    install_failure_rate: float
    error_rate: float | None
    latency_regression: float | None
    reporting: float
    soak_s: float

    def to_json(self) -> dict[str, Any]:
        return {"devices": self.devices, "counts": self.counts,
                "installFailureRate": round(self.install_failure_rate, 4),
                "inferenceErrorRate": None if self.error_rate is None else round(self.error_rate, 4),
                "latencyRegression": None if self.latency_regression is None else round(self.latency_regression, 3),
                "reporting": round(self.reporting, 4), "soakSeconds": round(self.soak_s, 1)}


@dataclass(frozen=True)
class Wait:
    values: GateValues
    waiting_for: tuple[str, ...]


@dataclass(frozen=True)
class Advance:
    values: GateValues
    next_phase: int


@dataclass(frozen=True)
class Complete:
    values: GateValues


@dataclass(frozen=True)
class Breach:
    values: GateValues
    gate: str
    detail: str
    rollback: tuple[str, ...]         # devices that can go back to the previous version
    floor_blocked: tuple[str, ...]    # devices whose rollback floor forbids the previous version


@dataclass(frozen=True)
class Stalled:
    values: GateValues
    silent: tuple[str, ...]           # phase devices that never reached the new version


@dataclass(frozen=True)
class Idle:
    status: Status


Decision = Wait | Advance | Complete | Breach | Stalled | Idle


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def gate_values(observations: list[DeviceObservation], baseline_p50_ms: float | None, soak_s: float) -> GateValues:
    counts = {s.value: 0 for s in DeviceState}
    for o in observations:
        counts[o.state.value] += 1
    devices = len(observations)
    serving = [o for o in observations if o.state is DeviceState.SERVING]
    answers = sum(o.answers for o in serving)
    error_rate = sum(o.errors for o in serving) / answers if answers else None
    p50 = _median([o.p50_ms for o in serving if o.p50_ms is not None])
    regression = p50 / baseline_p50_ms if p50 is not None and baseline_p50_ms else None
    return GateValues(devices, counts, counts[DeviceState.FAILED.value] / devices if devices else 0.0, error_rate,
                      regression, len(serving) / devices if devices else 0.0, soak_s)


def decide(plan: Plan, state: RolloutState, observations: list[DeviceObservation], now: float, *,
           previous_svn: int | None, new_svn: int) -> Decision:
    """The next step of a rollout. Breaches are checked first and at every poll (a failure reported
    during the soak halts at once); then the phase passes when every gate holds, or stalls at its
    timeout. Time is the orchestrator's own clock: a clock that went back counts as no time passed."""
    if state.status is not Status.RUNNING:
        return Idle(state.status)
    phase = plan.phases[state.phase]
    gates = phase.gates
    soak = max(0.0, now - state.phase_started)
    values = gate_values(observations, state.baseline_p50_ms, soak)
    breach = _breach(gates, values)
    if breach is not None:
        gate, detail = breach
        rollback, blocked = [], []
        for o in observations:
            # the TEE refuses a package below its floor: a device that installed a higher security
            # version than the previous release cannot go back (previous None: nothing to go back to)
            if previous_svn is None or (o.installed_svn is not None and o.installed_svn > previous_svn
                                        and new_svn > previous_svn and o.state is not DeviceState.FAILED):
                blocked.append(o.device_id)
            else:
                rollback.append(o.device_id)
        return Breach(values, gate, detail, tuple(sorted(rollback)), tuple(sorted(blocked)))
    waiting = []
    if soak < gates.min_soak_s:
        waiting.append("minSoakSeconds")
    if values.reporting < gates.min_reporting:
        waiting.append("minReporting")
    if gates.max_error_rate is not None and values.error_rate is None:
        waiting.append("maxInferenceErrorRate")  # no answers yet: cannot be judged
    if gates.max_latency_regression is not None and values.latency_regression is None:
        waiting.append("maxLatencyRegression")
    if waiting:
        if soak >= gates.timeout_s:
            silent = tuple(sorted(o.device_id for o in observations if o.state is not DeviceState.SERVING))
            return Stalled(values, silent)
        return Wait(values, tuple(waiting))
    if state.phase + 1 < len(plan.phases):
        return Advance(values, state.phase + 1)
    return Complete(values)


def _breach(gates: Gates, values: GateValues) -> tuple[str, str] | None:
    if gates.max_install_failure_rate is not None and values.install_failure_rate > gates.max_install_failure_rate:
        return ("maxInstallFailureRate", f"install failure rate {values.install_failure_rate:.3f} > "
                                         f"{gates.max_install_failure_rate}")
    if gates.max_error_rate is not None and values.error_rate is not None and values.error_rate > gates.max_error_rate:
        return ("maxInferenceErrorRate", f"inference error rate {values.error_rate:.4f} > {gates.max_error_rate}")
    if (gates.max_latency_regression is not None and values.latency_regression is not None
            and values.latency_regression > gates.max_latency_regression):
        return ("maxLatencyRegression", f"p50 latency x{values.latency_regression:.2f} > "
                                        f"x{gates.max_latency_regression}")
    return None


@dataclass(frozen=True)
class Eta:
    seconds: float | None
    basis: str = field(default="")


def eta(plan: Plan, state: RolloutState, now: float) -> Eta:
    """Remaining time: this phase's soak left plus each later phase's soak, scaled by how long the
    phases so far took against their soak (a guess, labelled as one)."""
    if state.status in (Status.DONE, Status.ABORTED):
        return Eta(0.0, "finished")
    if state.status is not Status.RUNNING:
        return Eta(None, f"{state.status.value}: no progress until resumed")
    elapsed_total = max(0.0, now - state.started)
    soak_so_far = sum(p.gates.min_soak_s for p in plan.phases[:state.phase]) + min(
        max(0.0, now - state.phase_started), plan.phases[state.phase].gates.min_soak_s)
    pace = max(1.0, elapsed_total / soak_so_far) if soak_so_far > 0 else 1.0
    left = max(0.0, plan.phases[state.phase].gates.min_soak_s - max(0.0, now - state.phase_started))
    left += sum(p.gates.min_soak_s for p in plan.phases[state.phase + 1:])
    return Eta(round(left * pace, 1), f"soak left x pace {pace:.2f}")
