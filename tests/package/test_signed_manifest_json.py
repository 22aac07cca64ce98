"""SignedManifest.from_json (how a signed manifest crosses from the TEE to the installer and the
key release service): exact members, standard base64, every bound. Found unpinned by `make mutate`."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from edb.cpk import Limits, PackageError
from edb.cpk import errors as E
from edb.cpk.limits import DEFAULT_LIMITS
from edb.cpk.signed import SignedManifest

SIGNED = SignedManifest(manifest_bytes=b'{"m":1}', signature=b"\x30" * 70, chain=(b"leaf-der", b"ca-der"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def code(data: Any, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(PackageError) as exc:
        SignedManifest.from_json(data, limits)
    return exc.value.code


def test_round_trip() -> None:
    assert SignedManifest.from_json(SIGNED.to_json()) == SIGNED
    assert SIGNED.to_json() == {"json": b64(b'{"m":1}'), "signature": b64(b"\x30" * 70),
                                "chain": [b64(b"leaf-der"), b64(b"ca-der")]}


@pytest.mark.parametrize("data", [
    None, [], "x", {}, {"json": "e30=", "signature": "MA=="}, {**SIGNED.to_json(), "extra": 1},
    {**SIGNED.to_json(), "chain": []}, {**SIGNED.to_json(), "chain": "e30="}, {**SIGNED.to_json(), "json": 5},
    {**SIGNED.to_json(), "json": ""}, {**SIGNED.to_json(), "json": "e30"}, {**SIGNED.to_json(), "json": "e3 0="},
    {**SIGNED.to_json(), "signature": "!!!!"}, {**SIGNED.to_json(), "chain": ["e30=", None]},
    {**SIGNED.to_json(), "json": "e30=\n"},
])
def test_malformed(data: Any) -> None:
    assert code(data) == E.MANIFEST_INVALID


def test_bounds() -> None:
    data = SIGNED.to_json()
    assert SignedManifest.from_json(data, Limits(max_manifest_bytes=7, max_signature_bytes=70, max_chain_certs=2,
                                                 max_chain_bytes=22)) == SIGNED  # every bound exactly met
    assert code(data, Limits(max_manifest_bytes=6)) == E.TOO_LARGE
    assert code(data, Limits(max_signature_bytes=69)) == E.TOO_LARGE
    assert code(data, Limits(max_chain_certs=1)) == E.TOO_LARGE
    assert code(data, Limits(max_chain_bytes=21)) == E.TOO_LARGE  # 2 x 4-byte length + 8 + 6
    assert code({**data, "json": "A" * 4000}, Limits(max_manifest_bytes=100)) == E.TOO_LARGE  # before decoding


def test_decode_chain_bounds() -> None:
    """The chain stream: u32-le length + DER, repeated; found unpinned by make mutate."""
    from edb.cpk.signed import decode_chain, encode_chain

    two = encode_chain([b"a" * 10, b"b"])
    assert decode_chain(two, Limits(max_chain_bytes=len(two))) == (b"a" * 10, b"b")  # exactly at the bound
    assert code_chain(two, Limits(max_chain_bytes=len(two) - 1)) == E.TOO_LARGE
    for cut in (1, 2, 3):  # a length prefix cut short
        assert code_chain(two + b"\x05\x00\x00"[:cut]) == E.MANIFEST_INVALID
    assert code_chain(encode_chain([b""])) == E.MANIFEST_INVALID  # an empty certificate
    assert code_chain(two[:-1]) == E.MANIFEST_INVALID  # an entry longer than what is left


def code_chain(data: bytes, limits: Limits = DEFAULT_LIMITS) -> str:
    from edb.cpk.signed import decode_chain

    with pytest.raises(PackageError) as exc:
        decode_chain(data, limits)
    return exc.value.code
