"""Module identities in the hub, through the IoT Hub service API (azure-iot-hub RegistryManager).

The agent creates an identity (SAS, ``managedBy: IotEdge``) for each module it runs, as IoT Edge
does, and keeps the keys only in memory, for the workload API to sign with. On restart it reads
them back from the hub. The SDK is synchronous (requests), so calls run in a worker thread,
one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import ClientException, HttpOperationError

from edb_local.agent.errors import AgentError
from edb_local.workload.signer import ModuleCredential


def _status(exc: HttpOperationError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class IdentityRegistry:
    def __init__(self, service_connection_string: str, device_id: str) -> None:
        self.device_id = device_id
        self._registry = IoTHubRegistryManager.from_connection_string(service_connection_string)
        self._lock = asyncio.Lock()

    async def ensure_module(self, module_id: str) -> ModuleCredential:
        async with self._lock:
            return await asyncio.to_thread(self._ensure_module, module_id)

    async def delete_module(self, module_id: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._delete_module, module_id)

    def _ensure_module(self, module_id: str) -> ModuleCredential:
        try:
            try:
                module = self._registry.get_module(self.device_id, module_id)
            except HttpOperationError as exc:
                if _status(exc) != 404:
                    raise
                module = self._registry.create_module_with_sas(
                    self.device_id, module_id, "IotEdge", _new_key(), _new_key())
        except (HttpOperationError, ClientException) as exc:
            raise AgentError(f"cannot get or create the identity of module {module_id}: {type(exc).__name__}",
                             code="LOCAL_AGENT_IDENTITY") from None
        return _credential(module_id, module)

    def _delete_module(self, module_id: str) -> None:
        try:
            self._registry.delete_module(self.device_id, module_id)
        except HttpOperationError as exc:
            if _status(exc) != 404:
                raise AgentError(f"cannot delete the identity of module {module_id}",
                                 code="LOCAL_AGENT_IDENTITY") from None
        except ClientException:
            raise AgentError(f"cannot delete the identity of module {module_id}",
                             code="LOCAL_AGENT_IDENTITY") from None


def _credential(module_id: str, module: Any) -> ModuleCredential:
    auth = getattr(module, "authentication", None)
    key = getattr(getattr(auth, "symmetric_key", None), "primary_key", None)
    generation_id = getattr(module, "generation_id", None)
    if not key or not generation_id:
        raise AgentError(f"identity of module {module_id} has no SAS key or generation id",
                         code="LOCAL_AGENT_IDENTITY")
    try:
        return ModuleCredential.from_base64(module_id, str(generation_id), str(key))
    except ValueError:
        raise AgentError(f"identity of module {module_id} has an invalid SAS key",
                         code="LOCAL_AGENT_IDENTITY") from None
