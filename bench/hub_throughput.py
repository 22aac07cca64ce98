"""Throughput and route latency of the IoT Hub + edgeHub stand-in, against mosquitto in the same run.

Flow measured (1 KiB UTF-8 JSON, QoS 1): module `sender` -> route -> module `relay` (input) ->
`relay` forwards to an output -> route -> `$upstream` (stored). Both modules are real
`azure-iot-device` aio IoTHubModuleClients; the hub runs as its own process
(`python -m edb_local.hub`), as mosquitto does.

Baseline (`baseline_*`, `ratio_to_baseline`): the same flow with the same SDK module clients through
mosquitto (Debian package; installed here with apt-get when missing) on its own loopback address,
TLS 1.2 with a stack-CA certificate. mosquitto has no routes, so a bridge from mosquitto to itself
(plain TCP on its own 1883) remaps the sender's telemetry topic onto the relay's input topic, and a
subscriber on the relay's telemetry topic plays `$upstream` (the hub's `$upstream` is its SQLite log).

`transport_*`: the flow driven by the SDK's raw MQTT transport
(`azure.iot.device.common.mqtt_transport.MQTTTransport`, the paho wrapper inside the SDK clients),
without the client pipeline above it: through the hub with IoT Hub topics, through mosquitto on
`bench/in` -> relay -> `bench/up` -> subscriber. The gap between the SDK-client and the transport
figures is the SDK's client stack, which bounds both brokers in the main comparison.

Latency (`p50/p95_route_latency_ms`): sender publish -> relay receive with one message in flight.
Throughput: N messages with up to 64 in flight from the sender, until the last reached $upstream.

Run: `.venv/bin/python bench/hub_throughput.py` (EDB_BENCH_MESSAGES to change N, default 2000).
The last line is one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from _hub import HubProcess
from azure.iot.device import Message
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.device.common.mqtt_transport import MQTTTransport
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import ConfigurationContent

from edb_local.hub.sas import make_token
from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA

N = int(os.environ.get("EDB_BENCH_MESSAGES", "2000"))
LATENCY_SAMPLES = int(os.environ.get("EDB_BENCH_LATENCY_SAMPLES", "300"))
WINDOW = 64
WARMUP = 100
DEVICE = "bench-edge"
HUB_NAME = "edb-bench-hub.azure-devices.net"
ROUTES = {
    "toRelay": 'FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint("/modules/relay/inputs/in")',
    "up": "FROM /messages/modules/relay/outputs/out INTO $upstream",
}
PAD = "x" * 960


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def body(seq: int) -> str:
    doc = json.dumps({"seq": seq, "t": time.perf_counter(), "pad": PAD})
    return doc


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


# ------------------------------------------------------------------------------------------------
# the hub


class Hub(HubProcess):
    def __init__(self, workdir: Path, ca: StackCA) -> None:
        super().__init__(workdir, ca, HUB_NAME)
        self.session = requests.Session()
        self.session.verify = str(ca.ca_path)

    def upstream_last_seq(self) -> int:
        return int(self.session.get(f"https://{self.address}/edb/health", timeout=10).json()["upstreamLastSeq"])

    def wait_upstream(self, target: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.upstream_last_seq() < target:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for $upstream")
            time.sleep(0.01)


def provision(hub: Hub) -> dict[str, str]:
    registry = IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string)
    registry.create_device_with_sas(DEVICE, None, None, "enabled", iot_edge=True)
    keys = {}
    for module in ("sender", "relay", "tsender", "trelay"):
        keys[module] = base64.b64encode(secrets.token_bytes(32)).decode()
        registry.create_module_with_sas(DEVICE, module, None, keys[module], keys[module])
    routes = {**ROUTES,
              "tToRelay": "FROM /messages/modules/tsender/outputs/out "
                          'INTO BrokeredEndpoint("/modules/trelay/inputs/in")',
              "tUp": "FROM /messages/modules/trelay/outputs/out INTO $upstream"}
    IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string) \
        .apply_configuration_on_edge_device(DEVICE, ConfigurationContent(modules_content={
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": routes}}}))
    return keys


async def sdk_flow(sender: IoTHubModuleClient, relay: IoTHubModuleClient,
                   sink_count: Callable[[], int]) -> dict[str, float]:
    """sender -> relay -> sink with real SDK module clients; ``sink_count`` says how many arrived."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    arrived = asyncio.Queue[int]()

    def on_input(message: Message) -> None:   # runs on the SDK's handler thread
        now = time.perf_counter()
        doc = json.loads(message.data)
        latencies.append((now - doc["t"]) * 1000)
        out = Message(message.data, content_encoding="utf-8", content_type="application/json")
        asyncio.run_coroutine_threadsafe(relay.send_message_to_output(out, "out"), loop)
        loop.call_soon_threadsafe(arrived.put_nowait, doc["seq"])

    relay.on_message_received = on_input
    await relay.connect()
    await sender.connect()

    def message(seq: int) -> Message:
        return Message(body(seq), content_encoding="utf-8", content_type="application/json")

    async def wait_sink(target: int) -> None:
        deadline = time.monotonic() + 300
        while await asyncio.to_thread(sink_count) < target:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the sink")
            await asyncio.sleep(0.005)

    base = await asyncio.to_thread(sink_count)
    for seq in range(WARMUP):
        await sender.send_message_to_output(message(seq), "out")
    await wait_sink(base + WARMUP)
    # latency: one message in flight
    latencies.clear()
    for seq in range(LATENCY_SAMPLES):
        await sender.send_message_to_output(message(seq), "out")
        await asyncio.wait_for(arrived.get(), 30)
    await wait_sink(base + WARMUP + LATENCY_SAMPLES)
    route_latencies = list(latencies)
    # throughput: up to WINDOW in flight
    window = asyncio.Semaphore(WINDOW)

    async def send(seq: int) -> None:
        async with window:
            await sender.send_message_to_output(message(seq), "out")

    start = time.perf_counter()
    await asyncio.gather(*(send(seq) for seq in range(N)))
    await wait_sink(base + WARMUP + LATENCY_SAMPLES + N)
    elapsed = time.perf_counter() - start
    await sender.shutdown()
    await relay.shutdown()
    return {"msgs_per_s": N / elapsed, "p50": statistics.median(route_latencies),
            "p95": percentile(route_latencies, 95)}


