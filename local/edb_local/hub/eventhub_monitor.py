"""`edb monitor` as an Event Hubs consumer (azure-eventhub): the same command reads Azure IoT Hub's
built-in endpoint and the local stand-in's. Settings and the catch-up bookkeeping are pure; the
consumer client is the edge.

Connection string: `--eventhub-connection-string`, else `EDB_EVENTHUB_CONNECTION_STRING`, else
`<state dir>/local.env` (on Azure: `az iot hub connection-string show -n HUB --default-eventhub`).
CA: `--ca-cert`, `EDB_CA_CERT`, the same file; none means certifi's public roots (Azure).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edb_local.hub import errors
from edb_local.hub.client import ENV_CA_CERT, parse_connection_string
from edb_local.hub.errors import HubError

ENV_EVENTHUB_CONNECTION_STRING = "EDB_EVENTHUB_CONNECTION_STRING"
_SOCKET_TIMEOUT = 0.05     # the SDK waits this long per idle partition turn (default 0.2 s)
_CATCH_UP_LIMIT = 120.0     # a non-follow run that cannot reach the end of the log in this long fails


@dataclass(frozen=True)
class MonitorSettings:
    connection_string: str
    host: str
    port: int
    ca_cert: str | None


def resolve_monitor_settings(connection_string: str | None, ca_cert: str | None, *, environ: dict[str, str],
                             env_file: dict[str, str]) -> MonitorSettings:
    """Option, then environment, then `.edb/local.env`."""
    cs = (connection_string or environ.get(ENV_EVENTHUB_CONNECTION_STRING)
          or env_file.get(ENV_EVENTHUB_CONNECTION_STRING))
    if not cs:
        raise HubError(f"no Event Hub-compatible connection string: pass --eventhub-connection-string, set "
                       f"{ENV_EVENTHUB_CONNECTION_STRING}, or run `edb local up`", code=errors.CONFIG_INVALID)
    fields = parse_connection_string(cs)
    missing = {"Endpoint", "SharedAccessKeyName", "SharedAccessKey", "EntityPath"} - fields.keys()
    if missing:
        raise HubError(f"Event Hub connection string lacks {', '.join(sorted(missing))}", code=errors.CONFIG_INVALID)
    endpoint = fields["Endpoint"]
    if not endpoint.startswith("sb://"):
        raise HubError("Event Hub connection string Endpoint must be sb://host/", code=errors.CONFIG_INVALID)
    authority = endpoint[len("sb://"):].split("/")[0]
    host, _, port = authority.partition(":")
    ca = ca_cert or environ.get(ENV_CA_CERT) or env_file.get(ENV_CA_CERT) or None
    if ca and not Path(ca).is_file():
        raise HubError(f"CA bundle {ca} does not exist", code=errors.CONFIG_INVALID)
    return MonitorSettings(cs, host, int(port) if port.isdigit() else AMQPS_PORT, ca)


def parse_enqueued_time(text: str) -> dt.datetime:
    """ISO 8601 (`2026-12-06T18:00:00Z`), or a negative number of seconds before now (`-300`)."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds <= 0:
            return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HubError(f"{text!r} is not an ISO 8601 time or -SECONDS", code=errors.CONFIG_INVALID) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass
class CatchUp:
    """Which partitions have delivered everything that was in them when the monitor started."""

    targets: dict[str, int]                          # partition -> last sequence number at start
    reached: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.reached |= {p for p, last in self.targets.items() if last < 0}

    def seen(self, partition: str, sequence_number: int) -> None:
        if sequence_number >= self.targets.get(partition, -1):
            self.reached.add(partition)

    @property
    def done(self) -> bool:
        return self.reached >= self.targets.keys()


def start_targets(partitions: dict[str, dict[str, Any]], start: Any) -> dict[str, int]:
    """Per partition, the sequence number the monitor must see before it has caught up; -1 when
    there is nothing to see (empty, or everything lies before the start position)."""
    out: dict[str, int] = {}
    for pid, props in partitions.items():
        last = -1 if props["is_empty"] else int(props["last_enqueued_sequence_number"])
        if (isinstance(start, int) and last <= start) or start == "@latest" or (
                isinstance(start, dt.datetime) and props["last_enqueued_time_utc"] < start):
            last = -1
        out[pid] = last
    return out


AMQPS_PORT = 5671
#: AMQP over WebSockets: azure-eventhub always connects to 443 (``_pyamqp.constants.WEBSOCKET_PORT``)
WEBSOCKET_PORT = 443


