"""`edb monitor` (the local `az iot hub monitor-events`) and `edb twin show DEVICE MODULE`.

Both find the hub through `--connection-string`, else `EDB_IOTHUB_CONNECTION_STRING`, else
`<state dir>/local.env`; the CA through `--ca-cert`, `EDB_CA_CERT`, or the same file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from edb_local.hub.client import ServiceClient
from edb_local.hub.monitor_format import event_matches

_COMMON = [
    click.option("--connection-string", "-c", default=None, help="IoT Hub service connection string."),
    click.option("--ca-cert", default=None, type=click.Path(dir_okay=False), help="CA bundle (PEM) for the hub."),
    click.option("--state-dir", default=".edb", show_default=True, type=click.Path(file_okay=False, path_type=Path),
                 help="Local stack state directory (its local.env is read if present)."),
]


def _common(fn: Any) -> Any:
    for option in reversed(_COMMON):
        fn = option(fn)
    return fn


def _property_filter(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        key, sep, expected = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="--property")
        out[key] = expected
    return out


def _emit(event: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(event, separators=(",", ":")) if as_json else json.dumps(event, indent=4))


@click.command("monitor")
@_common
@click.option("--device", "-d", "device_id", default=None, help="Only events from this device.")
@click.option("--module", "-m", "module_id", default=None, help="Only events from this module.")
@click.option("--property", "-p", "properties", multiple=True, metavar="KEY=VALUE",
              help="Only events with this application property (repeatable).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new events.")
@click.option("--since", type=int, default=None, help="Start after this sequence number.")
@click.option("--tail", type=int, default=None, help="Start with the last N stored events.")
@click.option("--timeout", type=float, default=None, help="With --follow: stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON event per line (for scripts).")
def monitor(connection_string: str | None, ca_cert: str | None, state_dir: Path, device_id: str | None,
            module_id: str | None, properties: tuple[str, ...], follow: bool, since: int | None,
            tail: int | None, timeout: float | None, as_json: bool) -> None:
    """Print upstream messages the way `az iot hub monitor-events --properties all` does."""
    wanted = _property_filter(properties)
    client = ServiceClient.from_environment(connection_string, ca_cert, state_dir)
    cursor = since or 0
    if since is None and tail is not None:
        cursor = max(0, client.messages(since=0, limit=1).last - tail)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        wait = 0.0 if not follow else min(20.0, remaining if remaining is not None else 20.0)
        page = client.messages(since=cursor, limit=500, wait=wait)
        cursor = page.next
        for event in page.events:
            event.pop("seq", None)
            if event_matches(event, device=device_id, module=module_id, properties=wanted):
                _emit(event, as_json)
        if not page.events and not follow:
            return


@click.group("twin")
def twin() -> None:
    """Show device and module twins."""


@twin.command("show")
@_common
@click.argument("device")
@click.argument("module", required=False)
@click.option("--json", "as_json", is_flag=True, help="Compact JSON on one line.")
def show(connection_string: str | None, ca_cert: str | None, state_dir: Path, device: str, module: str | None,
         as_json: bool) -> None:
    """Print the twin of DEVICE's MODULE (or of DEVICE itself)."""
    client = ServiceClient.from_environment(connection_string, ca_cert, state_dir)
    doc = client.module_twin(device, module) if module else client.device_twin(device)
    click.echo(json.dumps(doc, separators=(",", ":")) if as_json else json.dumps(doc, indent=4))
