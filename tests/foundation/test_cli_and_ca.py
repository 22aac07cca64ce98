from __future__ import annotations

import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from edb.cli.main import root
from edb.errors import EdbError, PackageError
from edb_local.stack_ca import StackCA


def test_edb_help_lists_groups() -> None:
    result = CliRunner().invoke(root, ["--help"])
    assert result.exit_code == 0
    for name in ("package", "tee", "local", "cloud", "demo"):
        assert name in result.output


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "edb.cli.main", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "edb" in out.stdout


def test_error_codes_are_stable_and_serialisable() -> None:
    err = PackageError("bad magic", code="CPK_BAD_MAGIC")
    assert isinstance(err, EdbError)
    assert err.to_dict() == {"code": "CPK_BAD_MAGIC", "message": "bad magic"}
    assert str(err) == "CPK_BAD_MAGIC: bad magic"


def test_stack_ca_server_cert_verifies_with_ip_san(stack_ca: StackCA, loopback_address: str,
                                                   tmp_path: Path) -> None:
    creds = stack_ca.issue_server("unit", ips=[loopback_address], out_dir=tmp_path)
    assert (creds.key_path.stat().st_mode & 0o777) == 0o600
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(creds.cert_path, creds.key_path)
    import socket

    srv = socket.socket()
    srv.bind((loopback_address, 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except ssl.SSLError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(creds.ca_path))
    with socket.create_connection((loopback_address, port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname=loopback_address) as tls:
        assert tls.recv(2) == b"ok"
    t.join(5)
    srv.close()


def test_stack_ca_cert_rejected_for_other_address(stack_ca: StackCA, loopback_address: str,
                                                  tmp_path: Path) -> None:
    """Hostname checking is on: a certificate for one address does not pass for another."""
    import socket

    creds = stack_ca.issue_server("other", ips=["127.9.9.9"], out_dir=tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(creds.cert_path, creds.key_path)
    srv = socket.socket()
    srv.bind((loopback_address, 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(creds.ca_path))
    with socket.create_connection((loopback_address, srv.getsockname()[1])) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        client_ctx.wrap_socket(raw, server_hostname=loopback_address)
    t.join(5)
    srv.close()
