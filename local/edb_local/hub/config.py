"""Configuration of one hub stand-in instance."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from edb_local.hub import errors
from edb_local.hub.errors import HubError

OWNER_POLICY = "iothubowner"


@dataclass(frozen=True)
class HubConfig:
    state_dir: Path                 # the hub's own directory (hub.sqlite lives here)
    address: str                    # a 127.0.0.0/8 address; MQTT and HTTPS bind here
    hub_name: str                   # IoT Hub host name devices sign for (IOTEDGE_IOTHUBHOSTNAME)
    cert_path: Path                 # server certificate (stack CA, IP SAN for `address`)
    key_path: Path
    owner_key: str                  # base64 key of the `iothubowner` shared access policy
    mqtt_port: int = 8883
    https_port: int = 443
    max_packet_bytes: int = 300 * 1024     # IoT Hub messages are at most 256 KB, plus topic room
    max_message_bytes: int = 256 * 1024
    inflight_window: int = 64              # unacknowledged QoS 1 input deliveries per module
    connect_timeout_secs: float = 10.0     # time a new TCP/TLS connection has to send CONNECT
    upstream_keep: int = 100_000           # upstream log rows kept for the monitor
    amqp_port: int = 5671                  # Event Hub-compatible endpoint and service AMQP (C2D)
    eventhub_partitions: int = 4           # IoT Hub's default partition count
    consumer_groups: tuple[str, ...] = ("$Default",)
    c2d_queue_limit: int = 50              # IoT Hub: at most 50 cloud-to-device messages queued per device
    c2d_default_ttl_secs: float = 3600.0   # IoT Hub's default C2D time to live (1 hour)
    c2d_max_ttl_secs: float = 48 * 3600.0
    c2d_max_message_bytes: int = 64 * 1024  # IoT Hub's C2D message size limit
    c2d_max_delivery_count: int = 10       # IoT Hub's default maxDeliveryCount (explicit abandons)
    #: the service-bound feedback queue (IoT Hub's feedback.* defaults: 1 h, 60 s lock, 10 deliveries;
    #: records per feedback message: 64, as IoT Hub batches); at most this many records held
    feedback_ttl_secs: float = 3600.0
    feedback_lock_secs: float = 60.0
    feedback_max_delivery_count: int = 10
    feedback_max_records: int = 10_000
    #: file upload: the storage account (Azurite locally; "" = file upload not configured, 501), the
    #: container devices upload into, and the CA to trust when the hub creates that container
    file_upload_connection_string: str = field(default="", repr=False)
    file_upload_container: str = "fileupload"
    file_upload_ca: Path | None = None

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise HubError(f"address {self.address!r} is not an IP address", code=errors.CONFIG_INVALID) from None
        if not ip.is_loopback:
            raise HubError("the hub stand-in binds loopback addresses only (127.0.0.0/8)",
                           code=errors.CONFIG_INVALID)
        if not self.hub_name or "/" in self.hub_name:
            raise HubError("hub name must be a host name", code=errors.CONFIG_INVALID)
        try:
            if len(base64.b64decode(self.owner_key, validate=True)) < 16:
                raise ValueError
        except (ValueError, binascii.Error):
            raise HubError("owner key must be base64 of at least 16 bytes", code=errors.CONFIG_INVALID) from None

    @property
    def service_host(self) -> str:
        """HostName of the service connection string (the service SDK connects to it)."""
        return self.address if self.https_port == 443 else f"{self.address}:{self.https_port}"

    @property
    def device_host_names(self) -> frozenset[str]:
        """Host names a device or module SAS token and MQTT username may name."""
        return frozenset({self.hub_name, self.address})

    @property
    def eventhub_name(self) -> str:
        """The Event Hub-compatible name of the built-in endpoint (IoT Hub uses the hub's name)."""
        return self.hub_name.split(".")[0]

    @property
    def eventhub_connection_string(self) -> str:
        return eventhub_connection_string(self.address, self.hub_name, self.owner_key, self.amqp_port)

    @property
    def service_connection_string(self) -> str:
        return (f"HostName={self.service_host};SharedAccessKeyName={OWNER_POLICY};"
                f"SharedAccessKey={self.owner_key}")

    def module_connection_string(self, device_id: str, module_id: str, key: str) -> str:
        """What IoT Edge's EdgeHubConnectionString looks like for a module of this hub."""
        return (f"HostName={self.hub_name};DeviceId={device_id};ModuleId={module_id};SharedAccessKey={key};"
                f"GatewayHostName={self.address}")

    def device_connection_string(self, device_id: str, key: str) -> str:
        return f"HostName={self.hub_name};DeviceId={device_id};SharedAccessKey={key};GatewayHostName={self.address}"


def eventhub_connection_string(address: str, hub_name: str, owner_key: str, amqp_port: int = 5671) -> str:
    """What `EventHubConsumerClient.from_connection_string` takes: the built-in endpoint with the
    `service` policy, as the portal's "Built-in endpoints" page shows it."""
    from edb_local.hub.amqp.auth import SERVICE_POLICY, service_policy_key

    endpoint = address if amqp_port == 5671 else f"{address}:{amqp_port}"
    return (f"Endpoint=sb://{endpoint}/;SharedAccessKeyName={SERVICE_POLICY};"
            f"SharedAccessKey={service_policy_key(owner_key)};EntityPath={hub_name.split('.')[0]}")


def load_or_create_owner_key(path: Path) -> str:
    """Read the `iothubowner` key (base64, one line); create it (mode 0600) if the file is missing."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key
