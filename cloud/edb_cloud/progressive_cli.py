"""``edb cloud rollout NAME --plan PLAN`` and ``edb cloud rollout status|pause|resume|abort NAME``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from edb.cli._common import emit_json, handles_errors
from edb_cloud.config import CloudConfig
from edb_cloud.iothub import HubService
from edb_cloud.progressive import Breach, PlanError, Stalled, Status, eta, parse_plan
from edb_cloud.releases import Release, ReleaseRegistry

SUBCOMMANDS = ("status", "pause", "resume", "abort")


class RolloutGroup(click.Group):
    """``rollout NAME ...`` runs the rollout itself; ``rollout status NAME`` etc. are subcommands."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                               list[str]]:
        if args and args[0] not in self.commands:
            return "start", self.commands["start"], args
        return super().resolve_command(ctx, args)


def load_plan(path: Path) -> Any:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{path}: not a readable JSON plan ({type(exc).__name__})") from None
    return parse_plan(doc)


def status_json(hub: HubService, package: str, now: float) -> dict[str, Any]:
    from edb_cloud.progressive import gate_values
    from edb_cloud.progressive_driver import find_rollout, observe

    rollout = find_rollout(hub, package)
    if rollout is None:
        raise PlanError(f"no progressive rollout of {package}", code="CLOUD_ROLLOUT_UNKNOWN")
    state = rollout.state
    phase = rollout.plan.phases[state.phase]
    observations = observe(hub, rollout, state.phase) if state.status is not Status.DONE else []
    values = gate_values(observations, state.baseline_p50_ms, max(0.0, now - state.phase_started))
    estimate = eta(rollout.plan, state, now)
    return {"package": package, "version": rollout.version, "previous": rollout.previous,
            "rollout": state.rollout_id, "status": state.status.value, "reason": state.reason,
            "phase": {"index": state.phase, "name": phase.name, "of": len(rollout.plan.phases)},
            "elapsedSeconds": round(max(0.0, now - state.started), 1), "gates": phase.gates.to_json(),
            "values": values.to_json(), "etaSeconds": estimate.seconds, "etaBasis": estimate.basis,
            "deployments": sorted(v.id for v in rollout.layers)}


def render_status(doc: dict[str, Any]) -> str:
    values, gates = doc["values"], doc["gates"]
    counts = " ".join(f"{k}={v}" for k, v in values["counts"].items() if v)
    lines = [f"{doc['package']} {doc['previous'] or '-'} -> {doc['version']}  rollout {doc['rollout']}  "
             f"{doc['status'].upper()}  phase {doc['phase']['index'] + 1}/{doc['phase']['of']} "
             f"({doc['phase']['name']})  elapsed {doc['elapsedSeconds']}s  ETA "
             f"{'-' if doc['etaSeconds'] is None else str(doc['etaSeconds']) + 's'}",
             f"  devices {values['devices']}: {counts or 'none'}",
             f"  gates: install failures {values['installFailureRate']} (max {gates['maxInstallFailureRate']}), "
             f"errors {values['inferenceErrorRate']} (max {gates['maxInferenceErrorRate']}), latency "
             f"x{values['latencyRegression']} (max {gates['maxLatencyRegression']}), serving {values['reporting']} "
             f"(min {gates['minReporting']}), soak {values['soakSeconds']}s (min {gates['minSoakSeconds']}s)"]
    if doc.get("reason"):
        lines.append(f"  reason: {doc['reason']}")
    return "\n".join(lines)


def drive(hub: HubService, registry: ReleaseRegistry, package: str, *, poll_s: float = 1.0,
          deadline_s: float | None = None, echo: Any = None) -> dict[str, Any]:
    """Step the rollout until it is done, halted or aborted (a paused one is waited on)."""
    from edb_cloud.progressive_driver import step

    started = time.monotonic()
    alerts: list[str] = []
    baselines: dict[str, tuple[int, int]] = {}  # each device's runner counters when first seen serving
    while True:
        result = step(hub, registry, package, now=time.time(), baselines=baselines)
        if result.alert:
            alerts.append(result.alert)
            if echo:
                echo(f"ALERT {result.alert}")
        if echo and isinstance(result.decision, Breach | Stalled):
            echo(f"halted: {result.rollout.state.reason}")
        status = result.rollout.state.status
        if status in (Status.DONE, Status.HALTED, Status.ABORTED):
            return {"status": status.value, "reason": result.rollout.state.reason, "alerts": alerts,
                    "rollout": result.rollout.state.rollout_id}
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            return {"status": status.value, "reason": "the driver's --timeout passed; `rollout resume` continues",
                    "alerts": alerts, "rollout": result.rollout.state.rollout_id}
        time.sleep(poll_s)