async def sdk_through_hub(hub: Hub, keys: dict[str, str], ca_pem: str) -> dict[str, float]:
    def client(module: str) -> IoTHubModuleClient:
        return IoTHubModuleClient.create_from_connection_string(
            hub.config.module_connection_string(DEVICE, module, keys[module]), server_verification_cert=ca_pem)

    return await sdk_flow(client("sender"), client("relay"), hub.upstream_last_seq)


# ------------------------------------------------------------------------------------------------
# the SDK's MQTT transport, against any broker


class TransportFlow:
    """sender -> (broker) -> relay -> (broker) -> sink, with the SDK's MQTTTransport (paho)."""

    def __init__(self, *, address: str, ca_pem: str, sender: tuple[str, str, str | None],
                 relay: tuple[str, str, str | None], in_topic: str, relay_subscription: str, out_topic: str,
                 monitor: tuple[str, str, str | None] | None, sink_count: Any) -> None:
        self.in_topic, self.out_topic = in_topic, out_topic
        self.latencies: list[float] = []
        self.relayed = threading.Semaphore(0)
        self.sink_count = sink_count
        self.sender = self.connect(address, ca_pem, *sender)
        self.relay = self.connect(address, ca_pem, *relay)
        self.relay.on_mqtt_message_received_handler = self._on_relay_message
        self.subscribe(self.relay, relay_subscription)
        self.monitor_count = 0
        self._monitor_lock = threading.Lock()
        if monitor is not None:
            self.monitor = self.connect(address, ca_pem, *monitor)
            self.monitor.on_mqtt_message_received_handler = self._on_monitor_message
            self.subscribe(self.monitor, out_topic)

    @staticmethod
    def connect(address: str, ca_pem: str, client_id: str, username: str, password: str | None) -> MQTTTransport:
        transport = MQTTTransport(client_id=client_id, hostname=address, username=username,
                                  server_verification_cert=ca_pem, keep_alive=60)
        connected = threading.Event()
        transport.on_mqtt_connected_handler = connected.set
        transport.on_mqtt_disconnected_handler = lambda cause: None
        transport.connect(password=password)
        if not connected.wait(30):
            raise SystemExit(f"{client_id} did not connect to {address}")
        return transport

    @staticmethod
    def subscribe(transport: MQTTTransport, topic: str) -> None:
        done = threading.Event()
        transport.subscribe(topic, qos=1, callback=done.set)
        if not done.wait(30):
            raise SystemExit(f"no SUBACK for {topic}")

    def _on_relay_message(self, topic: str, payload: bytes) -> None:
        now = time.perf_counter()
        self.latencies.append((now - json.loads(payload)["t"]) * 1000)
        self.relay.publish(self.out_topic, payload, qos=1)
        self.relayed.release()

    def _on_monitor_message(self, topic: str, payload: bytes) -> None:
        with self._monitor_lock:
            self.monitor_count += 1

    def wait_sink(self, target: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sink_count(self) < target:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the sink")
            time.sleep(0.005)

    def run(self) -> dict[str, float]:
        window = threading.Semaphore(WINDOW)

        def publish(seq: int) -> None:
            window.acquire()
            self.sender.publish(self.in_topic, body(seq).encode(), qos=1, callback=window.release)

        base = self.sink_count(self)
        for seq in range(WARMUP):
            publish(seq)
        self.wait_sink(base + WARMUP)
        self.latencies.clear()
        for seq in range(LATENCY_SAMPLES):
            publish(seq)
            if not self.relayed.acquire(timeout=30):
                raise SystemExit("relay did not receive")
        self.wait_sink(base + WARMUP + LATENCY_SAMPLES)
        latencies = list(self.latencies)
        start = time.perf_counter()
        for seq in range(N):
            publish(seq)
        self.wait_sink(base + WARMUP + LATENCY_SAMPLES + N)
        elapsed = time.perf_counter() - start
        for transport in [self.sender, self.relay] + ([self.monitor] if hasattr(self, "monitor") else []):
            transport.disconnect()
            transport.shutdown()
        return {"msgs_per_s": N / elapsed, "p50": statistics.median(latencies), "p95": percentile(latencies, 95)}


def transport_through_hub(hub: Hub, keys: dict[str, str], ca_pem: str) -> dict[str, float]:
    def identity(module: str) -> tuple[str, str, str]:
        token = make_token(f"{HUB_NAME}/devices/{DEVICE}/modules/{module}", keys[module],
                           expiry=int(time.time()) + 3600)
        return f"{DEVICE}/{module}", f"{HUB_NAME}/{DEVICE}/{module}/?api-version=2021-04-12", token

    bag = "%24.on=out&%24.ct=" + urllib.parse.quote("application/json", safe="") + "&%24.ce=utf-8"
    seen = {"base": hub.upstream_last_seq()}

    def sink_count(flow: TransportFlow) -> int:
        return hub.upstream_last_seq() - seen["base"]

    flow = TransportFlow(address=hub.address, ca_pem=ca_pem, sender=identity("tsender"), relay=identity("trelay"),
                         in_topic=f"devices/{DEVICE}/modules/tsender/messages/events/{bag}",
                         relay_subscription=f"devices/{DEVICE}/modules/trelay/inputs/#",
                         out_topic=f"devices/{DEVICE}/modules/trelay/messages/events/{bag}", monitor=None,
                         sink_count=sink_count)
    return flow.run()


# ------------------------------------------------------------------------------------------------
# mosquitto


def ensure_mosquitto() -> str | None:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        log("baseline skipped: mosquitto is not installed and apt-get is not usable here (not root?)")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (["apt-get", "install", "-y", "-q", "mosquitto"],
                    ["sh", "-c", "apt-get update -q && apt-get install -y -q mosquitto"]):
        log(f"installing mosquitto: {' '.join(attempt)}")
        if subprocess.run(attempt, env=env, capture_output=True, timeout=600).returncode == 0:
            break
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        log("baseline skipped: `apt-get install mosquitto` failed")
    return found


class Mosquitto:
    """mosquitto on its own loopback address: TLS on 8883 with a stack-CA certificate for the clients,
    plus a plain listener on 1883 used only by a bridge to itself that remaps the sender's telemetry
    topic onto the relay's input topic (mosquitto's nearest thing to an edgeHub route)."""

    def __init__(self, binary: str, workdir: Path, ca: StackCA) -> None:
        self.address = free_loopback_address(ports=(8883, 1883))
        creds = ca.issue_server("mosquitto", ips=[self.address], out_dir=workdir / "mosquitto")
        conf = workdir / "mosquitto" / "mosquitto.conf"
        events = f"devices/{DEVICE}/modules/sender/messages/events/"
        inputs = f"devices/{DEVICE}/modules/relay/inputs/in/"
        conf.write_text("\n".join([
            "per_listener_settings false", "allow_anonymous true", "persistence false", "user root",
            "max_inflight_messages 20", "max_queued_messages 100000",
            f"listener 8883 {self.address}", f"cafile {ca.ca_path}", f"certfile {creds.cert_path}",
            f"keyfile {creds.key_path}", "tls_version tlsv1.2",
            f"listener 1883 {self.address}",
            "connection route", f"address {self.address}:1883", "bridge_protocol_version mqttv311",
            "try_private false", "cleansession true", "notifications false", "start_type automatic",
            f"topic # out 1 {events} {inputs}", "",
        ]))
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((self.address, 8883), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise SystemExit(f"mosquitto did not start: {err!r}") from None
                time.sleep(0.05)
        time.sleep(0.5)  # let the bridge connect

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def sdk_through_mosquitto(broker: Mosquitto, ca_pem: str) -> dict[str, float]:
    def client(module: str) -> IoTHubModuleClient:
        key = base64.b64encode(secrets.token_bytes(32)).decode()   # mosquitto accepts any password
        cs = (f"HostName={HUB_NAME};DeviceId={DEVICE};ModuleId={module};SharedAccessKey={key};"
              f"GatewayHostName={broker.address}")
        return IoTHubModuleClient.create_from_connection_string(cs, server_verification_cert=ca_pem)

    monitor = TransportFlow.connect(broker.address, ca_pem, "monitor", "bench", None)
    count = {"n": 0}
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes) -> None:
        with lock:
            count["n"] += 1

    monitor.on_mqtt_message_received_handler = on_message
    TransportFlow.subscribe(monitor, f"devices/{DEVICE}/modules/relay/messages/events/#")
    try:
        return await sdk_flow(client("sender"), client("relay"), lambda: count["n"])
    finally:
        monitor.disconnect()
        monitor.shutdown()


def transport_through_mosquitto(broker: Mosquitto, ca_pem: str) -> dict[str, float]:
    def anon(name: str) -> tuple[str, str, None]:
        return name, "bench", None

    flow = TransportFlow(address=broker.address, ca_pem=ca_pem, sender=anon("tsender"), relay=anon("trelay"),
                         in_topic="bench/in", relay_subscription="bench/in", out_topic="bench/up",
                         monitor=anon("tmonitor"), sink_count=lambda f: f.monitor_count)
    return flow.run()


# ------------------------------------------------------------------------------------------------


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="edb-bench-hub-"))
    ca = StackCA.load_or_create(workdir / "ca")
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca.ca_path)
    hub = Hub(workdir, ca)
    try:
        keys = provision(hub)
        log(f"{N} messages of {len(body(0))} bytes, window {WINDOW}, {LATENCY_SAMPLES} latency samples")
        sdk = asyncio.run(sdk_through_hub(hub, keys, ca.ca_pem))
        report("SDK clients   -> hub stand-in", sdk)
        raw = transport_through_hub(hub, keys, ca.ca_pem)
        report("SDK transport -> hub stand-in", raw)
    finally:
        hub.stop()
    binary = ensure_mosquitto()
    base = raw_base = None
    if binary:
        broker = Mosquitto(binary, workdir, ca)
        try:
            base = asyncio.run(sdk_through_mosquitto(broker, ca.ca_pem))
            report("SDK clients   -> mosquitto   ", base)
            raw_base = transport_through_mosquitto(broker, ca.ca_pem)
            report("SDK transport -> mosquitto   ", raw_base)
        finally:
            broker.stop()
    shutil.rmtree(workdir, ignore_errors=True)

    def rounded(value: float | None, digits: int = 1) -> float | None:
        return None if value is None else round(value, digits)

    result = {
        "messages": N, "window": WINDOW, "payload_bytes": len(body(0)),
        "msgs_per_s": rounded(sdk["msgs_per_s"]),
        "p50_route_latency_ms": rounded(sdk["p50"], 3),
        "p95_route_latency_ms": rounded(sdk["p95"], 3),
        "baseline_msgs_per_s": rounded(base["msgs_per_s"]) if base else None,
        "baseline_p50_route_latency_ms": rounded(base["p50"], 3) if base else None,
        "baseline_p95_route_latency_ms": rounded(base["p95"], 3) if base else None,
        "ratio_to_baseline": rounded(sdk["msgs_per_s"] / base["msgs_per_s"], 3) if base else None,
        "transport_msgs_per_s": rounded(raw["msgs_per_s"]),
        "transport_baseline_msgs_per_s": rounded(raw_base["msgs_per_s"]) if raw_base else None,
        "transport_ratio_to_baseline": rounded(raw["msgs_per_s"] / raw_base["msgs_per_s"], 3) if raw_base else None,
    }
    print(json.dumps(result))


def report(label: str, figures: dict[str, float]) -> None:
    log(f"{label}: {figures['msgs_per_s']:7.0f} msg/s; route latency p50 {figures['p50']:.2f} ms, "
        f"p95 {figures['p95']:.2f} ms")


if __name__ == "__main__":
    main()
