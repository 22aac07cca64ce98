"""`edb monitor` (an Event Hubs consumer, like `az iot hub monitor-events`) and `edb twin show DEVICE MODULE`.

`edb monitor` reads the built-in endpoint through `--eventhub-connection-string`, else
`EDB_EVENTHUB_CONNECTION_STRING`, else `<state dir>/local.env`; `edb twin show` finds the hub
through `--connection-string`, else `EDB_IOTHUB_CONNECTION_STRING`, else the same file. The CA:
`--ca-cert`, `EDB_CA_CERT`, or the same file (none: the system's public roots, as on Azure).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from edb_local.hub.client import ServiceClient, read_env_file
from edb_local.hub.eventhub_monitor import parse_enqueued_time, resolve_monitor_settings, run_monitor
from edb_local.hub.monitor_format import event_matches, eventhub_event

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
@click.option("--eventhub-connection-string", "-e", default=None,
              help="Event Hub-compatible connection string of the hub's built-in endpoint "
                   "(default: EDB_EVENTHUB_CONNECTION_STRING, then local.env).")
@click.option("--consumer-group", "-g", default="$Default", show_default=True, help="Consumer group to read with.")
@click.option("--device", "-d", "device_id", default=None, help="Only events from this device.")
@click.option("--module", "-m", "module_id", default=None, help="Only events from this module.")
@click.option("--property", "-p", "properties", multiple=True, metavar="KEY=VALUE",
              help="Only events with this application property (repeatable).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming new events.")
@click.option("--since", type=int, default=None, help="Start after this sequence number (in every partition).")
@click.option("--enqueued-time", default=None, metavar="ISO|-SECONDS",
              help="Start with events enqueued at or after this time (ISO 8601, or -300 for 5 minutes ago).")
@click.option("--tail", type=int, default=None, help="Start with the last N stored events.")
@click.option("--timeout", type=float, default=None, help="With --follow: stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One compact JSON event per line (for scripts).")
@click.option("--websockets", is_flag=True, help="AMQP over WebSockets on port 443 (where 5671 is blocked).")
def monitor(connection_string: str | None, ca_cert: str | None, state_dir: Path,
            eventhub_connection_string: str | None, consumer_group: str, device_id: str | None,
            module_id: str | None, properties: tuple[str, ...], follow: bool, since: int | None,
            enqueued_time: str | None, tail: int | None, timeout: float | None, as_json: bool,
            websockets: bool) -> None:
    """Print device-to-cloud events the way `az iot hub monitor-events --properties all` does,
    read from the hub's Event Hub-compatible endpoint (works against Azure IoT Hub too)."""
    wanted = _property_filter(properties)
    if connection_string and not eventhub_connection_string:
        if not connection_string.strip().startswith("Endpoint="):
            raise click.UsageError("edb monitor reads the Event Hub-compatible endpoint: pass its connection string "
                                   "with -e/--eventhub-connection-string (-c names the IoT Hub for `edb twin show`)")
        eventhub_connection_string = connection_string
    settings = resolve_monitor_settings(eventhub_connection_string, ca_cert, environ=dict(os.environ),
                                        env_file=read_env_file(state_dir / "local.env"))
    start: Any = "-1"
    inclusive = False
    if since is not None:
        start = since
    elif enqueued_time is not None:
        start, inclusive = parse_enqueued_time(enqueued_time), True

    def emit(data: Any) -> None:
        body = data.body if isinstance(data.body, bytes) else b"".join(data.body)
        event = eventhub_event(data.system_properties, data.properties, body)
        if event_matches(event, device=device_id, module=module_id, properties=wanted):
            _emit(event, as_json)

    run_monitor(settings, consumer_group=consumer_group, start=start, inclusive=inclusive, tail=tail,
                follow=follow, timeout=timeout, emit=emit, websockets=websockets)


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
