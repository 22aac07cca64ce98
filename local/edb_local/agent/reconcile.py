"""The reconcile decision: desired modules vs observed processes -> actions (pure, no I/O).

The agent's loop observes its processes, calls :func:`plan`, executes the actions in order and
calls it again whenever something changes (a twin patch, a process exit, a health check result, a
backoff expiry at ``Plan.wake_at``). Everything time-dependent takes ``now`` (a monotonic clock).

Restart policies, as IoT Edge defines them:
- ``never``: never restart;
- ``on-failure``: restart after a crash (non-zero exit, or the process could not start);
- ``on-unhealthy``: also restart when the health check reports unhealthy (the agent stops it first);
- ``always``: restart whenever the module is not running, even after a clean exit.
Restarts back off exponentially: the n-th consecutive restart waits ``min(base * 2**n, max)``
(edgeAgent's shape, with its ``CoolOffTimeUnitInSecs``); a module that ran ``reset_after_s`` before
exiting starts a new series. A module stopped by the agent itself (status ``stopped``, a changed
spec, a removal) is never "restarted"; a changed one is started fresh.

startupOrder: stops come first; starts follow in ascending ``startupOrder`` (ties by module id), and
the agent starts each one only after the previous one is running.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edb_local.agent.deployment import ModuleSpec

StopReason = Literal["stopped", "changed", "unhealthy", "removed"]
StartReason = Literal["new", "changed", "restart", "status"]


@dataclass(frozen=True)
class BackoffPolicy:
    base_s: float = 1.0
    max_s: float = 60.0
    reset_after_s: float = 600.0

    def delay(self, restart_count: int) -> float:
        return float(min(self.base_s * (2 ** min(restart_count, 32)), self.max_s))


@dataclass(frozen=True)
class ModuleObservation:
    """What the agent knows about one module process it manages."""

    fingerprint: str  # of the spec the current/last process was started with
    running: bool
    healthy: bool | None = None  # None: no health check, or no verdict yet
    exit_code: int | None = None  # None while running, or when the process could not be started
    stop_reason: StopReason | None = None  # set when the agent itself stopped it
    restart_count: int = 0
    started_at: float | None = None
    exited_at: float | None = None


@dataclass(frozen=True)
class StartModule:
    spec: ModuleSpec
    reason: StartReason

    @property
    def module_id(self) -> str:
        return self.spec.module_id


@dataclass(frozen=True)
class StopModule:
    module_id: str
    reason: StopReason


@dataclass(frozen=True)
class ForgetModule:
    """The module left the deployment: drop its record and its identity."""

    module_id: str


Action = StartModule | StopModule | ForgetModule


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    wake_at: float | None = None  # earliest moment a backoff expires and the plan changes


def should_restart(policy: str, observation: ModuleObservation) -> bool:
    """Whether a module that is no longer running should run again under its restart policy."""
    if observation.stop_reason == "unhealthy":
        return policy in ("on-unhealthy", "always")
    if observation.stop_reason is not None:  # the agent stopped it on purpose
        return False
    if observation.exit_code == 0:
        return policy == "always"
    return policy in ("on-failure", "on-unhealthy", "always")


def effective_restart_count(observation: ModuleObservation, backoff: BackoffPolicy) -> int:
    """The backoff series restarts after a long enough healthy run."""
    if observation.started_at is not None and observation.exited_at is not None \
            and observation.exited_at - observation.started_at >= backoff.reset_after_s:
        return 0
    return observation.restart_count


def restart_due_at(observation: ModuleObservation, backoff: BackoffPolicy) -> float:
    exited = observation.exited_at if observation.exited_at is not None else 0.0
    return exited + backoff.delay(effective_restart_count(observation, backoff))


def plan(
    desired: Mapping[str, ModuleSpec],
    observed: Mapping[str, ModuleObservation],
    now: float,
    backoff: BackoffPolicy,
    host_provided: frozenset[str] = frozenset(),
) -> Plan:
    """Actions that move ``observed`` toward ``desired``. Host-provided modules (device services
    such as the TEE) are never started or stopped by the agent."""
    stops: list[StopModule] = []
    forgets: list[ForgetModule] = []
    starts: list[StartModule] = []
    wake_at: float | None = None

    for module_id in sorted(observed):
        if module_id not in desired or module_id in host_provided:
            if observed[module_id].running:
                stops.append(StopModule(module_id, "removed"))
            forgets.append(ForgetModule(module_id))

    for module_id, spec in desired.items():
        if module_id in host_provided:
            continue
        seen = observed.get(module_id)
        if seen is None:
            if spec.status == "running":
                starts.append(StartModule(spec, "new"))
            continue
        if seen.fingerprint != spec.fingerprint:
            if seen.running:
                stops.append(StopModule(module_id, "changed"))
            if spec.status == "running":
                starts.append(StartModule(spec, "changed"))
            continue
        if spec.status == "stopped":
            if seen.running:
                stops.append(StopModule(module_id, "stopped"))
            continue
        # desired running, same spec
        if seen.running:
            if seen.healthy is False and spec.restart_policy in ("on-unhealthy", "always"):
                stops.append(StopModule(module_id, "unhealthy"))
            continue
        if seen.stop_reason in ("stopped", "changed", "removed"):
            starts.append(StartModule(spec, "status"))  # stopped on purpose, now wanted again
            continue
        if not should_restart(spec.restart_policy, seen):
            continue
        due = restart_due_at(seen, backoff)
        if now >= due:
            starts.append(StartModule(spec, "restart"))
        else:
            wake_at = due if wake_at is None else min(wake_at, due)

    starts.sort(key=lambda s: (s.spec.startup_order, s.module_id))
    return Plan(actions=(*stops, *forgets, *starts), wake_at=wake_at)


def runtime_status(
    spec: ModuleSpec | None, observation: ModuleObservation | None, now: float, backoff: BackoffPolicy
) -> str:
    """edgeAgent's runtimeStatus vocabulary: running, unhealthy, backoff, stopped, failed, unknown."""
    if observation is None:
        return "stopped" if spec is not None and spec.status == "stopped" else "unknown"
    if observation.running:
        return "unhealthy" if observation.healthy is False else "running"
    if observation.stop_reason in ("stopped", "changed", "removed"):
        return "stopped"
    if spec is not None and spec.status == "running" and spec.fingerprint == observation.fingerprint \
            and should_restart(spec.restart_policy, observation):
        return "backoff"
    if observation.stop_reason == "unhealthy":
        return "unhealthy"
    return "stopped" if observation.exit_code == 0 else "failed"
