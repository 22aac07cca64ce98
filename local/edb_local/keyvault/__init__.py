"""The local Key Vault stand-in: the real ``azure-keyvault-keys``/``-secrets`` SDKs run against it.

HTTPS with a certificate from the stack CA, Key Vault's challenge authentication with bearer tokens
from its own issuer, keys (RSA, EC) and secrets with versions, tags, enable/disable and soft delete,
and the cryptographic operations (RSA-OAEP(-256) wrap/unwrap/encrypt/decrypt, ES256/PS256 sign and
verify). State lives in SQLite; private keys and secret values are sealed under a 0600 master key.
See docs/keyvault-standin.md.

- :class:`KeyVaultStandIn` starts it (``await start()``, or ``with running_in_thread():``);
- :class:`LocalTokenCredential` / :class:`AsyncLocalTokenCredential` get tokens from it;
- ``python -m edb_local.keyvault serve --state-dir ... --address ... --port ... --cert ... --key ... --ca ...``.
"""

from edb_local.keyvault.credential import AsyncLocalTokenCredential, CredentialFile, LocalTokenCredential
from edb_local.keyvault.server import KeyVaultStandIn

__all__ = ["AsyncLocalTokenCredential", "CredentialFile", "KeyVaultStandIn", "LocalTokenCredential"]
