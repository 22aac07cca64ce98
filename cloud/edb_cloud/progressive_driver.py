"""Progressive rollouts against IoT Hub: carries out what ``edb_cloud.progressive.decide`` says.

Everything a rollout needs to resume lives in the hub, so the orchestrator can be killed at any
moment and ``edb cloud rollout resume NAME`` (or the same start command again) continues:
- each device's phase is a device twin tag ``edbRollout_<package>_<rolloutId> = '<phase>'`` written
  at the start (``<phase>:rolledback`` once rolled back);
- each phase started is a layered deployment ``edb-rollout-<package>-<rolloutId>-p<k>`` targeting
  its tag, and its **labels** hold the rollout's state (status, phase start time, baseline latency,
  the previous version, the plan as compact JSON). The newest phase's labels are the state.
On completion one layer ``...-final`` points the whole target at the version and the phase layers
and older layers of the package go (the final layer first: the package is desired at every moment).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from edb.schemas import LoadFailure, PackageState, ReportedPackage
from edb_cloud.composition import DeploymentView, check_layer_rollout
from edb_cloud.iothub import HubService
from edb_cloud.progressive import (
    Advance,
    Breach,
    Complete,
    Decision,
    DeviceObservation,
    DeviceState,
    Plan,
    PlanError,
    RolloutState,
    Stalled,
    Status,
    Wait,
    assign_phases,
    decide,
    parse_plan,
)
from edb_cloud.releases import Release, ReleaseRegistry
from edb_cloud.rollout import INSTALLER, RUNNER, deployment_views, device_packages, rollout_metrics

KIND = "progressive"


def tag_key(package: str, rollout_id: str) -> str:
    """One tag per rollout: re-tagging for a new rollout must never pull devices out of an earlier
    (aborted or halted) rollout's layers, which would change what they are desired at once."""
    return f"edbRollout_{re.sub(r'[^A-Za-z0-9]', '_', package)}_{rollout_id}"


def layer_id(package: str, rollout_id: str, suffix: str) -> str:
    return f"edb-rollout-{package}-{rollout_id}-{suffix}".lower()[:128]


@dataclass(frozen=True)
class Rollout:
    package: str
    version: str
    plan: Plan
    state: RolloutState
    previous: str | None
    layers: tuple[DeploymentView, ...]


def _labels(state: RolloutState, package: str, version: str, previous: str | None, plan: Plan) -> dict[str, str]:
    labels = {"app": "edb", "kind": KIND, "package": package, "version": version, "rollout": state.rollout_id,
              "phase": str(state.phase), "status": state.status.value, "started": f"{state.started:.3f}",
              "phaseStarted": f"{state.phase_started:.3f}", "previous": previous or "",
              "baselineP50Ms": "" if state.baseline_p50_ms is None else f"{state.baseline_p50_ms:.4f}",
              "plan": json.dumps(plan.to_json(), separators=(",", ":"))}
    if state.reason:
        labels["reason"] = state.reason[:500]
    return labels


def _from_labels(view: DeploymentView) -> Rollout:
    labels = view.labels
    plan_doc = json.loads(labels["plan"])
    for phase in plan_doc["phases"]:  # to_json writes nulls for unset gates; parse_plan wants them absent
        phase["gates"] = {k: v for k, v in phase["gates"].items() if v is not None}
    baseline = labels.get("baselineP50Ms") or None
    state = RolloutState(labels["rollout"], Status(labels["status"]), int(labels["phase"]),
                         float(labels["phaseStarted"]), float(labels["started"]),
                         float(baseline) if baseline else None, labels.get("reason") or None)
    return Rollout(labels["package"], labels["version"], parse_plan(plan_doc), state, labels.get("previous") or None,
                   (view,))


def find_rollout(hub: HubService, package: str, views: list[DeploymentView] | None = None) -> Rollout | None:
    """The package's newest progressive rollout, read back from its layers' labels."""
    views = deployment_views(hub) if views is None else views
    mine = [v for v in views if v.labels.get("kind") == KIND and v.labels.get("package") == package]
    if not mine:
        return None
    newest = max(mine, key=lambda v: (float(v.labels.get("started", 0)), int(v.labels.get("phase", 0)),
                                      v.id.endswith("-final")))
    rollout = _from_labels(newest)
    return replace(rollout, layers=tuple(v for v in mine if v.labels.get("rollout") == rollout.state.rollout_id))


def _write_state(hub: HubService, rollout: Rollout, state: RolloutState) -> None:
    current = max(rollout.layers, key=lambda v: (int(v.labels.get("phase", 0)), v.id.endswith("-final")))
    hub.update_deployment_labels(current.id, _labels(state, rollout.package, rollout.version, rollout.previous,
                                                     rollout.plan))


