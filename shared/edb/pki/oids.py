"""Object identifiers of this project.

Private purposes use the UUID arc 2.25 (ITU-T X.667), which needs no registration.
"""

from __future__ import annotations

from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

#: Extended key usage of a device attestation certificate (issued by the manufacturer CA at
#: provisioning). The key release service accepts evidence only from leaf certificates with it.
DEVICE_ATTESTATION_EKU = ObjectIdentifier("2.25.53331192333617756380223665029194641204")

#: Extended key usage a publisher (package signing) certificate must carry.
PUBLISHER_SIGNING_EKU = ExtendedKeyUsageOID.CODE_SIGNING
