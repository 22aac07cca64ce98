"""Error codes of the attestation contracts."""

from __future__ import annotations

from edb.errors import EdbError


class AttestationError(EdbError):
    """Evidence or a wrapped key is malformed or fails verification (ATT_*)."""

    code = "ATT_ERROR"


EVIDENCE_MALFORMED = "ATT_EVIDENCE_MALFORMED"
EVIDENCE_SIGNATURE = "ATT_EVIDENCE_SIGNATURE"
NONCE_TOO_LARGE = "ATT_NONCE_TOO_LARGE"
KEYWRAP_MALFORMED = "ATT_KEYWRAP_MALFORMED"
KEYWRAP_WRONG_KEY = "ATT_KEYWRAP_WRONG_KEY"
KEYWRAP_BINDING = "ATT_KEYWRAP_BINDING"