def _content(release: Release) -> dict[str, Any]:
    return {"$edgeAgent": {}, INSTALLER: {f"properties.desired.packages.{release.name}": release.desired().to_twin()}}


def _priority(views: list[DeploymentView], package: str) -> int:
    """Above every base and every other layer that sets this package."""
    floor = [20]
    for v in views:
        if not v.layered or f"properties.desired.packages.{package}" in (v.modules_content.get(INSTALLER) or {}):
            floor.append(v.priority + 1)
    return max(floor)


def start(hub: HubService, registry: ReleaseRegistry, release: Release, plan: Plan, *, now: float,
          allow_remove: bool = False) -> Rollout:
    """Start (or, for the same version, pick up again) a progressive rollout. Refused: another version
    of the package rolling out (CLOUD_ROLLOUT_ACTIVE), devices without a base, removals, bad plans."""
    views = deployment_views(hub)
    existing = find_rollout(hub, release.name, views)
    if existing is not None and existing.state.status in (Status.RUNNING, Status.PAUSED, Status.HALTED):
        if existing.version == release.version:
            return existing  # started twice: the same rollout, resumed where the hub says it is
        raise PlanError(f"a rollout of {release.name} {existing.version} is {existing.state.status.value}; abort it "
                        "(`edb cloud rollout abort NAME`) before starting another", code="CLOUD_ROLLOUT_ACTIVE")
    population = hub.edge_devices(plan.target)
    members = {p.name: set(hub.edge_devices(f"({plan.target}) AND ({p.condition})" if plan.target.strip() != "*"
                                            else p.condition))
               for p in plan.phases if p.condition is not None}
    rollout_id = secrets.token_hex(3)
    assignment = assign_phases(plan, rollout_id, population, members)
    priority = _priority(views, release.name)
    whole = DeploymentView("check", priority, "~", True, _content(release), frozenset(population))
    check_layer_rollout(whole, device_packages(hub), views, allow_remove=allow_remove)
    previous, baseline = _previous_and_baseline(hub, release.name, set(population))
    if previous is not None and previous == release.version:
        raise PlanError(f"the population already desires {release.name} {release.version}", code="CLOUD_ROLLOUT_NOOP")
    key = tag_key(release.name, rollout_id)
    for index, devices in enumerate(assignment):
        for device in devices:  # one twin update per device: the hub's throttle at scale (docs/scale.md)
            hub.set_device_tags(device, {key: plan.phases[index].name})
    state = RolloutState(rollout_id, Status.RUNNING, 0, now, now, baseline)
    _put_phase(hub, release, plan, state, previous, priority)
    return find_rollout(hub, release.name) or Rollout(release.name, release.version, plan, state, previous, ())


def _put_phase(hub: HubService, release: Release, plan: Plan, state: RolloutState, previous: str | None,
               priority: int) -> None:
    phase = plan.phases[state.phase]
    condition = f"tags.{tag_key(release.name, state.rollout_id)} = '{phase.name}'"
    hub.put_deployment(layer_id(release.name, state.rollout_id, f"p{state.phase}"), _content(release),
                       target_condition=condition, priority=priority + state.phase,
                       labels=_labels(state, release.name, release.version, previous, plan),
                       metrics=rollout_metrics(release))


