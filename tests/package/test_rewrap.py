"""KEK rotation: rewrap changes the wrapped DEK (inside the signed manifest), not the payload."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cpk_helpers import NOW, BuildFn, Publisher

from edb.cpk import PackageError, decrypt_payload, open_package, rewrap, verify_package
from edb.cpk import errors as E
from edb.errors import KeyProviderError
from edb.keys.local import LocalKek


@pytest.fixture(scope="module")
def new_kek() -> LocalKek:
    return LocalKek.generate(2048)


def test_rewrap_keeps_payload_and_resigns(make_package: BuildFn, publisher: Publisher, new_kek: LocalKek,
                                          tmp_path: Path) -> None:
    path, before, data = make_package()
    out = tmp_path / "rotated.cpk"
    after = rewrap(path, out, old_kek=publisher.kek, new_kek=new_kek, signer=publisher.signer,
                   trust_roots=publisher.roots, now=NOW)
    assert after.manifest.kid == new_kek.kid != before.manifest.kid
    assert after.manifest.ciphertext_sha256 == before.manifest.ciphertext_sha256
    assert after.signed.manifest_sha256 != before.signed.manifest_sha256
    with open_package(path) as a, open_package(out) as b:
        assert a.stream_sha256(0) == b.stream_sha256(0)  # payload bytes untouched
        verified = verify_package(b, trust_roots=publisher.roots, now=NOW)
        with pytest.raises(KeyProviderError):
            publisher.kek.unwrap(verified.manifest.wrapped_dek)  # the old KEK no longer applies
        buffer = bytearray(len(data))
        decrypt_payload(verified, new_kek.unwrap(verified.manifest.wrapped_dek), buffer)
        assert bytes(buffer) == data


def test_rewrap_in_place(make_package: BuildFn, publisher: Publisher, new_kek: LocalKek) -> None:
    path, _, _ = make_package()
    rewrap(path, path, old_kek=publisher.kek, new_kek=new_kek, signer=publisher.signer, trust_roots=publisher.roots,
           now=NOW)
    with open_package(path) as reader:
        assert verify_package(reader, trust_roots=publisher.roots, now=NOW).manifest.kid == new_kek.kid
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_rewrap_refuses_tampered_or_untrusted_source(make_package: BuildFn, publisher: Publisher,
                                                     other_publisher: Publisher, new_kek: LocalKek,
                                                     tmp_path: Path) -> None:
    path, _, _ = make_package()
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # inside the payload
    path.write_bytes(bytes(data))
    out = tmp_path / "never.cpk"
    with pytest.raises(PackageError) as exc:
        rewrap(path, out, old_kek=publisher.kek, new_kek=new_kek, signer=publisher.signer,
               trust_roots=publisher.roots, now=NOW)
    assert exc.value.code == E.DIGEST_MISMATCH and not out.exists()
    foreign, _, _ = make_package(signer=other_publisher.signer)
    with pytest.raises(PackageError) as exc:
        rewrap(foreign, out, old_kek=publisher.kek, new_kek=new_kek, signer=publisher.signer,
               trust_roots=publisher.roots, now=NOW)
    assert exc.value.code == E.UNTRUSTED_SIGNER and not out.exists()


def test_rewrap_with_wrong_old_kek(make_package: BuildFn, publisher: Publisher, new_kek: LocalKek,
                                   tmp_path: Path) -> None:
    path, _, _ = make_package()
    with pytest.raises(KeyProviderError) as exc:
        rewrap(path, tmp_path / "x.cpk", old_kek=new_kek, new_kek=new_kek, signer=publisher.signer,
               trust_roots=publisher.roots, now=NOW)
    assert exc.value.code == "KEY_WRONG_KID"


def test_rewrap_of_expired_package_is_refused(make_package: BuildFn, publisher: Publisher, new_kek: LocalKek,
                                              tmp_path: Path) -> None:
    path, _, _ = make_package(created=NOW - dt.timedelta(days=3), expires=NOW - dt.timedelta(days=1))
    with pytest.raises(PackageError) as exc:
        rewrap(path, tmp_path / "x.cpk", old_kek=publisher.kek, new_kek=new_kek, signer=publisher.signer,
               trust_roots=publisher.roots, now=NOW)
    assert exc.value.code == E.EXPIRED
