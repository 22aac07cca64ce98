"""KeyVaultSigner through the real azure-keyvault-keys SDK and the stand-in: every DER signature it
hands to a package is low-s (Key Vault, like the stand-in, returns either s; issue 13 item 8)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from edb.keys.azure_keyvault import KeyVaultSigner
from edb.keys.low_s import P256_HALF_N, is_canonical_low_s
from edb.pki.issue import issue_leaf, make_name, make_root_ca
from edb.pki.oids import PUBLISHER_SIGNING_EKU


def test_key_vault_signer_returns_low_s(key_client: KeyClient, admin_credential: ClientSecretCredential,
                                        sdk_kwargs: dict[str, Any]) -> None:
    signing = key_client.create_ec_key(f"lows-{uuid.uuid4().hex[:8]}", curve="P-256",
                                       key_operations=["sign", "verify"])
    public = ec.EllipticCurvePublicNumbers(int.from_bytes(signing.key.x, "big"), int.from_bytes(signing.key.y, "big"),
                                           ec.SECP256R1()).public_key()
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_root_ca(root_key, make_name("Low-s Root"))
    leaf = issue_leaf(root_key, root, public, make_name("Low-s Publisher"), ekus=[PUBLISHER_SIGNING_EKU])
    signer = KeyVaultSigner(signing.id, [leaf], admin_credential, **sdk_kwargs)
    for i in range(24):  # all low by chance without normalisation: 2^-24
        message = b"manifest %d" % i
        der = signer.sign_digest(hashlib.sha256(message).digest())
        assert is_canonical_low_s(der) and decode_dss_signature(der)[1] <= P256_HALF_N
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))
