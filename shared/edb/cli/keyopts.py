"""Choosing key providers from command-line values: a PEM path is a local key, an
``https://<vault>/keys/<name>[/<version>]`` URL a Key Vault key.

Key Vault keys are reached exactly as ``edb keyvault`` and the orchestrator reach them: the
credential and CA come from the command line (``--credential``, ``--ca-bundle``) or else from the
settings (``EDB_KEYVAULT_CREDENTIAL``, ``EDB_KEYVAULT_CA`` / ``EDB_CA_CERT`` in
``$EDB_STATE_DIR/local.env``, ``.env`` or the environment), through
:meth:`edb_cloud.keyvault.VaultConnection.from_settings`, which also turns the SDK's
challenge-resource check off for loopback vaults (the local stand-in) only. That code is the
cloud side's, imported only when a Key Vault key id is given, so a device image without it still
builds and verifies packages with local keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from edb.cli._common import is_key_vault_id, state_dir
from edb.errors import ConfigError
from edb.keys.base import KekProvider, Signer
from edb.keys.local import LocalKek, LocalSigner
from edb.pki.certs import load_pem_certificates_file

F = TypeVar("F", bound=Callable[..., Any])


def vault_options(command: F) -> F:
    """The ``--ca-bundle`` and ``--credential`` options (in that order) of a command that may be given
    a Key Vault key id; the command takes ``ca_bundle`` and ``credential`` (see :class:`VaultOptions`)."""
    # click lists options innermost last: --credential is attached first so that --ca-bundle comes first
    command = click.option(
        "--credential", "credential",
        help="Key Vault credential: 'default' (DefaultAzureCredential) or a stand-in credential file. "
             "Default: EDB_KEYVAULT_CREDENTIAL, else 'default'.")(command)
    return click.option(
        "--ca-bundle", type=click.Path(exists=True),
        help="CA bundle for Key Vault TLS. Default: EDB_KEYVAULT_CA or EDB_CA_CERT (local stack), else system.",
    )(command)


@dataclass(frozen=True)
class VaultOptions:
    """``--credential`` (``default`` = DefaultAzureCredential, or a stand-in credential file) and
    ``--ca-bundle``; None = from the settings."""

    credential: str | None = None
    ca_bundle: str | None = None


def _connection(key_id: str, options: VaultOptions) -> Any:
    from edb.keys.azure_keyvault import vault_url_of

    try:
        from edb_cloud.config import CloudConfig
        from edb_cloud.keyvault.connection import VaultConnection
    except ModuleNotFoundError as exc:
        raise ConfigError("Key Vault key ids need the project's cloud part (edb_cloud), which is not installed",
                          code="CONFIG_MISSING") from exc
    return VaultConnection.from_settings(CloudConfig.load(state_dir()), vault_url=vault_url_of(key_id),
                                         credential=options.credential, ca=options.ca_bundle)


def kek_provider(value: str, options: VaultOptions | None = None) -> KekProvider:
    if is_key_vault_id(value):
        from edb.keys.azure_keyvault import KeyVaultKek

        vault = _connection(value, options or VaultOptions())
        return KeyVaultKek(value, vault.credential(), **vault.client_kwargs())
    return LocalKek.from_file(Path(value))


def signer_provider(key: str, cert: str, options: VaultOptions | None = None) -> Signer:
    if is_key_vault_id(key):
        from edb.keys.azure_keyvault import KeyVaultSigner

        vault = _connection(key, options or VaultOptions())
        return KeyVaultSigner(key, load_pem_certificates_file(cert), vault.credential(), **vault.client_kwargs())
    return LocalSigner.from_files(key, cert)
