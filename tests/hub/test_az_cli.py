"""The Azure CLI with its azure-iot extension against the stand-in: `az iot hub monitor-events`
(the Event Hub-compatible endpoint, through IoT Hub's redirect), `az iot hub invoke-module-method`,
`az iot edge deployment show-metric --mt system`. The CLI runs as a subprocess from `.venv-az`
(`make az`); a machine without it skips them LOUDLY (listed as NOT RUN at the end of every run).

The CLI trusts the stack CA through `EDB_AZ_CA_BUNDLE` (certifi's roots + the stack CA; see
tests/az/edb_az_ca.py, installed into .venv-az only) and `REQUESTS_CA_BUNDLE`; it talks to the hub
with `--login <service connection string>`, never with an Azure login."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import pytest
from azure.iot.device import MethodResponse
from azure.iot.hub import IoTHubConfigurationManager
from azure.iot.hub.models import Configuration, ConfigurationContent

from edb_local.hub import HubThread
from edb_local.hub.topics import Identity, PropertyBag
from edb_local.stack_ca import StackCA

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
AZ_VENV = REPO / ".venv-az"
AZ = AZ_VENV / "bin" / "az"
EXTENSIONS = AZ_VENV / "extensions"


def require_az() -> None:
    """The CLI and its azure-iot extension, or a LOUD skip: the extension is not on PyPI, so a machine
    that only reaches PyPI (CI) cannot install it; the summary of every run lists these tests as not
    run, with the reason (tests/conftest.py). EDB_REQUIRE_AZ=1 turns the skip into a failure, for a
    machine where `make az AZ_IOT_EXTENSION=<wheel>` was run."""
    missing = None
    if not AZ.exists():
        missing = f"the Azure CLI is not installed at {AZ}: run `make az` (azure-cli from PyPI into .venv-az)"
    elif not (EXTENSIONS / "azure-iot").is_dir():
        missing = ("the azure-iot CLI extension is not installed: it is not published on PyPI; run "
                   "`make az AZ_IOT_EXTENSION=<azure_iot-*.whl>` (docs/iothub-standin.md, 'Azure CLI')")
    if missing is None:
        return
    if os.environ.get("EDB_REQUIRE_AZ") == "1":
        pytest.fail(missing)
    pytest.skip(f"NOT RUN: {missing}")


@pytest.fixture
def az(stack_ca: StackCA, tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    require_az()
    bundle = tmp_path / "az-ca-bundle.pem"
    bundle.write_text(Path(certifi.where()).read_text() + "\n" + stack_ca.ca_path.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "REQUESTS_", "CURL_"))}
    env.update({"AZURE_EXTENSION_DIR": str(EXTENSIONS), "AZURE_CONFIG_DIR": str(tmp_path / "az-config"),
                "AZURE_CORE_COLLECT_TELEMETRY": "false", "AZURE_CORE_NO_COLOR": "true",
                "EDB_AZ_CA_BUNDLE": str(bundle), "REQUESTS_CA_BUNDLE": str(bundle)})

    def run(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(AZ), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    return run


def finish(proc: subprocess.Popen[str], timeout: float = 150.0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"az exited {proc.returncode}: {err[-2000:]}"
    return out, err


def test_az_iot_hub_monitor_events(hub: HubThread, az: Callable[..., subprocess.Popen[str]]) -> None:
    # --timeout is the CLI's idle timeout: it exits 10 s after the last event
    proc = az("iot", "hub", "monitor-events", "--login", hub.config.service_connection_string, "--timeout", "10",
              "--properties", "all", "--device-id", "az-dev", "--yes", "--output", "json")
    stop = threading.Event()

    def send(n: int) -> None:
        bag = PropertyBag({"contentType": "application/json", "contentEncoding": "utf-8", "messageId": f"az-{n}"},
                          {"kind": "az"})
        hub.server.core.ingest(Identity("az-dev"), bag, json.dumps({"n": n}).encode())
        hub.server.core.ingest(Identity("other-dev"), bag, b'{"other": true}')

    def feed() -> None:          # the CLI starts at "now": send for a while, then let it go idle
        n = 0
        while n < 25 and not stop.is_set() and proc.poll() is None:
            hub.call(send, n)
            n += 1
            time.sleep(1.0)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        out, _ = finish(proc)
    finally:
        stop.set()
        feeder.join(5)
    assert '"origin": "az-dev"' in out, out[-2000:]
    assert "other-dev" not in out                      # --device-id filters on the annotations
    assert '"kind": "az"' in out and '"iothub-message-source": "Telemetry"' in out
    assert '"x-opt-sequence-number"' in out            # annotations as IoT Hub sets them


async def test_az_iot_hub_invoke_module_method(
        hub: HubThread, az: Callable[..., subprocess.Popen[str]], make_module: Callable[..., str],
        module_clients: Callable[..., Any]) -> None:
    """Needs the stand-in to accept the CLI's string `"responseTimeoutInSeconds": "30"` (i11-fidelity)."""
    key = make_module("az-edge", "echo")
    client = await module_clients("az-edge", "echo", key)

    async def on_method(request: Any) -> None:
        await client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"echo": request.payload}))

    client.on_method_request_received = on_method
    proc = az("iot", "hub", "invoke-module-method", "--login", hub.config.service_connection_string,
              "-d", "az-edge", "-m", "echo", "--method-name", "ping", "--method-payload", '{"x": 1}',
              "--timeout", "30", "--output", "json")
    import asyncio

    out, _ = await asyncio.to_thread(finish, proc)
    answer = json.loads(out)
    assert answer["status"] == 200 and answer["payload"] == {"echo": {"x": 1}}


def test_az_iot_edge_deployment_show_metric_system(
        hub: HubThread, az: Callable[..., subprocess.Popen[str]]) -> None:
    """Needs `systemMetrics` queries and results in configurations (i12-fleet)."""
    manager = IoTHubConfigurationManager.from_connection_string(hub.config.service_connection_string)
    content = ConfigurationContent(modules_content={
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
        "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {}}}})
    manager.create_configuration(Configuration(id="az-metrics", content=content, target_condition="*",
                                               priority=1, labels={}))
    proc = az("iot", "edge", "deployment", "show-metric", "--login", hub.config.service_connection_string,
              "-d", "az-metrics", "-m", "appliedCount", "--mt", "system", "--output", "json")
    out, _ = finish(proc)
    metric = json.loads(out)
    assert metric["metric"] == "appliedCount" and "query" in metric and isinstance(metric["result"], list)
