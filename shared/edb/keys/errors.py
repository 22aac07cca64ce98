"""Error codes of key providers (all raised as :class:`edb.errors.KeyProviderError`)."""

from __future__ import annotations

from edb.errors import KeyProviderError

__all__ = [
    "ALGORITHM",
    "INVALID_KEY",
    "SIGNER_MISMATCH",
    "SIGN_FAILED",
    "UNAVAILABLE",
    "UNWRAP_FAILED",
    "WRONG_KID",
    "KeyProviderError",
]

#: A key file is missing, unreadable, not PEM, or of the wrong type/size.
INVALID_KEY = "KEY_INVALID"
#: The wrapped key names a different KEK (kid) than this provider holds.
WRONG_KID = "KEY_WRONG_KID"
#: The wrapped key could not be unwrapped (wrong key, corrupted value).
UNWRAP_FAILED = "KEY_UNWRAP_FAILED"
#: An algorithm other than RSA-OAEP-256 (wrap) or ES256 (sign) was asked for.
ALGORITHM = "KEY_ALGORITHM"
#: Signing failed at the provider.
SIGN_FAILED = "KEY_SIGN_FAILED"
#: The signature does not verify with the certificate the signer presents.
SIGNER_MISMATCH = "KEY_SIGNER_MISMATCH"
#: The remote key service could not be reached or answered with an error.
UNAVAILABLE = "KEY_UNAVAILABLE"
