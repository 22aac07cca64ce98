"""IoT Hub service calls the orchestrator makes (azure-iot-hub), with typed errors.

Same code against Azure IoT Hub and the local stand-in: only the connection string and, locally,
the CA bundle (``EDB_CA_CERT``, pinned on the SDK's clients by :func:`edb.iothub_ca.pin_ca`, so
``REQUESTS_CA_BUNDLE`` in the environment cannot redirect it) differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from edb.errors import EdbError

T = TypeVar("T")


class CloudError(EdbError):
    code = "CLOUD_ERROR"


def _service_error(response: Any) -> str | None:
    """The service's own error code and message, if the body carries them."""
    try:
        body = json.loads(response.text) if response is not None else None
    except (ValueError, AttributeError):
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return f"{error['code']} {str(error.get('message', ''))[:200]}"
    message = body.get("Message")
    return str(message)[:200] if message else None


@dataclass(frozen=True)
class ModuleTwin:
    device_id: str
    module_id: str
    desired: dict[str, Any]
    reported: dict[str, Any]
    connection_state: str | None = None


class HubService:
    def __init__(self, connection_string: str, ca_cert: str | os.PathLike[str] | None = None) -> None:
        """``ca_cert``: the PEM bundle to trust for the hub (the local stack's CA); None = system trust."""
        from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager

        from edb.iothub_ca import pin_ca

        self._registry = pin_ca(IoTHubRegistryManager.from_connection_string(connection_string), ca_cert)
        self._configurations = pin_ca(IoTHubConfigurationManager.from_connection_string(connection_string), ca_cert)

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except EdbError:
            raise
        except Exception as exc:
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
            detail = f"HTTP {status}" if status else type(exc).__name__
            service_error = _service_error(response)
            if service_error:
                detail += f": {service_error}"
            code = "CLOUD_NOT_FOUND" if status == 404 else "CLOUD_IOTHUB_FAILED"
            raise CloudError(f"IoT Hub {action} failed ({detail})", code=code) from None

    # -- deployments -------------------------------------------------------------------------------
    def apply_deployment(self, device_id: str, modules_content: Mapping[str, Any]) -> None:
        from azure.iot.hub.models import ConfigurationContent

        content = ConfigurationContent(modules_content=dict(modules_content))
        self._call("applyConfigurationContent",
                   lambda: self._configurations.apply_configuration_on_edge_device(device_id, content))

    def put_deployment(self, deployment_id: str, modules_content: Mapping[str, Any], *, target_condition: str,
                       priority: int, labels: Mapping[str, str] | None = None,
                       metrics: Mapping[str, str] | None = None) -> None:
        """Create (or replace) an automatic or layered deployment (``metrics``: custom metric queries)."""
        from azure.iot.hub.models import Configuration, ConfigurationContent, ConfigurationMetrics

        configuration = Configuration(
            id=deployment_id, schema_version="1.0", labels=dict(labels or {}),
            content=ConfigurationContent(modules_content=dict(modules_content)),
            target_condition=target_condition, priority=priority,
            metrics=ConfigurationMetrics(queries=dict(metrics)) if metrics else None,
        )
        try:
            self._configurations.get_configuration(deployment_id)
            exists = True
        except Exception:
            exists = False
        if exists:
            self._call("delete configuration", lambda: self._configurations.delete_configuration(deployment_id))
        self._call("create configuration", lambda: self._configurations.create_configuration(configuration))

    # -- twins -------------------------------------------------------------------------------------
    def module_twin(self, device_id: str, module_id: str) -> ModuleTwin:
        twin = self._call("get module twin", lambda: self._registry.get_module_twin(device_id, module_id))
        properties = twin.properties
        return ModuleTwin(device_id, module_id, dict(properties.desired or {}) if properties else {},
                          dict(properties.reported or {}) if properties else {},
                          getattr(twin, "connection_state", None))

    def patch_module_desired(self, device_id: str, module_id: str, patch: Mapping[str, Any]) -> None:
        from azure.iot.hub.models import Twin, TwinProperties

        twin = Twin(properties=TwinProperties(desired=json.loads(json.dumps(patch))))
        self._call("update module twin", lambda: self._registry.update_module_twin(device_id, module_id, twin, "*"))

    def set_device_tags(self, device_id: str, tags: Mapping[str, Any]) -> None:
        from azure.iot.hub.models import Twin

        self._call("update device twin", lambda: self._registry.update_twin(device_id, Twin(tags=dict(tags)), "*"))

    def invoke_module_method(self, device_id: str, module_id: str, method: str, payload: Any,
                             timeout_s: int = 30) -> tuple[int, Any]:
        from azure.iot.hub.models import CloudToDeviceMethod

        request = CloudToDeviceMethod(method_name=method, payload=payload, response_timeout_in_seconds=timeout_s,
                                      connect_timeout_in_seconds=10)
        result = self._call(f"invoke {method}",
                            lambda: self._registry.invoke_device_module_method(device_id, module_id, request))
        return int(result.status), result.payload

    def query(self, text: str) -> list[Any]:
        """Every item of a twin query, following continuation tokens."""
        from azure.iot.hub.models import QuerySpecification

        spec = QuerySpecification(query=text)
        items: list[Any] = []
        token: str | None = None
        while True:
            result = self._call("query", lambda t=token: self._registry.query_iot_hub(spec, t, 1000))  # type: ignore[misc]
            items.extend(result.items or [])
            token = result.continuation_token
            if not token:
                return items

    def edge_devices(self, condition: str | None = None) -> list[str]:
        """Device ids of IoT Edge devices, optionally filtered by a twin query condition ("*": all)."""
        if condition is not None and condition.strip() == "":
            return []  # IoT Hub: an empty target condition targets no device
        where = "capabilities.iotEdge = true"
        if condition and condition.strip() != "*":
            where += f" AND ({condition})"
        ids = []
        for item in self.query(f"SELECT * FROM devices WHERE {where}"):  # noqa: S608 - the operator's query
            device_id = item.get("deviceId") if isinstance(item, Mapping) else getattr(item, "device_id", None)
            if isinstance(device_id, str):
                ids.append(device_id)
        return sorted(set(ids))

    def module_twins(self, module_id: str) -> list[ModuleTwin]:
        """Every twin of one module id across the hub (one paged query, not one GET per device)."""
        quoted = module_id.replace("'", "''")
        twins = []
        for item in self.query(f"SELECT * FROM devices.modules WHERE moduleId = '{quoted}'"):  # noqa: S608
            if isinstance(item, Mapping):
                props = item.get("properties") or {}
                twins.append(ModuleTwin(str(item.get("deviceId")), module_id, dict(props.get("desired") or {}),
                                        dict(props.get("reported") or {}), item.get("connectionState")))
            else:
                props = item.properties
                twins.append(ModuleTwin(item.device_id, module_id, dict(props.desired or {}) if props else {},
                                        dict(props.reported or {}) if props else {},
                                        getattr(item, "connection_state", None)))
        return twins

    def deployments(self) -> list[Any]:
        """Every configuration (azure.iot.hub.models.Configuration), edge deployments and others."""
        return list(self._call("list configurations", lambda: self._configurations.get_configurations(1000)) or [])

    def get_deployment(self, deployment_id: str) -> Any:
        return self._call("get configuration", lambda: self._configurations.get_configuration(deployment_id))

    def update_deployment_labels(self, deployment_id: str, labels: Mapping[str, str],
                                 metrics: Mapping[str, str] | None = None) -> None:
        """Labels and metric queries are the parts of a configuration IoT Hub lets change."""
        from azure.iot.hub.models import ConfigurationMetrics

        configuration = self.get_deployment(deployment_id)
        configuration.labels = dict(labels)
        if metrics is not None:
            configuration.metrics = ConfigurationMetrics(queries=dict(metrics))
        self._call("update configuration",
                   lambda: self._configurations.update_configuration(configuration, configuration.etag))

    def delete_deployment(self, deployment_id: str) -> None:
        self._call("delete configuration", lambda: self._configurations.delete_configuration(deployment_id))
