"""Key providers: KEKs that wrap package DEKs (RSA-OAEP-256) and publisher signers (ES256).

Local PEM implementations live in :mod:`edb.keys.local`; Azure Key Vault ones in
:mod:`edb.keys.azure_keyvault` (imported lazily: the Azure SDK loads only when used).
"""

from edb.keys.base import SIGN_ALG, WRAP_ALG, KekProvider, Signer, WrappedKey
from edb.keys.local import LocalKek, LocalSigner

__all__ = ["SIGN_ALG", "WRAP_ALG", "KekProvider", "LocalKek", "LocalSigner", "Signer", "WrappedKey"]
