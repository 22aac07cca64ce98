"""The IoT Edge workload API stand-in: trust bundle and SAS signing over per-module Unix sockets.

``IoTHubModuleClient.create_from_edge_environment()`` calls it on its production path:
``GET trust-bundle`` for the CA that verifies the gateway, ``POST modules/{m}/genid/{g}/sign`` for
the HMAC of its SAS token. The module's key never leaves the agent process.
"""
