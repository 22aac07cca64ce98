"""Start a Key Vault stand-in for tests (shared by tests/keyvault and tests/keyrelease)."""

from __future__ import annotations

from pathlib import Path

from edb_local.keyvault import KeyVaultStandIn
from edb_local.net import free_loopback_address
from edb_local.stack_ca import StackCA


def start_standin(stack_ca: StackCA, state_dir: Path, address: str | None = None) -> KeyVaultStandIn:
    address = address or free_loopback_address()
    creds = stack_ca.issue_server(f"keyvault-{address}", ips=[address], out_dir=state_dir.parent / "tls")
    return KeyVaultStandIn(state_dir, address=address, port=0, cert_path=creds.cert_path,
                           key_path=creds.key_path, ca_path=stack_ca.ca_path)
