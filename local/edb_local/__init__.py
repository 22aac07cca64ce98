"""The local stack: stand-ins that speak the real Azure protocols, so the real SDKs run unchanged.

Parts: the IoT Hub + edgeHub stand-in (MQTT over TLS and HTTPS REST), the Key Vault stand-in,
the key release service host, Azurite (the official Blob emulator), the edge agent that runs
modules as processes, and the supervisor behind ``edb local up | down | status``.
"""
