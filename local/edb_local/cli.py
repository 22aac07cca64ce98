"""``edb local up | down | status | logs``: the local stack of Azure stand-ins for one device."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edb_local.supervisor.settings import DEFAULT_DEVICE_ID
from edb_local.supervisor.stack import ComponentStatus, Stack

_STATE_DIR = click.option("--state-dir", type=click.Path(path_type=Path), default=Path(".edb"), show_default=True,
                          help="the stack's state directory (keys, logs, pid files)")
_JSON = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
_COLOURS = {"running": "green", "stopped": "dim", "not installed": "yellow"}


def _table(title: str, statuses: list[ComponentStatus]) -> Table:
    table = Table(title=title)
    for column in ("component", "state", "pid", "detail"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        colour = _COLOURS.get(s.state, "red")
        table.add_row(s.name, f"[{colour}]{s.state}[/{colour}]", str(s.pid or ""), s.detail)
    return table


def _emit(title: str, statuses: list[ComponentStatus], as_json: bool, state_dir: Path) -> None:
    ok = all(s.ok for s in statuses)
    if as_json:
        click.echo(json.dumps({"ok": ok, "stateDir": str(state_dir.resolve()),
                               "components": [s.to_json() for s in statuses]}))
    else:
        Console().print(_table(title, statuses))
    if not ok:
        sys.exit(1)


@click.group(name="local")
def local() -> None:
    """Start, stop and inspect the local stack (hub, Key Vault, key release, Azurite, TEE, edge agent)."""


@local.command()
@_STATE_DIR
@click.option("--device-id", default=None, help=f"the simulated device (first run: {DEFAULT_DEVICE_ID})")
@click.option("--timeout", type=float, default=90.0, show_default=True, help="seconds to wait for health")
@click.option("--legacy-v1", is_flag=True, help="first run only: enable the LEGACY v1 key flow (weaker) on the "
              "device's TEE and the key release service's WrapKey/ProvisionKey routes")
@click.option("--runtime", type=click.Choice(["process", "docker"]), default=None,
              help="first run only: modules (and the TEE) as local processes (default) or as containers of "
                   "the images `edb images build` made, through the Docker Engine API (docs/containers.md)")
@_JSON
def up(state_dir: Path, device_id: str | None, timeout: float, legacy_v1: bool, runtime: str | None,
       as_json: bool) -> None:
    """Generate credentials (first run), start every component, wait until healthy, write local.env."""
    stack = Stack(state_dir, device_id, legacy_v1=legacy_v1, runtime=runtime)
    console = Console(stderr=True)

    def progress(status: ComponentStatus) -> None:
        if not as_json:
            console.print(f"  {status.name}: {status.state}")

    statuses = stack.up(timeout_s=timeout, progress=progress)
    if not as_json:
        click.echo(f"environment: {stack.paths.local_env.resolve()}  (set -a; . {stack.paths.local_env}; set +a)")
        click.echo(f"logs:        {stack.paths.logs.resolve()}/<component>.log")
    _emit("edb local stack", statuses, as_json, state_dir)


@local.command()
@_STATE_DIR
@click.option("--volumes", is_flag=True, help="Docker runtime: also remove the stack's volumes (the device's "
              "TEE state, package cache, reporter store): the next `up` provisions a new device")
@_JSON
def down(state_dir: Path, volumes: bool, as_json: bool) -> None:
    """Stop every component (agent and its modules first); state is kept for the next `up`."""
    _emit("edb local stack: down", Stack(state_dir).down(volumes=volumes), as_json, state_dir)


@local.command()
@_STATE_DIR
@_JSON
def status(state_dir: Path, as_json: bool) -> None:
    """Each component's health (exit status 1 if an installed component is not healthy)."""
    _emit("edb local stack", Stack(state_dir).status(), as_json, state_dir)


@local.command()
@_STATE_DIR
@click.argument("component", required=False)
@click.option("-n", "--lines", type=int, default=40, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines")
def logs(state_dir: Path, component: str | None, lines: int, follow: bool) -> None:
    """Print a component's log (hub, keyvault, keyrelease, azurite, tables, tee, agent) or a module's
    (module:<id>); without COMPONENT, list the logs."""
    log_dir = state_dir / "logs"
    if component is None:
        for path in sorted([*log_dir.glob("*.log"), *log_dir.glob("modules/*.log")]):
            name = path.stem if path.parent == log_dir else f"module:{path.stem}"
            click.echo(f"{name:28} {path.stat().st_size:>10} bytes  {path}")
        return
    path = log_dir / "modules" / f"{component[7:]}.log" if component.startswith("module:") \
        else log_dir / f"{component}.log"
    if not path.exists() or path.parent.resolve() not in (log_dir.resolve(), (log_dir / "modules").resolve()):
        raise click.ClickException(f"no log {path}")
    with path.open(errors="replace") as fh:
        for line in fh.readlines()[-lines:]:
            click.echo(line, nl=False)
        while follow:
            line = fh.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.5)
