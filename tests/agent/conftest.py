"""An edge device for the agent's integration tests: the hub stand-in (in a thread), the edge agent
(in the test's event loop) and the harness in agent_harness.py."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_harness import DEVICE, FIXTURE_SCRIPT, HUB_NAME, EdgeDevice, eventually
from azure.iot.hub import IoTHubRegistryManager

from edb_local.agent.config import AgentConfig
from edb_local.agent.module_map import ModuleMap, parse_extra_entries
from edb_local.agent.reconcile import BackoffPolicy
from edb_local.agent.runtime import EdgeAgent
from edb_local.hub.config import HubConfig
from edb_local.hub.server import HubThread
from edb_local.stack_ca import StackCA
from edb_local.supervisor.registration import register_edge_device_with


@pytest.fixture
async def edge(tmp_path: Path, stack_ca: StackCA, loopback_address: str,
               monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EdgeDevice]:
    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    owner_key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                       cert_path=creds.cert_path, key_path=creds.key_path, owner_key=owner_key)
    (tmp_path / "hub").mkdir()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    hub = HubThread(config).start()
    service_cs = config.service_connection_string
    await asyncio.to_thread(register_edge_device_with, service_cs, DEVICE, str(stack_ca.ca_path))
    log = tmp_path / "starts.log"
    state = tmp_path / "state"
    agent_config = AgentConfig(
        state_dir=state, device_id=DEVICE, hub_hostname=HUB_NAME, gateway_hostname=loopback_address,
        ca_path=stack_ca.ca_path, service_connection_string=service_cs,
        host_defaults={"FIXTURE_LOG": str(log)},
        backoff=BackoffPolicy(base_s=0.2, max_s=0.8, reset_after_s=600.0),
        stop_timeout_s=5.0, resync_interval_s=5.0, reconnect_after_s=3.0,
        module_map=ModuleMap(parse_extra_entries({"fixture": {"script": str(FIXTURE_SCRIPT)}})),
    )
    registry = IoTHubRegistryManager.from_connection_string(service_cs)
    device = EdgeDevice(hub, EdgeAgent(agent_config), service_cs, log, registry)
    device.start_agent()
    try:
        await eventually(lambda: device.agent._connected, timeout=30)
        yield device
    finally:
        await device.stop_agent()
        hub.stop()
