"""The hub as a real process (`python -m edb_local.hub`), killed and restarted under connected SDK clients.

The device SDK connects with clean_session=False and never re-subscribes after a reconnect
(azure-iot-sdk-python #713/#990: clients that "reconnect" to a restarted edgeHub and then hear
nothing). The hub keeps MQTT sessions in SQLite, so reconnected clients get their inputs, desired
patches, twin responses and method calls again; the second test shows what the SDK does when a
broker forgets.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.iot.device import Message, MethodResponse
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, ConfigurationContent, Twin, TwinProperties
from hub_helpers import new_key, threadsafe_queue

from edb_local.hub import HubConfig
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(90)
HUB_NAME = "edb-restart-hub.azure-devices.net"
ROUTES = {"in": 'FROM /messages/modules/sensor/outputs/* INTO BrokeredEndpoint("/modules/runner/inputs/in")'}


class HubProcess:
    def __init__(self, config: HubConfig, owner_key_file: Path, log: Path) -> None:
        self.config = config
        self.owner_key_file = owner_key_file
        self.log = log
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "edb_local.hub", "--state-dir", str(self.config.state_dir),
                "--address", self.config.address, "--hub-name", self.config.hub_name,
                "--cert", str(self.config.cert_path), "--key", str(self.config.key_path),
                "--owner-key-file", str(self.owner_key_file)]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert json.loads(line)["ready"] is True, line

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)


@pytest.fixture
def hub_process(stack_ca: StackCA, loopback_address: str, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[HubProcess]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    owner_key_file = tmp_path / "hub" / "owner.key"
    owner_key_file.parent.mkdir()
    owner_key_file.write_text(new_key() + "\n")
    config = HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                       cert_path=creds.cert_path, key_path=creds.key_path, owner_key=owner_key_file.read_text().strip())
    process = HubProcess(config, owner_key_file, tmp_path / "hub.log")
    process.start()
    yield process
    if process.proc is not None and process.proc.poll() is None:
        process.kill()


async def _until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _edge_pair(hub: HubProcess, ca_pem: str) -> tuple[IoTHubRegistryManager, dict[str, str]]:
    registry = IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string)
    registry.create_device_with_sas("edge-k", None, None, "enabled", iot_edge=True)
    keys = {}
    for module in ("sensor", "runner"):
        keys[module] = new_key()
        registry.create_module_with_sas("edge-k", module, None, keys[module], keys[module])
    IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string) \
        .apply_configuration_on_edge_device("edge-k", ConfigurationContent(modules_content={
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1"}},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": ROUTES}}}))
    return registry, keys


def _client(hub: HubProcess, ca_pem: str, module: str, key: str) -> IoTHubModuleClient:
    # connection_retry_interval only shortens the SDK's wait between reconnect attempts (default 10 s)
    return IoTHubModuleClient.create_from_connection_string(
        hub.config.module_connection_string("edge-k", module, key), server_verification_cert=ca_pem,
        connection_retry_interval=1)


async def test_clients_recover_after_the_hub_is_killed_and_restarted(hub_process: HubProcess,
                                                                     stack_ca: StackCA) -> None:
    registry, keys = await _edge_pair(hub_process, stack_ca.ca_pem)
    runner = _client(hub_process, stack_ca.ca_pem, "runner", keys["runner"])
    sensor = _client(hub_process, stack_ca.ca_pem, "sensor", keys["sensor"])
    try:
        # the patch handler first: the SDK only sends its converging twin GET on a (re)connect
        # that happens after twin patches are enabled, and setting a handler connects
        patches, runner.on_twin_desired_properties_patch_received = threadsafe_queue()
        inputs, runner.on_message_received = threadsafe_queue()

        async def answer(request: Any) -> None:
            await runner.send_method_response(MethodResponse.create_from_method_request(request, 200, "pong"))

        runner.on_method_request_received = answer
        await runner.connect()
        await sensor.connect()
        assert (await asyncio.wait_for(patches.get(), 10))["$version"] == 1
        await sensor.send_message_to_output(Message("before", message_id="m0"), "out")
        assert (await asyncio.wait_for(inputs.get(), 10)).message_id == "m0"

        hub_process.kill()
        await _until(lambda: not runner.connected and not sensor.connected)
        # the sensor keeps producing while the hub is down; the SDK holds these until it reconnects
        offline_send = asyncio.create_task(sensor.send_message_to_output(Message("during", message_id="m1"), "out"))
        hub_process.start()
        await _until(lambda: runner.connected and sensor.connected)
        await asyncio.wait_for(offline_send, 30)

        # inputs flow again although neither client re-subscribed
        await sensor.send_message_to_output(Message("after", message_id="m2"), "out")
        got = set()
        while not {"m1", "m2"} <= got:
            got.add((await asyncio.wait_for(inputs.get(), 15)).message_id)
        # desired patches and twin GETs work: the SDK's reconnect GET already converged
        registry.update_module_twin("edge-k", "runner", Twin(properties=TwinProperties(desired={"model": "v2"})))
        while True:
            patch = await asyncio.wait_for(patches.get(), 10)
            if patch.get("model") == "v2":
                break
        assert (await asyncio.wait_for(runner.get_twin(), 10))["desired"]["model"] == "v2"
        # direct methods reach the reconnected module
        result = await asyncio.to_thread(registry.invoke_device_module_method, "edge-k", "runner",
                                         CloudToDeviceMethod(method_name="ping", response_timeout_in_seconds=10))
        assert result.status == 200 and result.payload == "pong"
        assert hub_process.terminate() == 0
    finally:
        await runner.shutdown()
        await sensor.shutdown()


async def test_messages_queued_for_an_offline_module_survive_a_hub_crash(hub_process: HubProcess,
                                                                        stack_ca: StackCA) -> None:
    _registry, keys = await _edge_pair(hub_process, stack_ca.ca_pem)
    sensor = _client(hub_process, stack_ca.ca_pem, "sensor", keys["sensor"])
    await sensor.connect()
    ids = [str(uuid.uuid4()) for _ in range(10)]
    for mid in ids:
        await sensor.send_message_to_output(Message(mid, message_id=mid), "out")   # PUBACKed = stored
    await sensor.shutdown()
    hub_process.kill()
    hub_process.start()
    runner = _client(hub_process, stack_ca.ca_pem, "runner", keys["runner"])
    try:
        inputs, runner.on_message_received = threadsafe_queue()
        await runner.connect()
        got = [(await asyncio.wait_for(inputs.get(), 10)).message_id for _ in ids]
        assert got == ids
    finally:
        await runner.shutdown()


async def test_a_broker_that_forgets_sessions_leaves_sdk_clients_deaf(hub_process: HubProcess,
                                                                     stack_ca: StackCA) -> None:
    """Why sessions are persisted: wipe them between runs and the reconnected SDK client has no
    subscriptions at all (it believes the broker kept them), so it would never get an input, a
    desired patch or a method call again."""
    _registry, keys = await _edge_pair(hub_process, stack_ca.ca_pem)
    runner = _client(hub_process, stack_ca.ca_pem, "runner", keys["runner"])
    try:
        runner.on_message_received = lambda message: None
        await runner.connect()
        db = hub_process.config.state_dir / "hub.sqlite"

        def subscriptions() -> list[str]:
            with sqlite3.connect(db) as conn:
                return [r[0] for r in conn.execute("SELECT topic_filter FROM sessions WHERE client_id='edge-k/runner'")]

        assert "devices/edge-k/modules/runner/inputs/#" in subscriptions()
        hub_process.kill()
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM sessions")
        hub_process.start()
        await _until(lambda: runner.connected)
        health = requests.get(f"https://{hub_process.config.address}/edb/health", timeout=10).json()
        assert health["connectedClients"] == 1
        assert subscriptions() == []  # the SDK did not subscribe again
    finally:
        await runner.shutdown()


def test_process_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "edb_local.hub", "--state-dir", str(tmp_path), "--address", "10.1.2.3",
                          "--hub-name", "h", "--cert", "c", "--key", "k", "--owner-key-file", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"]["code"] == "HUB_CONFIG_INVALID"