def start_plan(ctx: click.Context, config: CloudConfig, hub: HubService, registry: ReleaseRegistry, release: Release,
               plan_file: Path, *, wait: bool, as_json: bool, allow_remove: bool = False,
               timeout: float | None = None) -> None:
    from edb_cloud.progressive_driver import start

    plan = load_plan(plan_file)
    rollout = start(hub, registry, release, plan, now=time.time(), allow_remove=allow_remove)
    if not as_json:
        click.echo(f"{release.name} {release.version}: progressive rollout {rollout.state.rollout_id} "
                   f"({len(plan.phases)} phases, previous {rollout.previous or '-'})")
    result: dict[str, Any] = {"rollout": rollout.state.rollout_id, "status": rollout.state.status.value}
    if wait:
        result = drive(hub, registry, release.name, deadline_s=timeout,
                       echo=None if as_json else click.echo)
    ok = result["status"] in ("done", "running", "paused")
    if as_json:
        emit_json({"ok": ok, "name": release.name, "version": release.version, **result})
    else:
        click.echo(f"{release.name} {release.version}: {result['status']}"
                   + (f" ({result['reason']})" if result.get("reason") else ""))
    if not ok:
        ctx.exit(1)


def register(group: click.Group, config_of: Any, hub_of: Any, registry_of: Any) -> None:
    @group.command(name="status")
    @click.argument("name")
    @click.option("--watch", is_flag=True, help="Live view (refreshes every --interval seconds; Ctrl-C stops).")
    @click.option("--interval", type=float, default=1.0, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_context
    @handles_errors
    def status_cmd(ctx: click.Context, name: str, watch: bool, interval: float, as_json: bool) -> None:
        """Phase, device counts per state, gate values and an ETA of NAME's progressive rollout."""
        hub = hub_of(config_of(ctx))
        if not watch:
            doc = status_json(hub, name, time.time())
            emit_json({"ok": True, **doc}) if as_json else click.echo(render_status(doc))
            return
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(console=Console(file=sys.stdout), refresh_per_second=4) as live:
            while True:
                doc = status_json(hub, name, time.time())
                live.update(Text(render_status(doc)))
                if doc["status"] in ("done", "aborted"):
                    return
                time.sleep(interval)

    def _transition(status: Status, help_text: str) -> None:
        @group.command(name={Status.PAUSED: "pause", Status.RUNNING: "resume", Status.ABORTED: "abort"}[status],
                       help=help_text)
        @click.argument("name")
        @click.option("--reason", default="", help="Recorded in the rollout's labels.")
        @click.option("--wait/--no-wait", default=status is Status.RUNNING, show_default=True,
                      help="resume: drive the rollout until it ends.")
        @click.option("--json", "as_json", is_flag=True)
        @click.pass_context
        @handles_errors
        def transition_cmd(ctx: click.Context, name: str, reason: str, wait: bool, as_json: bool) -> None:
            from edb_cloud.progressive_driver import set_status

            config = config_of(ctx)
            hub = hub_of(config)
            rollout = set_status(hub, name, status, reason)
            result: dict[str, Any] = {"rollout": rollout.state.rollout_id, "status": rollout.state.status.value}
            if status is Status.RUNNING and wait:
                result = drive(hub, registry_of(config), name, echo=None if as_json else click.echo)
            emit_json({"ok": True, "name": name, **result}) if as_json else click.echo(
                f"{name}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else ""))

    _transition(Status.PAUSED, "Pause NAME's progressive rollout (no new phase starts; gates still read).")
    _transition(Status.RUNNING, "Resume a paused or halted rollout (after the orchestrator stopped, too).")
    _transition(Status.ABORTED, "Abort: no further phase; devices keep what they have now.")
