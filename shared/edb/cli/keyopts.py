"""Choosing key providers from command-line values: a PEM path is a local key, an
``https://<vault>/keys/<name>[/<version>]`` URL a Key Vault key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edb.cli._common import is_key_vault_id
from edb.keys.base import KekProvider, Signer
from edb.keys.local import LocalKek, LocalSigner
from edb.pki.certs import load_pem_certificates_file


def _kv_kwargs(ca_bundle: str | None) -> dict[str, Any]:
    return {"connection_verify": ca_bundle} if ca_bundle else {}


def kek_provider(value: str, ca_bundle: str | None = None) -> KekProvider:
    if is_key_vault_id(value):
        from edb.keys.azure_keyvault import KeyVaultKek

        return KeyVaultKek(value, **_kv_kwargs(ca_bundle))
    return LocalKek.from_file(Path(value))


def signer_provider(key: str, cert: str, ca_bundle: str | None = None) -> Signer:
    if is_key_vault_id(key):
        from edb.keys.azure_keyvault import KeyVaultSigner

        return KeyVaultSigner(key, load_pem_certificates_file(cert), **_kv_kwargs(ca_bundle))
    return LocalSigner.from_files(key, cert)