def probe_tls(settings: MonitorSettings, timeout: float = 10.0, *, port: int | None = None) -> None:
    """Fail fast with a stable code before the SDK's retry loop hides the cause."""
    context = ssl.create_default_context(cafile=settings.ca_cert) if settings.ca_cert else ssl.create_default_context()
    port = port or settings.port
    try:
        with socket.create_connection((settings.host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=settings.host):
            pass
    except ssl.SSLCertVerificationError:
        raise HubError(f"the Event Hub endpoint {settings.host} presented a certificate that does not verify "
                       f"against {settings.ca_cert or 'the system trust store'}", code=errors.TLS_UNTRUSTED) from None
    except OSError as exc:
        raise HubError(f"cannot reach the Event Hub endpoint {settings.host}:{port}: {type(exc).__name__}",
                       code=errors.UNREACHABLE) from None


def run_monitor(settings: MonitorSettings, *, consumer_group: str, start: Any, inclusive: bool, tail: int | None,
                follow: bool, timeout: float | None, emit: Callable[[Any], None], websockets: bool = False) -> None:
    """Receive from every partition; ``emit`` gets each EventData (from one thread at a time).
    Without ``follow`` it returns once every partition delivered what it held at the start.
    ``websockets``: AMQP over WebSockets on 443, for networks that block 5671."""
    from azure.eventhub import EventHubConsumerClient, TransportType
    from azure.eventhub.exceptions import EventHubError

    probe_tls(settings, port=WEBSOCKET_PORT if websockets else None)
    extra: dict[str, Any] = {}
    if not websockets and settings.port != AMQPS_PORT:
        # the SDK takes the host from the connection string but always connects to 5671 there; a
        # port in the Endpoint reaches it only as a custom endpoint address
        extra["custom_endpoint_address"] = f"sb://{settings.host}:{settings.port}"
    client = EventHubConsumerClient.from_connection_string(
        settings.connection_string, consumer_group, connection_verify=settings.ca_cert, retry_total=2,
        socket_timeout=_SOCKET_TIMEOUT,
        transport_type=TransportType.AmqpOverWebsocket if websockets else TransportType.Amqp, **extra)
    lock = threading.Lock()
    finished = threading.Event()
    failures: list[BaseException] = []
    try:
        ids = client.get_partition_ids()
        with ThreadPoolExecutor(max_workers=len(ids) or 1) as pool:   # one AMQP connection per read
            partitions = dict(zip(ids, pool.map(client.get_partition_properties, ids), strict=True))
    except EventHubError as exc:
        client.close()
        raise HubError(f"Event Hub endpoint refused the monitor: {exc}"[:300], code=errors.UNREACHABLE) from None
    catch_up = CatchUp(start_targets(partitions, start))
    held: deque[Any] | None = deque(maxlen=tail) if tail is not None else None

    def flush() -> None:
        nonlocal held
        if held is not None:
            for event in sorted(held, key=lambda e: (e.enqueued_time, e.sequence_number)):
                emit(event)
            held = None

    def on_events(context: Any, events: list[Any]) -> None:
        with lock:
            for event in events:
                if finished.is_set():
                    return
                if held is not None and not catch_up.done:
                    held.append(event)
                else:
                    emit(event)
                catch_up.seen(context.partition_id, event.sequence_number)
                if catch_up.done:
                    flush()
                    if not follow:
                        finished.set()

    def on_error(context: Any, error: BaseException) -> None:
        failures.append(error)

    with lock:
        if catch_up.done:
            flush()
            if not follow:
                client.close()
                return
    worker = threading.Thread(target=client.receive_batch, name="edb-monitor", daemon=True, kwargs={
        "on_event_batch": on_events, "on_error": on_error, "starting_position": start,
        "starting_position_inclusive": inclusive, "max_batch_size": 300, "max_wait_time": 1.0})
    worker.start()
    deadline = time.monotonic() + (timeout if follow and timeout is not None else
                                   _CATCH_UP_LIMIT if not follow else float("inf"))
    try:
        while not finished.is_set() and time.monotonic() < deadline and worker.is_alive():
            finished.wait(min(0.2, max(0.0, deadline - time.monotonic())))
    finally:
        finished.set()
        client.close()
        worker.join(1.0)   # the SDK's partition threads wind down on their own after close()
    if not follow and not catch_up.done:
        cause = f": {failures[-1]}" if failures else ""
        raise HubError(f"the monitor did not reach the end of the event log{cause}"[:300], code=errors.UNREACHABLE)
