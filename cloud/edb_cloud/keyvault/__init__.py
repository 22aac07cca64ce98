"""KEK and publisher signing key lifecycle in Azure Key Vault, and release policies per package.

Works unchanged against Azure Key Vault (``DefaultAzureCredential``) and the local stand-in (its
credential file and the stack CA): only configuration differs. The CLI is ``edb keyvault``.
"""

from edb_cloud.keyvault.connection import VaultConnection
from edb_cloud.keyvault.lifecycle import (
    KEK_OPS,
    SIGNER_OPS,
    KeyVersion,
    disable_version,
    enable_version,
    ensure_kek,
    ensure_signer,
    list_versions,
    rotate_kek,
)
from edb_cloud.keyvault.policies import add_revoked_version, get_policy, put_policy

__all__ = [
    "KEK_OPS",
    "SIGNER_OPS",
    "KeyVersion",
    "VaultConnection",
    "add_revoked_version",
    "disable_version",
    "enable_version",
    "ensure_kek",
    "ensure_signer",
    "get_policy",
    "list_versions",
    "put_policy",
    "rotate_kek",
]
