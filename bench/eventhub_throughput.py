"""Device -> hub -> consumer through the Event Hub-compatible endpoint, beside today's path, same run.

Senders: `DEVICES` real azure-iot-device aio IoTHubDeviceClients (MQTT, 1 KiB UTF-8 JSON, up to 64
in flight each; one SDK client tops out near 650 msg/s, see docs/iothub-standin.md, so several feed
the endpoint). The hub runs as its own process (`python -m edb_local.hub`).

Readers, at the same time, of the same messages:
- `eventhub_*`: one `azure.eventhub.EventHubConsumerClient` over AMQP/TLS on 5671 (sync by default,
  EDB_BENCH_CONSUMER=aio for the aio client; all partitions, from `@latest`) with `receive_batch`
  and `socket_timeout` (EDB_BENCH_SOCKET_TIMEOUT, default 0.005 s).
- `eventhub_ws_*`: the same consumer with `transport_type=TransportType.AmqpOverWebsocket`
  (`wss://ADDRESS:443/$servicebus/websocket`; websocket-client for sync, aiohttp for aio).
  `--transport tls|websocket|both` (default both) picks which of the two run. (The SDK's sync
  `receive()` hands over one event per partition turn and waits `socket_timeout`, 0.2 s by default,
  on every idle partition in one thread: about 1.25 events/s per partition once a backlog stops
  growing, whatever the server does. `receive_batch` with a short socket timeout avoids it.)
- `baseline_rest_*`: the stand-in's REST long poll (`GET /edb/messages?since=&wait=`), what
  `edb monitor` read before (edb_local.hub.client.ServiceClient).

Throughput: N messages from the first send to the last arrival at that reader (bounded by the
device SDK senders on this machine); `*_backlog_msgs_per_s`: N messages stored with no reader, then
each reader alone drains them (first to last arrival): the endpoint's own delivery rate. Latency:
device send start -> reader callback, one message in flight (`*_p50/p95_ms`), and under the full
load (`*_loaded_p50/p95_ms`). Checkpoint restart: a consumer reads half of `CKPT` messages, closes,
a new one resumes from the last sequence number: `lost` and `duplicates` must both be 0.

The backlog drain and the checkpoint restart run once per transport, one reader alone at a time.

Run: `.venv/bin/python bench/eventhub_throughput.py [--transport both]` (EDB_BENCH_MESSAGES, default
4000). Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _hub import HubProcess
from azure.eventhub import EventHubConsumerClient, TransportType
from azure.eventhub.aio import EventHubConsumerClient as AsyncConsumerClient
from azure.iot.device import Message
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.hub import IoTHubRegistryManager

from edb_local.hub.client import ServiceClient, resolve_settings
from edb_local.stack_ca import StackCA

N = int(os.environ.get("EDB_BENCH_MESSAGES", "4000"))
LATENCY_SAMPLES = int(os.environ.get("EDB_BENCH_LATENCY_SAMPLES", "200"))
CKPT = int(os.environ.get("EDB_BENCH_CHECKPOINT_MESSAGES", "1000"))
CONSUMER = os.environ.get("EDB_BENCH_CONSUMER", "sync")     # sync | aio
SOCKET_TIMEOUT = float(os.environ.get("EDB_BENCH_SOCKET_TIMEOUT", "0.005"))
DEVICES = 4
WINDOW = 64
HUB_NAME = "edb-bench-eh.azure-devices.net"
PAD = "x" * 900
#: result key prefix -> the consumer's transport
TRANSPORTS = {"eventhub": TransportType.Amqp, "eventhub_ws": TransportType.AmqpOverWebsocket}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else float("nan")


class Hub(HubProcess):
    def __init__(self, workdir: Path, ca: StackCA) -> None:
        super().__init__(workdir, ca, HUB_NAME)


class Arrivals:
    """Arrival time per message tag, for one reader (callbacks from any thread)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.count = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def add(self, body: bytes) -> None:
        now = time.perf_counter()
        try:
            tag = json.loads(body)["tag"]
        except (ValueError, KeyError, TypeError):
            return
        with self.changed:
            self.at.setdefault(tag, now)
            self.count += 1
            self.changed.notify_all()

    def wait_for(self, tags: list[str], timeout: float = 120.0) -> None:
        with self.changed:
            self.changed.wait_for(lambda: all(t in self.at for t in tags), timeout)