def _previous_and_baseline(hub: HubService, package: str, population: set[str]) -> tuple[str | None, float | None]:
    versions: dict[str, int] = {}
    for twin in hub.module_twins(INSTALLER):
        if twin.device_id in population:
            want = (twin.desired.get("packages") or {}).get(package)
            if isinstance(want, Mapping) and isinstance(want.get("version"), str):
                versions[want["version"]] = versions.get(want["version"], 0) + 1
    p50s = []
    for twin in hub.module_twins(RUNNER):
        model, stats = twin.reported.get("model") or {}, twin.reported.get("stats") or {}
        if twin.device_id in population and model.get("name") == package and model.get("state") == "serving" \
                and isinstance(stats.get("p50Ms"), int | float):
            p50s.append(float(stats["p50Ms"]))
    p50s.sort()
    previous = max(versions, key=lambda v: versions[v]) if versions else None
    return previous, (p50s[len(p50s) // 2] if p50s else None)


#: Failures the installer retries by itself (its own list, plus the key release service's transient
#: answers): a device reporting one is still installing, not failed; if it never gets through, the
#: phase stalls at its timeout instead of breaching.
TRANSIENT_CODES = frozenset({
    "INSTALL_DOWNLOAD_FAILED", "INSTALL_TIMEOUT", "INSTALL_INCOMPLETE", "INSTALL_TEE_UNAVAILABLE",
    "INSTALL_INTERNAL", "TEE_UNAVAILABLE", "TEE_CONNECTION_LOST", "TEE_BUSY", "TEE_INSTALL_UNKNOWN",
    "KR_RATE_LIMITED", "KR_BUSY", "KR_UNAVAILABLE", "KR_NONCE_STORE_UNAVAILABLE", "KR_KEYVAULT_UNAVAILABLE",
    "KR_DEADLINE_EXCEEDED", "KR_UNREACHABLE", "KR_INTERNAL",
})


def is_transient(code: str | None) -> bool:
    return code is not None and (code in TRANSIENT_CODES or code.endswith(("_UNAVAILABLE", "_TIMEOUT", "_BUSY")))


def observe(hub: HubService, rollout: Rollout, phase: int) -> list[DeviceObservation]:
    """What the phase's devices report about the new version (three paged queries, any fleet size)."""
    key, value = tag_key(rollout.package, rollout.state.rollout_id), rollout.plan.phases[phase].name
    members = hub.edge_devices(f"tags.{key} = '{value}'")
    rolled_back = set(hub.edge_devices(f"tags.{key} = '{value}:rolledback'"))
    installers = {t.device_id: t for t in hub.module_twins(INSTALLER)}
    runners = {t.device_id: t for t in hub.module_twins(RUNNER)}
    out = []
    for device in sorted(set(members) | rolled_back):
        if device in rolled_back:
            out.append(DeviceObservation(device, DeviceState.ROLLED_BACK))
            continue
        installer, runner = installers.get(device), runners.get(device)
        reported = ReportedPackage.from_twin((installer.reported.get("packages") or {}).get(rollout.package)) \
            if installer else None
        out.append(classify(device, rollout.package, rollout.version, reported,
                            (runner.reported.get("model") or {}) if runner else {},
                            (runner.reported.get("stats") or {}) if runner else {}))
    return out


def classify(device: str, package: str, version: str, reported: ReportedPackage | None,
             model: Mapping[str, Any], stats: Mapping[str, Any]) -> DeviceObservation:
    """One phase device's state for the new ``version`` from its installer's report and its runner's
    reported ``model`` and ``stats`` (pure)."""
    same = model.get("name") == package and model.get("version") == version
    svn = reported.security_version if reported and reported.state is PackageState.INSTALLED else None
    installed = reported is not None and reported.version == version and reported.state is PackageState.INSTALLED
    # (a runner of before lastLoadFailure reported "failed" with the version that still served)
    if same and model.get("state") in ("serving", "failed"):
        p50 = stats.get("p50Ms")
        return DeviceObservation(device, DeviceState.SERVING, int(stats.get("count") or 0),
                                 int(stats.get("errors") or 0), float(p50) if isinstance(p50, int | float) else None,
                                 svn)
    failure = LoadFailure.from_twin(model.get("lastLoadFailure"))
    load_failed = installed and model.get("state") != "loading" and (
        # the runner failed to load what is installed now (the new version): it keeps serving the old
        # one and says so, the failure apart
        (failure is not None and failure.name == package and failure.version == version)
        # nothing serves (version null), or a runner of before lastLoadFailure
        or (model.get("name") == package and model.get("state") == "failed" and model.get("version") != version))
    if load_failed or (reported is not None and reported.version == version and reported.state is PackageState.FAILED
                       and not is_transient(reported.error.code if reported.error else None)):
        return DeviceObservation(device, DeviceState.FAILED, installed_svn=svn)
    if reported is not None and reported.version == version:
        state = DeviceState.INSTALLED if reported.state is PackageState.INSTALLED else DeviceState.INSTALLING
        return DeviceObservation(device, state, installed_svn=svn)
    return DeviceObservation(device, DeviceState.PENDING)


@dataclass(frozen=True)
class StepResult:
    rollout: Rollout
    decision: Decision
    alert: str | None = None


def since_watching(observations: list[DeviceObservation], baselines: dict[str, tuple[int, int]],
                   key: str) -> list[DeviceObservation]:
    """The runner's answers and errors since this orchestrator first saw each device serving in
    this phase (the runner's stats are cumulative since it started, so answers from before the
    switch, e.g. "no model yet", must not count). ``baselines`` lives in the driver's memory: after
    a restart the window starts again (documented)."""
    out = []
    for o in observations:
        if o.state is not DeviceState.SERVING:
            out.append(o)
            continue
        first = baselines.setdefault(f"{key}/{o.device_id}", (o.answers, o.errors))
        out.append(replace(o, answers=max(0, o.answers - first[0]), errors=max(0, o.errors - first[1])))
    return out


def step(hub: HubService, registry: ReleaseRegistry, package: str, *, now: float,
         baselines: dict[str, tuple[int, int]] | None = None) -> StepResult:
    """Read the rollout back from the hub, decide, act. Idempotent: a step repeated after a crash
    finds the layer it created already there and the labels it wrote already written."""
    rollout = find_rollout(hub, package)
    if rollout is None:
        raise PlanError(f"no progressive rollout of {package}", code="CLOUD_ROLLOUT_UNKNOWN")
    release = registry.find(package, rollout.version)
    previous_svn = registry.find(package, rollout.previous).security_version if rollout.previous else None
    observations = observe(hub, rollout, rollout.state.phase) if rollout.state.status is Status.RUNNING else []
    if baselines is not None:
        observations = since_watching(observations, baselines, f"{rollout.state.rollout_id}/{rollout.state.phase}")
    decision = decide(rollout.plan, rollout.state, observations, now, previous_svn=previous_svn,
                      new_svn=release.security_version)
    alert = None
    if isinstance(decision, Advance):
        state = replace(rollout.state, phase=decision.next_phase, phase_started=now)
        base_priority = min(v.priority for v in rollout.layers)
        _put_phase(hub, release, rollout.plan, state, rollout.previous, base_priority)
    elif isinstance(decision, Complete):
        _finish(hub, release, rollout, now)
    elif isinstance(decision, Breach):
        key, phase_name = tag_key(package, rollout.state.rollout_id), rollout.plan.phases[rollout.state.phase].name
        for device in decision.rollback:  # out of the phase's layer: the previous version is desired again
            hub.set_device_tags(device, {key: f"{phase_name}:rolledback"})
        reason = f"breach in phase {phase_name}: {decision.detail}; rolled back {len(decision.rollback)} device(s)"
        if decision.floor_blocked:
            alert = (f"ROLLBACK_FLOOR: {len(decision.floor_blocked)} device(s) cannot go back to "
                     f"{rollout.previous or 'a previous version'} (rollback floor or no previous version): "
                     + ", ".join(decision.floor_blocked[:20]))
            reason += "; " + alert
        _write_state(hub, rollout, replace(rollout.state, status=Status.HALTED, reason=reason))
    elif isinstance(decision, Stalled):
        reason = (f"stalled in phase {rollout.plan.phases[rollout.state.phase].name}: "
                  f"{len(decision.silent)} device(s) not serving the new version by the phase timeout: "
                  + ", ".join(decision.silent[:20]))
        _write_state(hub, rollout, replace(rollout.state, status=Status.HALTED, reason=reason))
    return StepResult(find_rollout(hub, package) or rollout, decision, alert)


def _finish(hub: HubService, release: Release, rollout: Rollout, now: float) -> None:
    priority = max(v.priority for v in rollout.layers)
    final = layer_id(release.name, rollout.state.rollout_id, "final")
    state = replace(rollout.state, status=Status.DONE, phase=len(rollout.plan.phases) - 1, phase_started=now)
    hub.put_deployment(final, _content(release), target_condition=rollout.plan.target, priority=priority,
                       labels=_labels(state, release.name, release.version, rollout.previous, rollout.plan),
                       metrics=rollout_metrics(release))
    covered = set(hub.edge_devices(rollout.plan.target))
    for view in deployment_views(hub):  # the final layer covers these devices: their older layers can go
        sets_package = f"properties.desired.packages.{release.name}" in (view.modules_content.get(INSTALLER) or {})
        if view.layered and sets_package and view.id != final and view.priority <= priority \
                and view.targets <= covered:
            hub.delete_deployment(view.id)


def set_status(hub: HubService, package: str, status: Status, reason: str) -> Rollout:
    """pause / resume / abort. Abort stops; devices keep what they have now (the phase layers stay)."""
    rollout = find_rollout(hub, package)
    if rollout is None:
        raise PlanError(f"no progressive rollout of {package}", code="CLOUD_ROLLOUT_UNKNOWN")
    if status is Status.RUNNING and rollout.state.status is Status.RUNNING:
        return rollout  # resume after the orchestrator stopped: nothing to change, drive on
    allowed = {Status.PAUSED: {Status.RUNNING}, Status.RUNNING: {Status.PAUSED, Status.HALTED},
               Status.ABORTED: {Status.RUNNING, Status.PAUSED, Status.HALTED}}
    if rollout.state.status not in allowed[status]:
        raise PlanError(f"the rollout is {rollout.state.status.value}: cannot go to {status.value}",
                        code="CLOUD_ROLLOUT_STATE")
    state = replace(rollout.state, status=status, reason=reason or None)
    if status is Status.RUNNING and rollout.state.status is Status.HALTED:
        state = replace(state, reason=None)  # resumed after a halt: the operator looked at it
    _write_state(hub, rollout, state)
    return find_rollout(hub, package) or rollout


__all__ = ["Wait", "find_rollout", "observe", "set_status", "start", "step"]
