"""Error codes of certificate chain checks (``PKI_*``).

Callers translate these into their own area's codes where the contract asks for it (the package
library maps every chain failure to ``CPK_UNTRUSTED_SIGNER``; the key release service to its
``KR_*`` codes), keeping the PKI reason in ``details["pki_code"]``.
"""

from __future__ import annotations

from edb.errors import EdbError


class CertificateError(EdbError):
    """A certificate or chain is malformed, untrusted, out of its validity period or of the wrong purpose."""

    code = "PKI_ERROR"


#: Not parseable as X.509 (PEM/DER), or too many / too large certificates.
MALFORMED = "PKI_MALFORMED"
#: No path from the leaf to a pinned trust root (unknown issuer, bad link signature, depth).
UNTRUSTED = "PKI_UNTRUSTED"
#: A certificate in the presented chain has expired at the validation time.
EXPIRED = "PKI_EXPIRED"
#: A certificate in the presented chain is not yet valid at the validation time.
NOT_YET_VALID = "PKI_NOT_YET_VALID"
#: Key usage, extended key usage or basic constraints do not allow this purpose.
WRONG_USAGE = "PKI_WRONG_USAGE"
