"""X.509 helpers: certificate profiles, chain verification against pinned roots, and our OIDs.

- :func:`edb.pki.chain.verify_chain`: generic path validation (publisher chains, device chains).
- :mod:`edb.pki.issue`: development certificate profiles (root CA, intermediate, signing leaf).
- :mod:`edb.pki.devpki`: ``edb pki init`` (publisher root, signing certificate, local KEK).
- :mod:`edb.pki.certs`: bounded PEM/DER loading.
"""

from edb.pki.chain import verify_chain
from edb.pki.errors import CertificateError

__all__ = ["CertificateError", "verify_chain"]
