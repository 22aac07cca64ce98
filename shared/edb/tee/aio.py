"""asyncio wrapper of :class:`edb.tee.client.TeeClient` for the IoT Edge modules.

Each call runs the blocking client in a worker thread (``asyncio.to_thread``); the client's
connection pool lets several calls proceed at once (for example ``infer`` on the serving version
while the next version loads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy.typing as npt

from edb.tee.client import TeeClient
from edb.tee.context import DEFAULT_TIMEOUT_S
from edb.tee.shm import DEFAULT_REGION_BYTES, DEFAULT_THRESHOLD
from edb.tee.types import DeviceInfo, Evidence, InstalledPackage, InstallSummary, InstallTicket, ModelHandle

Array = npt.NDArray[Any]


class AsyncTeeClient:
    def __init__(self, socket_path: Path | str, *, timeout: float | None = DEFAULT_TIMEOUT_S,
                 reconnect_s: float = 10.0, max_connections: int = 4,
                 shm_threshold: int | None = DEFAULT_THRESHOLD, shm_bytes: int = DEFAULT_REGION_BYTES) -> None:
        self.sync = TeeClient(socket_path, timeout=timeout, reconnect_s=reconnect_s,
                              max_connections=max_connections, shm_threshold=shm_threshold, shm_bytes=shm_bytes)

    async def device_info(self) -> DeviceInfo:
        return await asyncio.to_thread(self.sync.device_info)

    async def get_evidence(self, nonce: str, user_data: bytes = b"") -> Evidence:
        return await asyncio.to_thread(self.sync.get_evidence, nonce, user_data)

    async def list_installed(self) -> list[InstalledPackage]:
        return await asyncio.to_thread(self.sync.list_installed)

    async def legacy_public_key(self) -> bytes:
        return await asyncio.to_thread(self.sync.legacy_public_key)

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.status)

    async def begin_install(self, name: str, package_file: Path | str | int | IO[bytes]) -> InstallTicket:
        return await asyncio.to_thread(self.sync.begin_install, name, package_file)

    async def get_install_evidence(self, ticket: InstallTicket, nonce: str) -> Evidence:
        return await asyncio.to_thread(self.sync.get_install_evidence, ticket, nonce)

    async def complete_install(self, ticket: InstallTicket, jwe: str) -> InstallSummary:
        return await asyncio.to_thread(self.sync.complete_install, ticket, jwe)

    async def complete_install_legacy(self, ticket: InstallTicket, wrapped_key_b64: str) -> InstallSummary:
        return await asyncio.to_thread(self.sync.complete_install_legacy, ticket, wrapped_key_b64)

    async def abort_install(self, ticket: InstallTicket) -> None:
        await asyncio.to_thread(self.sync.abort_install, ticket)

    async def uninstall(self, name: str) -> None:
        await asyncio.to_thread(self.sync.uninstall, name)

    async def load_model(self, name: str, *, prepack: bool | None = None) -> ModelHandle:
        return await asyncio.to_thread(lambda: self.sync.load_model(name, prepack=prepack))

    async def infer(self, handle: ModelHandle, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return await asyncio.to_thread(self.sync.infer, handle, inputs)

    async def infer_many(self, handle: ModelHandle, batch: Sequence[Mapping[str, Array]]) -> list[dict[str, Array]]:
        return await asyncio.to_thread(self.sync.infer_many, handle, batch)

    async def unload(self, handle: ModelHandle) -> None:
        await asyncio.to_thread(self.sync.unload, handle)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncTeeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