def start_eventhub_reader(hub: Hub, ca: StackCA, arrivals: Arrivals, start: Any = "@latest",
                          transport: TransportType = TransportType.Amqp) -> threading.Event:
    """An EventHubConsumerClient (sync, or aio with partitions as concurrent tasks) on its own
    thread; set the returned event to stop it."""
    stop = threading.Event()

    async def run() -> None:
        client = AsyncConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "$Default",
                                                            connection_verify=str(ca.ca_path),
                                                            socket_timeout=SOCKET_TIMEOUT, transport_type=transport)

        async def on_events(_context: Any, events: list[Any]) -> None:
            for event in events:
                arrivals.add(b"".join(event.body) if not isinstance(event.body, bytes) else event.body)

        task = asyncio.create_task(client.receive_batch(on_event_batch=on_events, starting_position=start,
                                                        max_wait_time=None, max_batch_size=300, prefetch=300))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def run_sync() -> None:
        client = EventHubConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "$Default",
                                                               connection_verify=str(ca.ca_path),
                                                               socket_timeout=SOCKET_TIMEOUT, transport_type=transport)

        def on_events(_context: Any, events: list[Any]) -> None:
            for event in events:
                arrivals.add(b"".join(event.body) if not isinstance(event.body, bytes) else event.body)

        worker = threading.Thread(target=client.receive_batch, daemon=True, kwargs={
            "on_event_batch": on_events, "starting_position": start, "max_wait_time": None,
            "max_batch_size": 300, "prefetch": 300})
        worker.start()
        stop.wait()
        client.close()

    target = run_sync if CONSUMER == "sync" else (lambda: asyncio.run(run()))
    threading.Thread(target=target, daemon=True).start()
    return stop


def start_rest_reader(hub: Hub, ca: StackCA, arrivals: Arrivals, stop: threading.Event) -> threading.Thread:
    client = ServiceClient(resolve_settings(hub.config.service_connection_string, str(ca.ca_path),
                                            environ={}, env_file={}))
    cursor = client.messages(since=0, limit=1).last

    def run() -> None:
        nonlocal cursor
        while not stop.is_set():
            page = client.messages(since=cursor, limit=500, wait=2.0)
            cursor = page.next
            for event in page.events:
                payload = event["event"]["payload"]
                arrivals.add(json.dumps(payload).encode() if isinstance(payload, dict) else b"")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def connect_devices(hub: Hub, ca: StackCA) -> list[IoTHubDeviceClient]:
    registry = IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string)
    clients = []
    for i in range(DEVICES):
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        registry.create_device_with_sas(f"bench-dev-{i}", key, key, "enabled")
        client = IoTHubDeviceClient.create_from_connection_string(
            hub.config.device_connection_string(f"bench-dev-{i}", key), server_verification_cert=ca.ca_pem)
        await client.connect()
        clients.append(client)
    return clients


def message(tag: str) -> Message:
    return Message(json.dumps({"tag": tag, "pad": PAD}), content_encoding="utf-8", content_type="application/json")


async def latency_phase(devices: list[IoTHubDeviceClient], readers: list[Arrivals]) -> list[list[float]]:
    samples: list[list[float]] = [[] for _ in readers]
    for i in range(LATENCY_SAMPLES):
        tag = f"lat-{i}"
        start = time.perf_counter()
        await devices[i % len(devices)].send_message(message(tag))
        for reader, out in zip(readers, samples, strict=True):
            await asyncio.to_thread(reader.wait_for, [tag], 30.0)
            if tag in reader.at:
                out.append((reader.at[tag] - start) * 1000)
    return samples


async def throughput_phase(devices: list[IoTHubDeviceClient], readers: dict[str, Arrivals]) -> dict[str, Any]:
    sent_at: dict[str, float] = {}
    per_device = N // len(devices)

    async def feed(index: int, client: IoTHubDeviceClient) -> None:
        window = asyncio.Semaphore(WINDOW)

        async def one(n: int) -> None:
            async with window:
                tag = f"tp-{index}-{n}"
                sent_at[tag] = time.perf_counter()
                await client.send_message(message(tag))

        await asyncio.gather(*(one(n) for n in range(per_device)))

    tags = [f"tp-{i}-{n}" for i in range(len(devices)) for n in range(per_device)]
    start = time.perf_counter()
    await asyncio.gather(*(feed(i, c) for i, c in enumerate(devices)))
    sent_done = time.perf_counter()
    out: dict[str, Any] = {"device_send_msgs_per_s": round(len(tags) / (sent_done - start), 1)}
    for name, reader in readers.items():
        await asyncio.to_thread(reader.wait_for, tags, 300.0)
        arrived = [reader.at[t] for t in tags if t in reader.at]
        latencies = [(reader.at[t] - sent_at[t]) * 1000 for t in tags if t in reader.at]
        out[f"{name}_received"] = len(arrived)
        out[f"{name}_msgs_per_s"] = round(len(arrived) / (max(arrived) - start), 1) if arrived else 0.0
        out[f"{name}_loaded_p50_ms"] = pct(latencies, 0.50)
        out[f"{name}_loaded_p95_ms"] = pct(latencies, 0.95)
    return out


