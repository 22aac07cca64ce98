"""The local Key Vault stand-in: the real ``azure-keyvault-keys``/``-secrets`` SDKs run against it.

HTTPS with a certificate from the stack CA, Key Vault's challenge authentication with bearer tokens
from its own issuer, keys (RSA, EC) and secrets with versions, tags, enable/disable and soft delete,
and the cryptographic operations (RSA-OAEP(-256) wrap/unwrap/encrypt/decrypt, ES256/PS256 sign and
verify). State lives in SQLite; private keys and secret values are sealed under a 0600 master key.
See docs/keyvault-standin.md.

- :class:`KeyVaultStandIn` starts it (``await start()``, or ``with running_in_thread():``);
- its token issuer speaks what azure-identity needs (OpenID discovery, client credentials, the App
  Service managed identity endpoint): clients use ``DefaultAzureCredential`` / ``ClientSecretCredential``
  with the values of :class:`CredentialFile` (``credentials/<client>.json``);
- ``python -m edb_local.keyvault serve --state-dir ... --address ... --port ... --cert ... --key ... --ca ...``.
"""

from edb_local.keyvault.credential_file import CredentialFile
from edb_local.keyvault.server import KeyVaultStandIn

__all__ = ["CredentialFile", "KeyVaultStandIn"]
