"""Health checks against real local servers (TLS with the stack CA, Unix sockets with long paths)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

from edb_local.stack_ca import StackCA
from edb_local.supervisor.health import https_responds, tls_handshake, unix_socket_accepts


def test_unix_socket_check_reaches_paths_longer_than_sun_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "tee.sock"
    assert len(str(path)) > 108
    dirfd = os.open(deep, os.O_PATH | os.O_DIRECTORY)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(f"/proc/self/fd/{dirfd}/tee.sock")
        server.listen(1)
        assert unix_socket_accepts(path).ok
    finally:
        server.close()
        os.close(dirfd)
    path.unlink()
    missing = unix_socket_accepts(path)
    assert not missing.ok and "tee.sock" in missing.detail


def test_tls_checks_verify_the_stack_ca_and_the_ip_san(tmp_path: Path, stack_ca: StackCA,
                                                       loopback_address: str) -> None:
    creds = stack_ca.issue_server("probe", ips=[loopback_address], out_dir=tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(creds.cert_path, creds.key_path)
    listener = socket.create_server((loopback_address, 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(1024).startswith(b"GET"):
                        tls.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert tls_handshake(loopback_address, port, stack_ca.ca_path).ok
        answer = https_responds(loopback_address, port, stack_ca.ca_path)
        assert answer.ok and "401" in answer.detail
        # A CA that did not issue the certificate is refused: verification is never off.
        other = StackCA.load_or_create(tmp_path / "other-ca")
        assert not tls_handshake(loopback_address, port, other.ca_path).ok
    finally:
        thread.join(10)
        listener.close()