async def drain_phase(hub: Hub, ca: StackCA, devices: list[IoTHubDeviceClient], names: list[str]) -> dict[str, Any]:
    """N messages stored with no reader attached, then each reader reads the backlog alone: the
    endpoint's (per transport) and the REST feed's delivery rate without the device SDK senders
    as the bound."""
    rest_client = ServiceClient(resolve_settings(hub.config.service_connection_string, str(ca.ca_path),
                                                 environ={}, env_file={}))
    cursor = rest_client.messages(since=0, limit=1).last
    probe = EventHubConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "$Default",
                                                          connection_verify=str(ca.ca_path))
    begin = {pid: probe.get_partition_properties(pid)["last_enqueued_sequence_number"]
             for pid in probe.get_partition_ids()}
    probe.close()
    per_device = N // len(devices)
    tags = [f"dr-{i}-{n}" for i in range(len(devices)) for n in range(per_device)]

    async def feed(index: int, client: IoTHubDeviceClient) -> None:
        window = asyncio.Semaphore(WINDOW)

        async def one(n: int) -> None:
            async with window:
                await client.send_message(message(f"dr-{index}-{n}"))

        await asyncio.gather(*(one(n) for n in range(per_device)))

    await asyncio.gather(*(feed(i, c) for i, c in enumerate(devices)))
    out: dict[str, Any] = {}
    for name in names:
        eventhub = Arrivals()
        start = time.perf_counter()
        stop = start_eventhub_reader(hub, ca, eventhub, start={p: (s if s >= 0 else "-1") for p, s in begin.items()},
                                     transport=TRANSPORTS[name])
        await asyncio.to_thread(eventhub.wait_for, tags, 300.0)
        stop.set()
        got = [eventhub.at[t] for t in tags if t in eventhub.at]
        # from the first event delivered (the SDK's start-up, ~2 s of CBS and management reads,
        # excluded; reported separately)
        out[f"{name}_backlog_msgs_per_s"] = round((len(got) - 1) / (max(got) - min(got)), 1) if len(got) > 1 else 0.0
        out[f"{name}_consumer_startup_s"] = round(min(got) - start, 2) if got else None
        out[f"{name}_backlog_received"] = len(got)
        await asyncio.sleep(1.0)   # the stopped reader's connection gone before the next one starts
    rest = Arrivals()
    start = time.perf_counter()
    while not all(t in rest.at for t in tags) and time.perf_counter() - start < 300:
        page = await asyncio.to_thread(rest_client.messages, cursor, 500, 0.0)
        cursor = page.next
        for event in page.events:
            payload = event["event"]["payload"]
            rest.add(json.dumps(payload).encode() if isinstance(payload, dict) else b"")
    got = [rest.at[t] for t in tags if t in rest.at]
    out["baseline_rest_backlog_msgs_per_s"] = round((len(got) - 1) / (max(got) - min(got)), 1) if len(got) > 1 else 0.0
    return out


