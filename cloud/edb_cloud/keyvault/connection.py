"""How to reach a vault: URL + credential + CA bundle. The same code for Azure and the stand-in.

``credential``: ``default`` -> ``azure.identity.DefaultAzureCredential`` (environment, managed identity,
az login), the same code locally and on Azure: locally ``<state-dir>/local.env`` carries the
``AZURE_TENANT_ID``/``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET``/``AZURE_AUTHORITY_HOST`` of the Key
Vault stand-in's ``admin`` principal, which are handed to azure-identity through the process
environment while the credential is built (the settings' usual order applies: a variable set in the
environment wins over the files). A path -> azure-identity's ``ClientSecretCredential``
for a stand-in credential file (``.edb/keyvault/credentials/<client>.json``). ``ca``: a PEM bundle to
trust (the local stack CA), passed to the vault clients and to azure-identity as ``connection_verify``;
None = system trust store. For loopback vaults the SDK's challenge-resource check (host must end with
vault.azure.net) is off.

:meth:`VaultConnection.from_settings` is the one place that reads those settings (command-line
values first, then ``EDB_KEYVAULT_URL``, ``EDB_KEYVAULT_CREDENTIAL``, ``EDB_KEYVAULT_CA`` or
``EDB_CA_CERT`` from ``<state-dir>/local.env``, ``.env`` and the environment): ``edb keyvault``
and the package CLI's Key Vault keys (``edb package ... --kek https://...``) both use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient
from azure.keyvault.secrets import SecretClient

from edb.errors import ConfigError
from key_release_service.keyvault import is_loopback_url

if TYPE_CHECKING:
    from edb_cloud.config import CloudConfig


#: what azure-identity's EnvironmentCredential / ManagedIdentityCredential read from the environment
IDENTITY_VARIABLES = ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_AUTHORITY_HOST",
                      "IDENTITY_ENDPOINT", "IDENTITY_HEADER")


@contextmanager
def _environment(values: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """The settings' identity variables in the process environment while azure-identity's credentials
    read them (they do so when constructed), and the environment as it was afterwards: a second
    connection in the same process (another stack, Azure) never sees the first one's identity."""
    saved = {name: os.environ.get(name) for name, _ in values}
    os.environ.update(dict(values))
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@dataclass(frozen=True)
class VaultConnection:
    vault_url: str
    credential_spec: str = "default"
    ca: str | None = None
    #: identity variables from the settings files, for DefaultAzureCredential (never printed)
    identity_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.vault_url.startswith("https://"):
            raise ConfigError("the Key Vault URL must be https://...", code="CONFIG_INVALID")

    @classmethod
    def from_settings(cls, config: CloudConfig, *, vault_url: str | None = None, credential: str | None = None,
                      ca: str | None = None) -> VaultConnection | None:
        """Explicit values win over the settings; None when no vault URL is known at all."""
        url = vault_url or config.get("EDB_KEYVAULT_URL")
        if not url:
            return None
        identity = tuple((name, value) for name in IDENTITY_VARIABLES if (value := config.get(name)))
        return cls(url.rstrip("/"), credential or config.get("EDB_KEYVAULT_CREDENTIAL") or "default",
                   ca or config.get("EDB_KEYVAULT_CA") or config.get("EDB_CA_CERT"), identity)

    def credential(self) -> Any:
        verify: dict[str, Any] = {"connection_verify": self.ca} if self.ca else {}
        if self.credential_spec == "default":
            from azure.identity import DefaultAzureCredential

            with _environment(self.identity_env):
                return DefaultAzureCredential(**verify)
        if not Path(self.credential_spec).is_file():
            raise ConfigError(f"credential file not found: {self.credential_spec}", code="CONFIG_INVALID")
        from edb_local.keyvault.credential_file import CredentialFile

        return CredentialFile.load(self.credential_spec).client_secret_credential()

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"verify_challenge_resource": not is_loopback_url(self.vault_url)}
        if self.ca:
            kwargs["connection_verify"] = self.ca
        return kwargs

    def key_client(self) -> KeyClient:
        return KeyClient(self.vault_url, self.credential(), **self.client_kwargs())

    def secret_client(self) -> SecretClient:
        return SecretClient(self.vault_url, self.credential(), **self.client_kwargs())

    def crypto_client(self, key_id: str) -> CryptographyClient:
        return CryptographyClient(key_id, self.credential(), **self.client_kwargs())
