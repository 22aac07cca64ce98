"""Helpers of the agent's integration tests: deployments through the real azure-iot-hub service SDK,
the `$edgeAgent` twin, the fixture module's start log, and polling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import ConfigurationContent, Twin, TwinProperties

from edb_local.agent.runtime import EdgeAgent
from edb_local.hub.server import HubThread

FIXTURE_SCRIPT = Path(__file__).parent / "fixtures" / "fixture_module.py"
DEVICE = "agent-test-device"
HUB_NAME = "agent-test-hub.azure-devices.local"
T = TypeVar("T")


def module(mode: str, *, policy: str = "always", status: str = "running", order: int | None = None,
           env: dict[str, str] | None = None, create_options: dict[str, Any] | None = None,
           version: str = "1.0") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": version, "type": "docker", "status": status, "restartPolicy": policy,
        "settings": {"image": "localhost:5000/fixture:0.1.0-amd64",
                     "createOptions": json.dumps(create_options or {})},
        "env": {"FIXTURE_MODE": {"value": mode}, **{k: {"value": v} for k, v in (env or {}).items()}},
    }
    if order is not None:
        doc["startupOrder"] = order
    return doc


@dataclass
class EdgeDevice:
    hub: HubThread
    agent: EdgeAgent
    service_cs: str
    log: Path
    registry: IoTHubRegistryManager
    _stop: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None

    def start_agent(self) -> None:
        """A fresh agent process-equivalent (new EdgeAgent, same configuration and state dir)."""
        self.agent = EdgeAgent(self.agent.config)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.agent.run(self._stop))

    async def stop_agent(self) -> None:
        if self._stop is not None and self._task is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, timeout=60)
        self._stop = self._task = None

    async def deploy(self, modules: dict[str, Any], **agent_extra: Any) -> None:
        desired = {"schemaVersion": "1.1", "runtime": {"type": "docker", "settings": {}},
                   "systemModules": {}, "modules": modules, **agent_extra}
        content = ConfigurationContent(modules_content={
            "$edgeAgent": {"properties.desired": desired},
            "$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {},
                                                "storeAndForwardConfiguration": {"timeToLiveSecs": 60}}},
        })
        manager = IoTHubConfigurationManager.from_connection_string(self.service_cs)
        await asyncio.to_thread(manager.apply_configuration_on_edge_device, DEVICE, content)

    async def twin(self, module_id: str) -> Twin:
        return await asyncio.to_thread(self.registry.get_module_twin, DEVICE, module_id)

    async def reported(self, module_id: str = "$edgeAgent") -> dict[str, Any]:
        twin = await self.twin(module_id)
        return dict(twin.properties.reported or {})

    async def set_desired(self, module_id: str, desired: dict[str, Any]) -> None:
        patch = Twin(properties=TwinProperties(desired=desired))
        await asyncio.to_thread(self.registry.update_module_twin, DEVICE, module_id, patch, "*")

    def starts(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines() if line.strip()]

    def starts_of(self, module_id: str) -> list[list[str]]:
        return [s for s in self.starts() if s[0] == module_id]


async def eventually(probe: Callable[[], Any], timeout: float = 40.0, interval: float = 0.2) -> Any:
    """Poll ``probe`` (sync or async) until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout} s (last value: {last!r})")


