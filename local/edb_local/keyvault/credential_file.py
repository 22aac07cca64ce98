"""What the stand-in hands each of its clients (``<state>/credentials/<client>.json``, mode 0600): the
values Azure would put in environment variables, and azure-identity credentials built from them.

There is no credential class of the project's own: the clients use azure-identity's, the same as in
Azure. ``environment()`` gives the variables ``DefaultAzureCredential`` reads:

- a service principal (``EnvironmentCredential``): ``AZURE_TENANT_ID`` (``adfs``: see
  :mod:`edb_local.keyvault.identity` for why), ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``,
  ``AZURE_AUTHORITY_HOST`` (the stand-in's URL);
- a managed identity (``ManagedIdentityCredential``, App Service/Functions form): ``IDENTITY_ENDPOINT``
  and ``IDENTITY_HEADER``.

The stack CA goes to azure-identity as ``connection_verify`` (never ``verify=False``)::

    cred = CredentialFile.load(path).client_secret_credential()
    KeyClient(vault_url, cred, verify_challenge_resource=False, connection_verify=ca_path)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edb.errors import ConfigError

#: the tenant the stand-in's credentials name (MSAL skips Microsoft's instance discovery for it)
CLIENT_TENANT = "adfs"


@dataclass(frozen=True)
class CredentialFile:
    tenantId: str
    clientId: str
    clientSecret: str
    authorityHost: str
    identityEndpoint: str
    identityHeader: str
    caFile: str
    vaultUrl: str

    @classmethod
    def load(cls, path: Path | str) -> CredentialFile:
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{name: str(data[name]) for name in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a Key Vault stand-in credential file: {path}", code="CONFIG_KV_CREDENTIAL") from exc

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def __repr__(self) -> str:  # never show the secrets
        return f"CredentialFile(clientId={self.clientId!r}, authorityHost={self.authorityHost!r})"

    def environment(self, *, managed_identity: bool = False) -> dict[str, str]:
        """The environment variables ``DefaultAzureCredential`` takes this principal from."""
        if managed_identity:
            return {"IDENTITY_ENDPOINT": self.identityEndpoint, "IDENTITY_HEADER": self.identityHeader}
        return {"AZURE_TENANT_ID": self.tenantId, "AZURE_CLIENT_ID": self.clientId,
                "AZURE_CLIENT_SECRET": self.clientSecret, "AZURE_AUTHORITY_HOST": self.authorityHost}

    def client_secret_credential(self, *, aio: bool = False, **kwargs: Any) -> Any:
        """azure-identity's ``ClientSecretCredential`` (``.aio`` with ``aio=True``) for this principal,
        trusting the stack CA."""
        if aio:
            from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential

            return AsyncClientSecretCredential(self.tenantId, self.clientId, self.clientSecret,
                                               authority=self.authorityHost, connection_verify=self.caFile, **kwargs)
        from azure.identity import ClientSecretCredential

        return ClientSecretCredential(self.tenantId, self.clientId, self.clientSecret, authority=self.authorityHost,
                                      connection_verify=self.caFile, **kwargs)
