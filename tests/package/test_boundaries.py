"""Boundaries of the signature and certificate checks that `make mutate` found unpinned: the exact
low-s limits, the validity instants of a certificate, a CA certificate used as a leaf, and what
authenticate_manifest returns."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cpk_helpers import NOW, BuildFn, Publisher
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edb.cpk import open_package
from edb.cpk.signed import authenticate_manifest
from edb.keys.low_s import P256_HALF_N, P256_N, is_canonical_low_s, normalize_low_s
from edb.pki import errors
from edb.pki.chain import verify_chain
from edb.pki.errors import CertificateError
from edb.pki.issue import issue_intermediate_ca, issue_leaf, make_name, make_root_ca
from edb.pki.oids import PUBLISHER_SIGNING_EKU


def test_low_s_limits_exactly() -> None:
    assert P256_N % 2 == 1 and P256_HALF_N == (P256_N - 1) // 2
    ok = [(1, 1), (P256_N - 1, P256_HALF_N), (1, P256_HALF_N)]
    bad = [(0, 1), (1, 0), (P256_N, 1), (1, P256_HALF_N + 1), (1, P256_N - 1)]
    for r, s in ok:
        assert is_canonical_low_s(encode_dss_signature(r, s)), (r, s)
    for r, s in bad:
        assert not is_canonical_low_s(encode_dss_signature(r, s)), (r, s)
    assert normalize_low_s(encode_dss_signature(5, P256_HALF_N)) == encode_dss_signature(5, P256_HALF_N)
    assert normalize_low_s(encode_dss_signature(5, P256_HALF_N + 1)) == encode_dss_signature(5, P256_HALF_N)


def _pki() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    return root_key, make_root_ca(root_key, make_name("Boundary Root"), now=NOW - dt.timedelta(days=30))


def test_certificate_validity_instants_are_inclusive() -> None:
    root_key, root = _pki()
    start, end = NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=1)
    leaf = issue_leaf(root_key, root, ec.generate_private_key(ec.SECP256R1()).public_key(), make_name("b"),
                      ekus=[PUBLISHER_SIGNING_EKU], not_before=start, not_after=end)
    for now in (start, end):
        assert verify_chain(leaf, [], [root], now=now, required_eku=PUBLISHER_SIGNING_EKU)[0] == leaf
    for now, code in ((start - dt.timedelta(seconds=1), errors.NOT_YET_VALID),
                      (end + dt.timedelta(seconds=1), errors.EXPIRED)):
        with pytest.raises(CertificateError) as exc:
            verify_chain(leaf, [], [root], now=now, required_eku=PUBLISHER_SIGNING_EKU)
        assert exc.value.code == code


def test_ca_certificate_used_as_a_leaf_is_wrong_usage() -> None:
    root_key, root = _pki()
    ca = issue_intermediate_ca(root_key, root, ec.generate_private_key(ec.SECP256R1()).public_key(),
                               make_name("not a leaf"), now=NOW - dt.timedelta(days=1))
    with pytest.raises(CertificateError) as exc:
        verify_chain(ca, [], [root], now=NOW, required_eku=PUBLISHER_SIGNING_EKU)
    assert exc.value.code == errors.WRONG_USAGE


def test_authenticate_manifest_returns_the_signer(make_package: BuildFn, publisher: Publisher,
                                                  tmp_path: Path) -> None:
    path, result, _ = make_package()
    with open_package(path) as reader:
        manifest, signer = authenticate_manifest(reader.signed_manifest(), publisher.roots, NOW)
    assert manifest == result.manifest
    assert signer.leaf == publisher.signer.certificate_chain()[0]
    assert [c.subject for c in signer.path] == [signer.leaf.subject, publisher.roots[0].subject]