async def checkpoint_phase(hub: Hub, ca: StackCA, device: IoTHubDeviceClient, name: str) -> dict[str, Any]:
    """Half the messages, close, resume from the last sequence number per partition."""
    tags = [f"ck-{name}-{n}" for n in range(CKPT)]
    seen: list[str] = []
    checkpoint: dict[str, int] = {}
    lock = threading.Lock()

    def read(start: Any, stop_after: int) -> None:
        client = EventHubConsumerClient.from_connection_string(hub.config.eventhub_connection_string, "$Default",
                                                               connection_verify=str(ca.ca_path),
                                                               socket_timeout=SOCKET_TIMEOUT,
                                                               transport_type=TRANSPORTS[name])
        done = threading.Event()

        def on_events(context: Any, events: list[Any]) -> None:
            with lock:
                for event in events:
                    if done.is_set():
                        return
                    tag = json.loads(event.body_as_str())["tag"]
                    if tag.startswith(f"ck-{name}-"):
                        seen.append(tag)
                        checkpoint[context.partition_id] = event.sequence_number
                    if len(seen) >= stop_after:
                        done.set()

        worker = threading.Thread(target=client.receive_batch, daemon=True, kwargs={
            "on_event_batch": on_events, "starting_position": start, "max_wait_time": 1.0, "max_batch_size": 300})
        worker.start()
        if not done.wait(300):
            raise SystemExit(f"checkpoint phase: only {len(seen)} of {stop_after} arrived in 300 s")
        client.close()
        worker.join(10)

    begin = {pid: "@latest" for pid in ("0", "1", "2", "3")}
    reader = threading.Thread(target=read, args=(begin, CKPT // 2))
    reader.start()
    await asyncio.sleep(2.0)            # the first consumer is attached before anything is sent
    for tag in tags:
        await device.send_message(message(tag))
    await asyncio.to_thread(reader.join)
    resume: dict[str, Any] = {pid: checkpoint.get(pid, "-1") for pid in ("0", "1", "2", "3")}
    # everything not yet read is still in the log: resume from the checkpoints
    await asyncio.to_thread(read, resume, CKPT)
    return {"sent": CKPT, "received": len(seen), "distinct": len(set(seen)),
            "lost": len(set(tags) - set(seen)), "duplicates": len(seen) - len(set(seen))}


async def main(names: list[str]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="edb-bench-eh-"))
    ca = StackCA.load_or_create(workdir / "ca")
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca.ca_path)
    hub = Hub(workdir, ca)
    stop = threading.Event()
    consumer_stops: list[threading.Event] = []
    devices: list[IoTHubDeviceClient] = []
    try:
        devices = await connect_devices(hub, ca)
        readers = {name: Arrivals() for name in [*names, "baseline_rest"]}
        consumer_stops = [start_eventhub_reader(hub, ca, readers[name], transport=TRANSPORTS[name]) for name in names]
        start_rest_reader(hub, ca, readers["baseline_rest"], stop)
        await asyncio.sleep(3.0)         # partitions claimed, links attached
        await devices[0].send_message(message("warm-up"))
        for reader in readers.values():
            await asyncio.to_thread(reader.wait_for, ["warm-up"], 60.0)
        latencies = await latency_phase(devices, list(readers.values()))
        result: dict[str, Any] = {"messages": N, "devices": DEVICES, "latency_samples": LATENCY_SAMPLES,
                                  "consumer": f"{CONSUMER} receive_batch, socket_timeout={SOCKET_TIMEOUT}",
                                  "transports": {n: TRANSPORTS[n].name for n in names}}
        for name, samples in zip(readers, latencies, strict=True):
            result[f"{name}_p50_ms"] = pct(samples, 0.50)
            result[f"{name}_p95_ms"] = pct(samples, 0.95)
        result.update(await throughput_phase(devices, readers))
        for consumer_stop in consumer_stops:
            consumer_stop.set()
        stop.set()
        await asyncio.sleep(1.0)
        result.update(await drain_phase(hub, ca, devices, names))
        targets: dict[str, bool] = {}
        for name in names:
            result[f"{name}_checkpoint_restart"] = ckpt = await checkpoint_phase(hub, ca, devices[0], name)
            targets[f"{name}_backlog_msgs_per_s>=1000"] = result[f"{name}_backlog_msgs_per_s"] >= 1000
            targets[f"{name}_p95_ms<=50"] = result[f"{name}_p95_ms"] <= 50
            targets[f"{name}_checkpoint_no_loss_no_duplicates"] = ckpt["lost"] == 0 and ckpt["duplicates"] == 0
        result["targets_met"] = targets
        result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        stop.set()
        for consumer_stop in consumer_stops:
            consumer_stop.set()
        for device in devices:
            await device.shutdown()
        hub.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("tls", "websocket", "both"), default="both",
                        help="the Event Hub consumer's transport: AMQP/TLS on 5671, AMQP over WebSockets on 443, "
                             "or both side by side (default)")
    choice = parser.parse_args().transport
    asyncio.run(main({"tls": ["eventhub"], "websocket": ["eventhub_ws"], "both": ["eventhub", "eventhub_ws"]}[choice]))
