"""Loopback addressing for the local stack.

The IoT Hub device SDK always connects to port 8883 (MQTT) and 443 (HTTPS to the gateway), so
parallel stacks (tests, xdist workers, several developers' sessions) are told apart by address:
any 127.x.y.z is loopback on Linux. Servers get certificates with IP SANs for their address.
"""

from __future__ import annotations

import random
import socket

_PROBE_PORTS = (8883, 443, 8443, 5671)


def address_is_free(address: str, ports: tuple[int, ...] = _PROBE_PORTS) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_loopback_address(ports: tuple[int, ...] = _PROBE_PORTS, rng: random.Random | None = None) -> str:
    """A random 127.a.b.c (never 127.0.0.1) on which ``ports`` are free right now."""
    rng = rng or random.SystemRandom()
    for _ in range(200):
        address = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"
        if address_is_free(address, ports):
            return address
    raise OSError("no free loopback address found in 127.0.0.0/8")


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])
