"""Fixtures for the hub stand-in: a running hub on a fresh loopback address, the real service SDK,
and real device-SDK module clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.iot.device.aio import IoTHubModuleClient
from azure.iot.hub import IoTHubRegistryManager
from hub_helpers import HUB_NAME, new_key

from edb_local.hub import HubConfig, HubThread
from edb_local.stack_ca import StackCA


@pytest.fixture
def hub_config(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> HubConfig:
    creds = stack_ca.issue_server("hub", ips=[loopback_address], out_dir=tmp_path / "certs")
    return HubConfig(state_dir=tmp_path / "hub", address=loopback_address, hub_name=HUB_NAME,
                     cert_path=creds.cert_path, key_path=creds.key_path, owner_key=new_key())


@pytest.fixture
def hub(hub_config: HubConfig, stack_ca: StackCA, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubThread]:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack_ca.ca_path))
    with HubThread(hub_config) as running:
        yield running


@pytest.fixture
def registry(hub: HubThread) -> IoTHubRegistryManager:
    return IoTHubRegistryManager.from_connection_string(hub.config.service_connection_string)


@pytest.fixture
def make_module(registry: IoTHubRegistryManager) -> Callable[..., str]:
    """Create (device if needed and) module identities; returns the module's key."""

    def make(device_id: str, module_id: str, *, edge: bool = True) -> str:
        with contextlib.suppress(Exception):
            registry.create_device_with_sas(device_id, None, None, "enabled", iot_edge=edge)
        key = new_key()
        registry.create_module_with_sas(device_id, module_id, None, key, key)
        return key

    return make


@pytest.fixture
async def module_clients(hub: HubThread, stack_ca: StackCA) -> AsyncIterator[Callable[..., Any]]:
    """Factory for connected azure-iot-device aio module clients (GatewayHostName connection strings);
    every client is shut down at the end of the test."""
    clients: list[IoTHubModuleClient] = []

    async def connect(device_id: str, module_id: str, key: str, *, connect: bool = True,
                      **kwargs: Any) -> IoTHubModuleClient:
        client = IoTHubModuleClient.create_from_connection_string(
            hub.config.module_connection_string(device_id, module_id, key),
            server_verification_cert=stack_ca.ca_pem, **kwargs)
        clients.append(client)
        if connect:
            await client.connect()
        return client

    yield connect
    for client in clients:
        with contextlib.suppress(Exception):
            await client.shutdown()
