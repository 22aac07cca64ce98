"""Error codes of key providers (all raised as :class:`edb.errors.KeyProviderError`)."""

from __future__ import annotations

from edb.errors import KeyProviderError

__all__ = [
    "ALGORITHM",
    "AUTH_FAILED",
    "CHALLENGE_REFUSED",
    "DISABLED",
    "INVALID_KEY",
    "RETRYABLE_CODES",
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
#: The remote key service could not be reached or answered with an error (transient: retry later).
UNAVAILABLE = "KEY_UNAVAILABLE"
#: The key version is disabled, or outside its activation/expiry dates (Key Vault's 403
#: ``KeyDisabled``/``KeyExpired``): revoked on purpose, so retrying cannot help.
DISABLED = "KEY_DISABLED"

#: No credential could be obtained for Key Vault, or Key Vault refused it (401): a configuration
#: problem (``az login``, managed identity, the stand-in's credential file), not an outage.
AUTH_FAILED = "KEY_AUTH_FAILED"
#: The Key Vault client refused the vault's authentication challenge (for example its resource is
#: not the vault's domain, as for a stand-in reached without ``verify_challenge_resource=False``).
CHALLENGE_REFUSED = "KEY_CHALLENGE_REFUSED"

#: Codes for which trying again later may succeed without anyone changing anything.
RETRYABLE_CODES = frozenset({UNAVAILABLE})
