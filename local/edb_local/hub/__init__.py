"""The IoT Hub + edgeHub stand-in: MQTT 3.1.1/TLS for azure-iot-device, HTTPS REST for
azure-iot-hub, edgeHub routing with store-and-forward, direct methods, and the upstream log
behind `edb monitor`. See docs/iothub-standin.md."""

from edb_local.hub.config import OWNER_POLICY, HubConfig, load_or_create_owner_key
from edb_local.hub.errors import HubError
from edb_local.hub.server import HubServer, HubThread

__all__ = ["OWNER_POLICY", "HubConfig", "HubError", "HubServer", "HubThread", "load_or_create_owner_key"]
