"""Register the simulated device and its system module identities in the hub (service API).

An IoT Edge device is created with ``capabilities.iotEdge``; IoT Hub gives it ``$edgeAgent`` and
``$edgeHub`` module identities. Whatever the hub already has is kept (a restart changes nothing).
"""

from __future__ import annotations

import base64
import secrets

from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import ClientException, HttpOperationError

from edb.iothub_ca import pin_ca
from edb_local.supervisor.context import StackContext
from edb_local.supervisor.errors import DEVICE_REGISTRATION, SupervisorError

SYSTEM_MODULES = ("$edgeAgent", "$edgeHub")


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _status(exc: HttpOperationError) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def register_edge_device(ctx: StackContext) -> None:
    register_edge_device_with(ctx.service_connection_string, ctx.device_id, str(ctx.ca))


def register_edge_device_with(service_connection_string: str, device_id: str, ca_path: str) -> None:
    # the CA is pinned on the client: REQUESTS_CA_BUNDLE in the environment cannot redirect it
    registry = pin_ca(IoTHubRegistryManager.from_connection_string(service_connection_string), ca_path)
    try:
        try:
            registry.get_device(device_id)
        except HttpOperationError as exc:
            if _status(exc) != 404:
                raise
            registry.create_device_with_sas(device_id, _key(), _key(), "enabled", iot_edge=True)
        for module_id in SYSTEM_MODULES:
            try:
                registry.get_module(device_id, module_id)
            except HttpOperationError as exc:
                if _status(exc) != 404:
                    raise
                registry.create_module_with_sas(device_id, module_id, None, _key(), _key())
    except (HttpOperationError, ClientException) as exc:
        raise SupervisorError(f"cannot register device {device_id} in the hub: {type(exc).__name__}: {exc}",
                              code=DEVICE_REGISTRATION) from None
