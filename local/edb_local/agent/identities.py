"""Module identities in the hub, through the IoT Hub service API (azure-iot-hub RegistryManager).

The agent creates an identity (SAS, ``managedBy: IotEdge``) for each module it runs, as IoT Edge
does, for the workload API to sign with. Like IoT Edge's identity and key services, it keeps the
identities it got in a local cache (``agent/identities.json``, mode 0600), so a device restarted
while the hub is unreachable still starts its modules; the hub stays the source of truth whenever
it answers. The SDK is synchronous (requests), so calls run in a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import ClientException, HttpOperationError

from edb.iothub_ca import pin_ca
from edb_local.agent.errors import AgentError
from edb_local.workload.signer import ModuleCredential


def _status(exc: HttpOperationError) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class IdentityRegistry:
    def __init__(self, service_connection_string: str, device_id: str, cache_path: Path | None = None, *,
                 ca_path: Path | None = None) -> None:
        self.device_id = device_id
        # the stack CA is pinned on the client (edb.iothub_ca): the environment cannot redirect it
        self._registry = pin_ca(IoTHubRegistryManager.from_connection_string(service_connection_string), ca_path)
        self._lock = asyncio.Lock()
        self._cache_path = cache_path

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
                self._forget_cached(module_id)  # the hub says it is gone: a new identity
                module = self._registry.create_module_with_sas(
                    self.device_id, module_id, "IotEdge", _new_key(), _new_key())
        except HttpOperationError as exc:
            raise AgentError(f"cannot get or create the identity of module {module_id}: HTTP {_status(exc)}",
                             code="LOCAL_AGENT_IDENTITY") from None
        except ClientException as exc:  # the hub is unreachable: the cached identity, if any
            cached = self._cached(module_id)
            if cached is not None:
                return cached
            raise AgentError(f"cannot get or create the identity of module {module_id}: {type(exc).__name__}",
                             code="LOCAL_AGENT_IDENTITY") from None
        credential = _credential(module_id, module)
        self._cache(credential)
        return credential

    def _delete_module(self, module_id: str) -> None:
        self._forget_cached(module_id)
        try:
            self._registry.delete_module(self.device_id, module_id)
        except HttpOperationError as exc:
            if _status(exc) != 404:
                raise AgentError(f"cannot delete the identity of module {module_id}",
                                 code="LOCAL_AGENT_IDENTITY") from None
        except ClientException:
            raise AgentError(f"cannot delete the identity of module {module_id}",
                             code="LOCAL_AGENT_IDENTITY") from None

    # -- the local identity cache (0600) ----------------------------------------------------------

    def _read_cache(self) -> dict[str, Any]:
        if self._cache_path is None:
            return {}
        try:
            doc = json.loads(self._cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write_cache(self, doc: dict[str, Any]) -> None:
        if self._cache_path is None:
            return
        self._cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._cache_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        tmp.replace(self._cache_path)

    def _cached(self, module_id: str) -> ModuleCredential | None:
        entry = self._read_cache().get(module_id)
        if not isinstance(entry, dict):
            return None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return ModuleCredential.from_base64(module_id, str(entry["generationId"]), str(entry["primaryKey"]))
        return None

    def _cache(self, credential: ModuleCredential) -> None:
        doc = self._read_cache()
        entry = {"generationId": credential.generation_id,
                 "primaryKey": base64.b64encode(credential.primary_key).decode()}
        if doc.get(credential.module_id) != entry:
            doc[credential.module_id] = entry
            self._write_cache(doc)

    def _forget_cached(self, module_id: str) -> None:
        doc = self._read_cache()
        if doc.pop(module_id, None) is not None:
            self._write_cache(doc)


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
