"""An edge device whose agent runs modules as containers: the hub stand-in (thread), the edge agent
with the Docker runtime (the test's event loop), the tests/agent fixture module bound read-only into
a module image, and a Unix-socket relay to the Docker Engine that a test can cut (dockerd "stopped"
from the agent's side, without stopping the machine's engine)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from agent_harness import DEVICE, FIXTURE_SCRIPT, HUB_NAME, EdgeDevice, eventually
from azure.iot.hub import IoTHubRegistryManager

from edb_local.agent.config import AgentConfig
from edb_local.agent.reconcile import BackoffPolicy
from edb_local.agent.runtime import EdgeAgent
from edb_local.hub.config import HubConfig
from edb_local.hub.server import HubThread
from edb_local.stack_ca import StackCA
from edb_local.supervisor.registration import register_edge_device_with

ENGINE_SOCKET = "/var/run/docker.sock"


class EngineRelay:
    """unix:<path> -> the Docker Engine's socket, byte for byte; ``cut()`` closes it and every
    connection through it, ``restore()`` listens again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(ENGINE_SOCKET)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}


def cmodule(image: str, mode: str = "sleep", *, policy: str = "always", order: int | None = None,
            cmd: list[str] | None = None, host: dict[str, Any] | None = None, env: dict[str, str] | None = None,
            log_dir: Path) -> dict[str, Any]:
    """A deployment entry running the fixture module (or ``cmd``) in ``image``, locked down."""
    options = {
        "Cmd": cmd or ["python", "/fixture/fixture_module.py"],
        "HostConfig": {"Binds": [f"{FIXTURE_SCRIPT.parent}:/fixture:ro", f"{log_dir}:/fixture-log"],
                       "ReadonlyRootfs": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
                       **(host or {})},
    }
    doc: dict[str, Any] = {
        "version": "1.0", "type": "docker", "status": "running", "restartPolicy": policy,
        "settings": {"image": image, "createOptions": json.dumps(options)},
        "env": {"FIXTURE_MODE": {"value": mode}, "FIXTURE_LOG": {"value": "/fixture-log/starts.log"},
                **{k: {"value": v} for k, v in (env or {}).items()}},
    }
    if order is not None:
        doc["startupOrder"] = order
    return doc


@contextlib.asynccontextmanager
async def docker_edge(tmp_path: Path, stack_ca: StackCA, address: str) -> AsyncIterator[tuple[EdgeDevice, Path, str]]:
    """(device, container log dir, stack id); DOCKER_HOST must already point where the agent should go."""
    creds = stack_ca.issue_server("hub", ips=[address], out_dir=tmp_path / "certs")
    owner_key = base64.b64encode(secrets.token_bytes(32)).decode()
    config = HubConfig(state_dir=tmp_path / "hub", address=address, hub_name=HUB_NAME,
                       cert_path=creds.cert_path, key_path=creds.key_path, owner_key=owner_key)
    (tmp_path / "hub").mkdir()
    hub = HubThread(config).start()
    service_cs = config.service_connection_string
    await asyncio.to_thread(register_edge_device_with, service_cs, DEVICE, str(stack_ca.ca_path))
    log_dir = tmp_path / "fixture-log"
    log_dir.mkdir()
    os.chmod(log_dir, 0o777)  # noqa: S103 - the containers' uids append their start lines here
    stack = "t" + uuid.uuid4().hex[:9]
    agent_config = AgentConfig(
        state_dir=tmp_path / "state", device_id=DEVICE, hub_hostname=HUB_NAME, gateway_hostname=address,
        ca_path=stack_ca.ca_path, service_connection_string=service_cs,
        backoff=BackoffPolicy(base_s=0.5, max_s=2.0, reset_after_s=600.0),
        stop_timeout_s=5.0, resync_interval_s=5.0, reconnect_after_s=3.0, runtime="docker", stack=stack,
    )
    registry = IoTHubRegistryManager.from_connection_string(service_cs)
    device = EdgeDevice(hub, EdgeAgent(agent_config), service_cs, log_dir / "starts.log", registry)
    device.start_agent()
    try:
        await eventually(lambda: device.agent._connected, timeout=30)
        yield device, log_dir, stack
    finally:
        await device.stop_agent()
        hub.stop()
