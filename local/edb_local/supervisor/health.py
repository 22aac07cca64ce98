"""Health checks of the stack's components (each a short, bounded network or file probe)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from edb_local.supervisor.pidfile import live_pid

_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


def tls_handshake(address: str, port: int, ca: Path) -> Health:
    """A verified TLS handshake (the server's certificate must chain to the stack CA and name the address)."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((address, port), timeout=_TIMEOUT_S) as raw, \
                context.wrap_socket(raw, server_hostname=address):
            return Health(True, f"tls {address}:{port}")
    except (OSError, ssl.SSLError) as exc:
        return Health(False, f"tls {address}:{port}: {exc}")


def https_responds(address: str, port: int, ca: Path, path: str = "/", *, require_ok: bool = False) -> Health:
    """An HTTP answer over verified TLS. By default any status counts (401/404 mean the server is up
    and speaking HTTP); ``require_ok`` wants a 2xx from a health endpoint."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(address, port, timeout=_TIMEOUT_S, context=context)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
        ok = 200 <= status < 300 if require_ok else True
        return Health(ok, f"https://{address}:{port}{path if require_ok else ''} answers {status}")
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return Health(False, f"https://{address}:{port}: {exc}")
    finally:
        conn.close()


def unix_socket_accepts(path: Path) -> Health:
    """A connect to a Unix socket. sun_path holds 108 bytes, so a longer path (deep state or test
    directories) is reached through ``/proc/self/fd/<directory fd>/<name>``."""
    try:
        dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return Health(False, f"{path}: {exc.strerror or exc}")
    try:
        address = str(path) if len(os.fsencode(path)) <= 100 else f"/proc/self/fd/{dirfd}/{path.name}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_TIMEOUT_S)
            sock.connect(address)
    except OSError as exc:
        return Health(False, f"{path}: {exc.strerror or exc}")
    finally:
        os.close(dirfd)
    return Health(True, f"socket {path}")


def agent_connected(health_file: Path, pid_file: Path) -> Health:
    """The agent writes ``agent/health.json`` on every pass; healthy = alive and connected to the hub."""
    pid = live_pid(pid_file)
    try:
        doc = json.loads(health_file.read_text())
    except (OSError, ValueError):
        return Health(False, "no health report yet")
    if pid is None or doc.get("pid") != pid:
        return Health(False, "agent process not running")
    if not doc.get("connected"):
        return Health(False, "not connected to the hub")
    status = doc.get("lastDesiredStatus") or {}
    modules = doc.get("modules") or {}
    summary = ", ".join(f"{m}={s}" for m, s in sorted(modules.items())) or "no modules"
    return Health(True, f"connected; deployment {doc.get('lastDesiredVersion')} ({status.get('code')}); {summary}")
