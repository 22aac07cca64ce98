"""edb.pki.verify_chain: generic path validation (publisher and device chains)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edb.pki import errors
from edb.pki.chain import verify_chain
from edb.pki.errors import CertificateError
from edb.pki.issue import issue_intermediate_ca, issue_leaf, make_name, make_root_ca
from edb.pki.oids import DEVICE_ATTESTATION_EKU, PUBLISHER_SIGNING_EKU

NOW = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)
ISSUED = NOW - dt.timedelta(days=10)


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, ec.EllipticCurvePrivateKey, x509.Certificate]:
    root_key = key()
    root = make_root_ca(root_key, make_name("Manufacturer Root"), now=ISSUED)
    inter_key = key()
    inter = issue_intermediate_ca(root_key, root, inter_key.public_key(), make_name("Manufacturer Issuing"),
                                  now=ISSUED)
    return root_key, root, inter_key, inter


def device_leaf(inter_key: ec.EllipticCurvePrivateKey, inter: x509.Certificate, **kw: object) -> x509.Certificate:
    ekus = kw.pop("ekus", [DEVICE_ATTESTATION_EKU])
    return issue_leaf(inter_key, inter, key().public_key(), make_name("dev-1", "Contoso", "trustbox"),
                      ekus=ekus, now=ISSUED, **kw)  # type: ignore[arg-type]


def test_device_chain_with_private_eku(ca) -> None:  # type: ignore[no-untyped-def]
    _, root, inter_key, inter = ca
    leaf = device_leaf(inter_key, inter)
    path = verify_chain(leaf, [inter], [root], now=NOW, required_eku=DEVICE_ATTESTATION_EKU)
    assert [c.subject for c in path] == [leaf.subject, inter.subject, root.subject]


def test_leaf_directly_under_root(ca) -> None:  # type: ignore[no-untyped-def]
    root_key, root, _, _ = ca
    leaf = issue_leaf(root_key, root, key().public_key(), make_name("signer"), ekus=[PUBLISHER_SIGNING_EKU],
                      now=ISSUED)
    assert len(verify_chain(leaf, [], [root], now=NOW, required_eku=PUBLISHER_SIGNING_EKU)) == 2


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong_eku", errors.WRONG_USAGE),
        ("expired_leaf", errors.EXPIRED),
        ("not_yet_valid_leaf", errors.NOT_YET_VALID),
        ("unknown_root", errors.UNTRUSTED),
        ("missing_intermediate", errors.UNTRUSTED),
        ("leaf_is_ca", errors.WRONG_USAGE),
        ("no_digital_signature", errors.WRONG_USAGE),
        ("non_ca_issuer", errors.UNTRUSTED),
        ("forged_link", errors.UNTRUSTED),
        ("no_roots", errors.UNTRUSTED),
    ],
)
def test_refusals(ca, case: str, code: str) -> None:  # type: ignore[no-untyped-def]
    root_key, root, inter_key, inter = ca
    roots, inters = [root], [inter]
    eku = DEVICE_ATTESTATION_EKU
    if case == "wrong_eku":
        leaf = device_leaf(inter_key, inter, ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])
    elif case == "expired_leaf":
        leaf = device_leaf(inter_key, inter, not_before=NOW - dt.timedelta(days=5), not_after=NOW - dt.timedelta(1))
    elif case == "not_yet_valid_leaf":
        leaf = device_leaf(inter_key, inter, not_before=NOW + dt.timedelta(days=1))
    elif case == "unknown_root":
        other_key = key()
        roots = [make_root_ca(other_key, make_name("Other Root"), now=ISSUED)]
        leaf = device_leaf(inter_key, inter)
    elif case == "missing_intermediate":
        leaf, inters = device_leaf(inter_key, inter), []
    elif case == "leaf_is_ca":
        leaf = _with_eku_ca(inter_key, inter)
    elif case == "no_digital_signature":
        leaf = _leaf_without_digital_signature(inter_key, inter)
    elif case == "non_ca_issuer":
        fake_key = key()
        fake_inter = issue_leaf(root_key, root, fake_key.public_key(), make_name("Manufacturer Issuing"),
                                ekus=[eku], now=ISSUED)
        leaf = issue_leaf(fake_key, fake_inter, key().public_key(), make_name("dev-1"), ekus=[eku], now=ISSUED)
        inters = [fake_inter]
    elif case == "forged_link":
        forger = key()
        leaf = issue_leaf(forger, inter, key().public_key(), make_name("dev-1"), ekus=[eku], now=ISSUED)
    else:
        leaf, roots = device_leaf(inter_key, inter), []
    with pytest.raises(CertificateError) as exc:
        verify_chain(leaf, inters, roots, now=NOW, required_eku=eku)
    assert exc.value.code == code, exc.value.message


def _with_eku_ca(issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate) -> x509.Certificate:
    k = key()
    return (
        x509.CertificateBuilder().subject_name(make_name("dev-ca")).issuer_name(issuer.subject)
        .public_key(k.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(ISSUED).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([DEVICE_ATTESTATION_EKU]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _leaf_without_digital_signature(
    issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate
) -> x509.Certificate:
    k = key()
    return (
        x509.CertificateBuilder().subject_name(make_name("dev-1")).issuer_name(issuer.subject)
        .public_key(k.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(ISSUED).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([DEVICE_ATTESTATION_EKU]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def test_issuer_restricting_ekus_must_allow_the_required_one(ca) -> None:  # type: ignore[no-untyped-def]
    root_key, root, _, _ = ca
    k = key()
    restricted = (
        x509.CertificateBuilder().subject_name(make_name("Restricted CA")).issuer_name(root.subject)
        .public_key(k.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(ISSUED).not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([PUBLISHER_SIGNING_EKU]), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    signer = issue_leaf(k, restricted, key().public_key(), make_name("s"), ekus=[PUBLISHER_SIGNING_EKU], now=ISSUED)
    assert verify_chain(signer, [restricted], [root], now=NOW, required_eku=PUBLISHER_SIGNING_EKU)
    device = issue_leaf(k, restricted, key().public_key(), make_name("d"), ekus=[DEVICE_ATTESTATION_EKU], now=ISSUED)
    with pytest.raises(CertificateError):
        verify_chain(device, [restricted], [root], now=NOW, required_eku=DEVICE_ATTESTATION_EKU)


def test_expired_root_is_untrusted() -> None:
    root_key = key()
    root = make_root_ca(root_key, make_name("Short Root"), now=ISSUED, days=5)  # expired 5 days before NOW
    leaf = issue_leaf(root_key, root, key().public_key(), make_name("d"), ekus=[DEVICE_ATTESTATION_EKU],
                      now=ISSUED, days=30)
    verify_chain(leaf, [], [root], now=ISSUED + dt.timedelta(days=1), required_eku=DEVICE_ATTESTATION_EKU)
    with pytest.raises(CertificateError) as exc:
        verify_chain(leaf, [], [root], now=NOW, required_eku=DEVICE_ATTESTATION_EKU)
    assert exc.value.code == errors.UNTRUSTED


def test_naive_now_refused(ca) -> None:  # type: ignore[no-untyped-def]
    _, root, inter_key, inter = ca
    with pytest.raises(ValueError):
        verify_chain(device_leaf(inter_key, inter), [inter], [root], now=NOW.replace(tzinfo=None),
                     required_eku=DEVICE_ATTESTATION_EKU)
