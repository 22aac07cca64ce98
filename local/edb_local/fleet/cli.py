"""``edb fleet simulate --devices N``, ``edb fleet status``, ``edb fleet down``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edb.cli._common import emit_json, handles_errors


def _config(state_dir: Path | None) -> Any:
    from edb_cloud.config import CloudConfig

    return CloudConfig.load(state_dir)


def _state(config: Any) -> Path:
    return Path(config.state_dir).resolve()


@click.group(name="fleet")
def fleet() -> None:
    """Many simulated edge devices on this machine against the local stack (`edb local up` first)."""


@fleet.command(name="simulate")
@click.option("--devices", "count", type=int, required=True, help="How many simulated edge devices.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--prefix", default="sim", show_default=True, help="Device ids are <prefix>-0000...")
@click.option("--tag", default="sim", show_default=True, help="Device twin tag fleet=<tag>.")
@click.option("--fail-load", "fail_load", type=float, default=0.0, show_default=True,
              help="Fraction of devices whose runner fails to load --fail-load-version.")
@click.option("--fail-load-version", default="*", show_default=True)
@click.option("--offline", type=float, default=0.0, show_default=True, help="Fraction that never connects.")
@click.option("--slow", type=float, default=0.0, show_default=True, help="Fraction with a slow TEE.")
@click.option("--slow-seconds", type=float, default=0.5, show_default=True)
@click.option("--devices-per-process", type=int, default=50, show_default=True)
@click.option("--tees-per-process", type=int, default=50, show_default=True)
@click.option("--frame-interval", type=float, default=2.0, show_default=True, help="Seconds between frames.")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def simulate_cmd(count: int, state_dir: Path | None, prefix: str, tag: str, fail_load: float, fail_load_version: str,
                 offline: float, slow: float, slow_seconds: float, devices_per_process: int, tees_per_process: int,
                 frame_interval: float, as_json: bool) -> None:
    """Provision, register and start N simulated devices (each its own hub identity and TEE state)."""
    from edb_local.fleet.simulate import FaultPlan, simulate

    config = _config(state_dir)
    spec = simulate(_state(config), config, count, prefix=prefix, tag=tag,
                    faults=FaultPlan(fail_load, fail_load_version, offline, slow, slow_seconds),
                    devices_per_process=devices_per_process, tees_per_process=tees_per_process,
                    frame_interval_s=frame_interval)
    doc = {"devices": len(spec.devices), "tag": spec.tag, "processes": spec.pids}
    emit_json({"ok": True, **doc}) if as_json else click.echo(
        f"{len(spec.devices)} simulated devices (tag fleet={spec.tag}) in {len(spec.pids)} processes")


@fleet.command(name="status")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def status_cmd(state_dir: Path | None, as_json: bool) -> None:
    """Processes, faults and what the devices serve (from the hub's module twins)."""
    from edb_cloud.iothub import HubService
    from edb_local.fleet.simulate import status

    config = _config(state_dir)
    doc = status(_state(config), HubService(config.iothub_connection_string, config.ca_cert))
    if as_json:
        emit_json({"ok": True, **doc})
        return
    if not doc["running"]:
        click.echo("no simulated fleet")
        return
    alive = sum(1 for p in doc["processes"].values() if p["alive"])
    click.echo(f"{doc['devices']} devices (fleet={doc['tag']}), {alive}/{len(doc['processes'])} processes alive, "
               f"faults {doc['faults']}, installers connected {doc['installersConnected']}")
    for model, n in sorted(doc["serving"].items()):
        click.echo(f"  serving {model}: {n}")
    click.echo(f"  not serving: {doc['notServing']}")


@fleet.command(name="down")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def down_cmd(state_dir: Path | None, as_json: bool) -> None:
    """Stop the fleet's processes and delete its hub identities (TEE states stay under devices/)."""
    from azure.iot.hub import IoTHubRegistryManager

    from edb.iothub_ca import pin_ca
    from edb_local.fleet.simulate import down

    config = _config(state_dir)
    registry = pin_ca(IoTHubRegistryManager.from_connection_string(config.iothub_connection_string), config.ca_cert)
    doc = down(_state(config), registry)
    emit_json({"ok": True, **doc}) if as_json else click.echo(
        f"stopped {doc['stopped']} processes, removed {doc['removed']} devices")
