"""Package checks that a hand-made mutation run found unpinned (issue 13 item 11): each test fails if
its check is removed or weakened (expiry boundary, signer-chain digest, publisher key type, a leaf
with only anyExtendedKeyUsage)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cpk_helpers import NOW, BuildFn, Publisher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_hostile import refused, replace_stream, write

from edb.cpk import PackageError, open_package
from edb.cpk import errors as E
from edb.cpk.policy import check_policy
from edb.cpk.signed import SignedManifest, encode_chain, verify_signed_manifest
from edb.keys.local import LocalSigner
from edb.pki.certs import to_der
from edb.pki.issue import issue_leaf, make_name
from edb.pki.oids import PUBLISHER_SIGNING_EKU


def root_key(publisher: Publisher) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(publisher.pki.root_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def signed_of(path: Path) -> SignedManifest:
    with open_package(path) as reader:
        return reader.signed_manifest()


def code_of(signed: SignedManifest, publisher: Publisher) -> str:
    with pytest.raises(PackageError) as exc:
        verify_signed_manifest(signed, publisher.roots, NOW)
    return exc.value.code


def test_expired_exactly_at_expires(make_package: BuildFn, publisher: Publisher) -> None:
    expires = NOW + dt.timedelta(hours=1)
    path, _, _ = make_package(expires=expires)
    with open_package(path) as reader:
        manifest = verify_signed_manifest(reader.signed_manifest(), publisher.roots, NOW)
    assert manifest.expires == expires
    check_policy(manifest, now=expires - dt.timedelta(microseconds=1))
    for now in (expires, expires + dt.timedelta(microseconds=1)):
        with pytest.raises(PackageError) as exc:
            check_policy(manifest, now=now)
        assert exc.value.code == E.EXPIRED
    assert refused(path, publisher, now=expires) == E.EXPIRED  # the device's whole path


def test_chain_stream_differing_from_the_signed_digest(make_package: BuildFn, publisher: Publisher,
                                                       tmp_path: Path) -> None:
    """Leaf plus the pinned root validates as well as the leaf alone; it is still not what was signed."""
    path, _, _ = make_package()
    signed = signed_of(path)
    longer = dataclasses.replace(signed, chain=(*signed.chain, to_der(publisher.roots[0])))
    assert code_of(longer, publisher) == E.DIGEST_MISMATCH
    data = replace_stream(path.read_bytes(), 2, encode_chain(longer.chain))
    assert refused(write(tmp_path, data), publisher) == E.DIGEST_MISMATCH


def _resigned(signed: SignedManifest, leaf: x509.Certificate, sign: object) -> SignedManifest:
    """The manifest re-pointed at ``leaf``'s chain and signed by ``sign(manifest_bytes)``."""
    chain = (to_der(leaf),)
    manifest = signed.manifest_bytes.replace(hashlib.sha256(encode_chain(signed.chain)).hexdigest().encode(),
                                             hashlib.sha256(encode_chain(chain)).hexdigest().encode())
    assert manifest != signed.manifest_bytes
    return SignedManifest(manifest_bytes=manifest, signature=sign(manifest), chain=chain)  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["p384", "rsa"])
def test_publisher_key_other_than_p256_under_the_pinned_root(make_package: BuildFn, publisher: Publisher,
                                                             kind: str) -> None:
    signed = signed_of(make_package()[0])
    if kind == "p384":
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = ec.generate_private_key(ec.SECP384R1())
        sign = lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))  # noqa: E731
    else:
        key = rsa.generate_private_key(65537, 2048)
        sign = lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # noqa: E731
    leaf = issue_leaf(root_key(publisher), publisher.roots[0], key.public_key(), make_name(f"{kind} publisher"),
                      ekus=[PUBLISHER_SIGNING_EKU], now=NOW - dt.timedelta(days=1))
    assert code_of(_resigned(signed, leaf, sign), publisher) == E.UNTRUSTED_SIGNER


def test_publisher_leaf_with_only_any_extended_key_usage(make_package: BuildFn, publisher: Publisher) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_leaf(root_key(publisher), publisher.roots[0], key.public_key(), make_name("any-purpose"),
                      ekus=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], now=NOW - dt.timedelta(days=1))
    path, _, _ = make_package(signer=LocalSigner(key, [leaf]))
    assert refused(path, publisher) == E.UNTRUSTED_SIGNER
