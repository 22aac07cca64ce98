"""Every hostile input the issue names, refused with its code, and nothing released on failure."""

from __future__ import annotations

import datetime as dt
import struct
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
from cpk_helpers import CHUNK, NOW, BuildFn, Publisher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.cpk import Limits, PackageError, decrypt_payload, open_package, verify_package
from edb.cpk import errors as E
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE
from edb.cpk.stream_aead import TAG_BYTES, chunk_nonce
from edb.cpk.verify import VerifiedPackage
from edb.keys.local import LocalSigner
from edb.pki.issue import issue_leaf, make_name
from edb.pki.oids import PUBLISHER_SIGNING_EKU

PAYLOAD = 5 * CHUNK + 17  # 6 chunks
ORIGIN = HEADER_SIZE + 4 * ENTRY_SIZE
CT_CHUNK = CHUNK + TAG_BYTES


def run_all(path: Path, publisher: Publisher, *, digest: bool = True, now: dt.datetime = NOW,
            dek: bytes | None = None, **policy: object) -> bytes:
    """The device's whole path: open, verify, unwrap, decrypt into a buffer. Returns the plaintext."""
    with open_package(path) as reader:
        verified = verify_package(reader, trust_roots=publisher.roots, now=now, check_payload_digest=digest,
                                  **policy)  # type: ignore[arg-type]
        key = dek if dek is not None else publisher.kek.unwrap(verified.manifest.wrapped_dek)
        out = bytearray(verified.manifest.plaintext_size)
        try:
            decrypt_payload(verified, key, out)
        except PackageError:
            assert not any(out), "plaintext left in the sink after a failure"
            raise
        return bytes(out)


def refused(path: Path, publisher: Publisher, **kw: object) -> str:
    with pytest.raises(PackageError) as exc:
        run_all(path, publisher, **kw)  # type: ignore[arg-type]
    return exc.value.code


def streams(data: bytes) -> list[tuple[int, int]]:
    """(absolute start, size) of the 4 streams of a v2 package."""
    out = []
    for i in range(4):
        offset, size = struct.unpack_from("<QQ", data, HEADER_SIZE + i * ENTRY_SIZE)
        out.append((ORIGIN + offset, size))
    return out


def write(tmp_path: Path, data: bytes | bytearray, name: str = "hostile.cpk") -> Path:
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def set_entry(data: bytearray, index: int, offset: int | None = None, size: int | None = None) -> None:
    old_offset, old_size = struct.unpack_from("<QQ", data, HEADER_SIZE + index * ENTRY_SIZE)
    struct.pack_into("<QQ", data, HEADER_SIZE + index * ENTRY_SIZE,
                     old_offset if offset is None else offset, old_size if size is None else size)


def replace_stream(data: bytes, index: int, new: bytes) -> bytearray:
    """Rebuild the file with stream ``index`` replaced (table adjusted, as an attacker would)."""
    spans = streams(data)
    parts = [data[s : s + n] for s, n in spans]
    parts[index] = new
    out = bytearray(data[:ORIGIN])
    position = 0
    for i, part in enumerate(parts):
        set_entry(out, i, position, len(part))
        position += len(part)
    return out + b"".join(parts)


@pytest.fixture
def package(make_package: BuildFn) -> tuple[Path, bytes]:
    path, _, plaintext = make_package(bytes(range(256)) * (PAYLOAD // 256) + bytes(PAYLOAD % 256))
    return path, plaintext


def test_baseline_is_accepted(package: tuple[Path, bytes], publisher: Publisher) -> None:
    path, plaintext = package
    assert run_all(path, publisher, device_id="dev-1", security_floor=3) == plaintext


# -- flipped bytes ------------------------------------------------------------------------------

HEADER_CODES = {
    **dict.fromkeys(range(4), frozenset({E.BAD_MAGIC})),
    **dict.fromkeys(range(4, 6), frozenset({E.UNSUPPORTED_VERSION})),
    **dict.fromkeys(range(6, 8), frozenset({E.MANIFEST_INVALID})),
    **dict.fromkeys(range(8, 10), frozenset({E.MANIFEST_INVALID, E.TOO_LARGE, E.TRUNCATED, E.STREAM_OUT_OF_BOUNDS})),
    **dict.fromkeys(range(10, 12), frozenset({E.MANIFEST_INVALID})),
    **dict.fromkeys(range(12, 16), frozenset({E.UNSUPPORTED_VERSION})),
}
TABLE_CODES = {E.STREAM_OUT_OF_BOUNDS, E.TRUNCATED, E.TOO_LARGE, E.MANIFEST_INVALID, E.SIGNATURE_INVALID,
               E.UNTRUSTED_SIGNER, E.DIGEST_MISMATCH}


@pytest.mark.parametrize("position", range(ORIGIN))
def test_flipped_byte_in_header_and_table(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                                          position: int) -> None:
    data = bytearray(package[0].read_bytes())
    data[position] ^= 0x01 if position < HEADER_SIZE else 0x80
    code = refused(write(tmp_path, data), publisher)
    assert code in HEADER_CODES.get(position, TABLE_CODES)


STREAM_CODES = {
    0: {E.DIGEST_MISMATCH},
    1: {E.SIGNATURE_INVALID},
    2: {E.UNTRUSTED_SIGNER, E.MANIFEST_INVALID, E.TOO_LARGE},
    3: {E.SIGNATURE_INVALID, E.MANIFEST_INVALID},
}


@pytest.mark.parametrize("index", range(4))
def test_flipped_byte_in_every_stream(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                                      index: int) -> None:
    original = package[0].read_bytes()
    start, size = streams(original)[index]
    positions = sorted({0, 1, size // 3, size // 2, size - 2, size - 1, *range(0, size, max(1, size // 12))})
    for position in positions:
        data = bytearray(original)
        data[start + position] ^= 0x04
        code = refused(write(tmp_path, data), publisher)
        assert code in STREAM_CODES[index], (position, code)
        if index == 0:  # the decrypt path alone catches it too, by the chunk's tag
            assert refused(write(tmp_path, data), publisher, digest=False) == E.TAG_MISMATCH


# -- truncation, bounds, sizes ------------------------------------------------------------------

def test_truncation_at_many_points(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path) -> None:
    original = package[0].read_bytes()
    cuts = {0, 1, 3, 4, 15, 16, 40, ORIGIN - 1, ORIGIN, ORIGIN + 1, len(original) - 1}
    for start, size in streams(original):
        cuts |= {start + 1, start + size // 2, start + size - 1, start + size}
    cuts.discard(len(original))
    for cut in sorted(cuts):
        assert refused(write(tmp_path, original[:cut]), publisher) == E.TRUNCATED, cut


@pytest.mark.parametrize("index", range(4))
def test_stream_pointing_outside_the_file(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                                          index: int) -> None:
    data = bytearray(package[0].read_bytes())
    set_entry(data, index, offset=len(data) + 4096)
    assert refused(write(tmp_path, data), publisher) == E.STREAM_OUT_OF_BOUNDS
    set_entry(data, index, offset=2**64 - 1)
    assert refused(write(tmp_path, data), publisher) == E.STREAM_OUT_OF_BOUNDS


@pytest.mark.parametrize(("index", "onto"), [(1, 0), (2, 1), (3, 0), (0, 2), (3, 2)])
def test_overlapping_streams(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                             index: int, onto: int) -> None:
    data = bytearray(package[0].read_bytes())
    onto_offset = struct.unpack_from("<Q", data, HEADER_SIZE + onto * ENTRY_SIZE)[0]
    set_entry(data, index, offset=onto_offset + 1)
    assert refused(write(tmp_path, data), publisher) == E.STREAM_OUT_OF_BOUNDS


@pytest.mark.parametrize("index", range(4))
def test_huge_declared_size_refused_before_allocation(package: tuple[Path, bytes], tmp_path: Path,
                                                      index: int) -> None:
    data = bytearray(package[0].read_bytes())
    set_entry(data, index, size=2**62)
    path = write(tmp_path, data)
    tracemalloc.start()
    try:
        with pytest.raises(PackageError) as exc:
            open_package(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.code == E.TOO_LARGE
    assert peak < 256 * 1024


def test_configured_limits(package: tuple[Path, bytes]) -> None:
    path = package[0]
    for limits in (Limits(max_payload_bytes=PAYLOAD - 1), Limits(max_manifest_bytes=256),
                   Limits(max_chain_bytes=100), Limits(max_signature_bytes=8), Limits(max_chunk_size=CHUNK - 1)):
        with pytest.raises(PackageError) as exc:
            open_package(path, limits=limits)
        assert exc.value.code == E.TOO_LARGE, limits


def test_too_many_streams(tmp_path: Path) -> None:
    header = struct.pack("<IHHHHHH", 0x0ECCF00D, 1, 0, 65535, 0, 1, 2)
    with pytest.raises(PackageError) as exc:
        open_package(write(tmp_path, header))
    assert exc.value.code == E.TOO_LARGE


# -- chunk games --------------------------------------------------------------------------------

def chunks_of(data: bytes) -> tuple[int, list[bytes]]:
    start, size = streams(data)[0]
    payload = data[start : start + size]
    return start, [payload[i : i + CT_CHUNK] for i in range(0, size, CT_CHUNK)]


@pytest.mark.parametrize("game", ["swap", "duplicate", "drop_and_duplicate", "reverse", "last_first"])
def test_chunks_reordered_duplicated_dropped(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                                             game: str) -> None:
    original = package[0].read_bytes()
    start, chunks = chunks_of(original)
    if game == "swap":
        chunks[1], chunks[2] = chunks[2], chunks[1]
    elif game == "duplicate":
        chunks[3] = chunks[2]
    elif game == "drop_and_duplicate":
        chunks = [chunks[0], chunks[2], chunks[2], *chunks[3:]]
    elif game == "reverse":
        chunks = chunks[:-1][::-1] + chunks[-1:]
    else:
        chunks = [chunks[-1] + bytes(CHUNK - len(chunks[-1]) + TAG_BYTES), *chunks[1:-1], chunks[0][: len(chunks[-1])]]
    data = original[:start] + b"".join(chunks) + original[start + len(b"".join(chunks_of(original)[1])) :]
    assert len(data) == len(original)
    assert refused(write(tmp_path, data), publisher) == E.DIGEST_MISMATCH
    assert refused(write(tmp_path, data), publisher, digest=False) == E.TAG_MISMATCH


def test_chunk_dropped_from_the_end(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path) -> None:
    original = package[0].read_bytes()
    _, chunks = chunks_of(original)
    shorter = replace_stream(original, 0, b"".join(chunks[:-1]))
    assert refused(write(tmp_path, shorter), publisher) == E.MANIFEST_INVALID  # table disagrees with signed size


def test_truncation_at_chunk_boundary_fails_by_the_last_flag(package: tuple[Path, bytes], publisher: Publisher,
                                                           tmp_path: Path) -> None:
    """Even if size checks were bypassed (a forged manifest claiming fewer chunks), the last
    remaining chunk was sealed as 'not last' and fails: the STREAM construction alone stops it."""
    path, _ = package
    with open_package(path) as reader:
        verified = verify_package(reader, trust_roots=publisher.roots, now=NOW)
        dek = publisher.kek.unwrap(verified.manifest.wrapped_dek)
        m = verified.manifest
        forged = replace(m, plaintext_size=4 * CHUNK, ciphertext_size=4 * CT_CHUNK)
        shortened = replace(reader.frame.streams[0], size=4 * CT_CHUNK)
        frame = replace(reader.frame, streams=(shortened, *reader.frame.streams[1:]))
        reader.frame = frame
        with pytest.raises(PackageError) as exc:
            decrypt_payload(VerifiedPackage(reader, forged, verified.signed, verified.signer, False), dek,
                            bytearray(4 * CHUNK))
        assert exc.value.code == E.TAG_MISMATCH


def test_chunk_spliced_from_another_package(package: tuple[Path, bytes], make_package: BuildFn,
                                            publisher: Publisher, tmp_path: Path) -> None:
    original = package[0].read_bytes()
    other_path, _, _ = make_package(bytes(PAYLOAD))
    start, chunks = chunks_of(original)
    _, foreign = chunks_of(other_path.read_bytes())
    chunks[2] = foreign[2]
    data = original[:start] + b"".join(chunks) + original[start + len(b"".join(chunks)) :]
    assert refused(write(tmp_path, data), publisher) == E.DIGEST_MISMATCH
    assert refused(write(tmp_path, data), publisher, digest=False) == E.TAG_MISMATCH


def test_dek_holder_cannot_substitute_plaintext(package: tuple[Path, bytes], publisher: Publisher,
                                                tmp_path: Path) -> None:
    """An insider with the DEK re-seals chunk 1 with other plaintext: tags pass, the signed
    plaintext digest does not (and the signed ciphertext digest does not either)."""
    path, _ = package
    original = path.read_bytes()
    with open_package(path) as reader:
        m = verify_package(reader, trust_roots=publisher.roots, now=NOW).manifest
    dek = publisher.kek.unwrap(m.wrapped_dek)
    forged_chunk = AESGCM(dek).encrypt(chunk_nonce(m.nonce_prefix, 1, False), b"evil" * (CHUNK // 4), m.aad())
    start, chunks = chunks_of(original)
    chunks[1] = forged_chunk
    data = original[:start] + b"".join(chunks) + original[start + len(b"".join(chunks)) :]
    assert refused(write(tmp_path, data), publisher) == E.DIGEST_MISMATCH
    assert refused(write(tmp_path, data), publisher, digest=False) == E.DIGEST_MISMATCH


# -- manifest, streams, signer ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"security-version":3', b'"security-version":9'),
        (b'"version":"1.0.0"', b'"version":"1.0.1"'),
        (b'"cp-id":"digits"', b'"cp-id":"digitz"'),
        (b'"device-ids":["dev-1"]', b'"device-ids":["dev-2"]'),
        (b'"expires":"2030', b'"expires":"2039'),
        (b'"chunk-size":256', b'"chunk-size":512'),
        (b'"media-type":"application/vnd.onnx"', b'"media-type":"application/x-evil"'),
    ],
)
def test_manifest_field_edited(package: tuple[Path, bytes], publisher: Publisher, tmp_path: Path,
                               old: bytes, new: bytes) -> None:
    original = package[0].read_bytes()
    start, size = streams(original)[3]
    manifest = original[start : start + size]
    assert old in manifest
    data = replace_stream(original, 3, manifest.replace(old, new))
    assert refused(write(tmp_path, data), publisher) in {E.SIGNATURE_INVALID, E.MANIFEST_INVALID}


def test_manifest_resigned_by_attacker(package: tuple[Path, bytes], publisher: Publisher,
                                       other_publisher: Publisher, tmp_path: Path) -> None:
    """An attacker with their own PKI edits the manifest and signs it with their own key and chain."""
    import hashlib

    from edb.cpk.signed import encode_chain
    from edb.pki.certs import to_der

    original = package[0].read_bytes()
    start, size = streams(original)[3]
    chain = encode_chain([to_der(c) for c in other_publisher.signer.certificate_chain()])
    manifest = original[start : start + size].replace(b'"security-version":3', b'"security-version":99')
    old_chain_digest = hashlib.sha256(original[streams(original)[2][0] : sum(streams(original)[2])]).hexdigest()
    manifest = manifest.replace(old_chain_digest.encode(), hashlib.sha256(chain).hexdigest().encode())
    signature = other_publisher.signer.sign_digest(hashlib.sha256(manifest).digest())
    data = replace_stream(replace_stream(replace_stream(original, 3, manifest), 2, chain), 1, signature)
    assert refused(write(tmp_path, data), publisher) == E.UNTRUSTED_SIGNER
    with open_package(write(tmp_path, data)) as reader:  # self-consistent, just not signed by a pinned root
        assert verify_package(reader, trust_roots=other_publisher.roots, now=NOW).security_version == 99


@pytest.mark.parametrize("index", range(4))
def test_stream_swapped_with_another_packages(package: tuple[Path, bytes], make_package: BuildFn,
                                              publisher: Publisher, other_publisher: Publisher, tmp_path: Path,
                                              index: int) -> None:
    original = package[0].read_bytes()
    other = make_package(bytes(PAYLOAD), signer=other_publisher.signer, kek=other_publisher.kek)[0].read_bytes()
    s, n = streams(other)[index]
    data = replace_stream(original, index, other[s : s + n])
    expected = {0: {E.DIGEST_MISMATCH}, 1: {E.SIGNATURE_INVALID}, 2: {E.UNTRUSTED_SIGNER},
                3: {E.SIGNATURE_INVALID}}[index]
    assert refused(write(tmp_path, data), publisher) in expected


def test_manifest_and_signature_swapped_in_from_same_publisher(package: tuple[Path, bytes], make_package: BuildFn,
                                                               publisher: Publisher, tmp_path: Path) -> None:
    """A valid (manifest, signature) pair of package B over package A's payload (mix-and-match)."""
    original = package[0].read_bytes()
    other = make_package(bytes(PAYLOAD), version="2.0.0", security_version=4)[0].read_bytes()
    data = original
    for index in (1, 3):
        s, n = streams(other)[index]
        data = bytes(replace_stream(data, index, other[s : s + n]))
    assert refused(write(tmp_path, data), publisher) == E.DIGEST_MISMATCH
    assert refused(write(tmp_path, data), publisher, digest=False) == E.TAG_MISMATCH


def test_untrusted_signer(make_package: BuildFn, publisher: Publisher, other_publisher: Publisher) -> None:
    path, _, _ = make_package(signer=other_publisher.signer)
    assert refused(path, publisher) == E.UNTRUSTED_SIGNER


def test_expired_signer_certificate(make_package: BuildFn, publisher: Publisher) -> None:
    root_key = serialization.load_pem_private_key(publisher.pki.root_key.read_bytes(), password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(root_key, publisher.roots[0], key.public_key(), make_name("short-lived signer"),
                      ekus=[PUBLISHER_SIGNING_EKU], not_before=NOW - dt.timedelta(days=20),
                      not_after=NOW - dt.timedelta(days=1))
    path, _, _ = make_package(signer=LocalSigner(key, [cert]))
    with pytest.raises(PackageError) as exc:
        run_all(path, publisher)
    assert exc.value.code == E.UNTRUSTED_SIGNER and exc.value.details["pki_code"] == "PKI_EXPIRED"
    assert run_all(path, publisher, now=NOW - dt.timedelta(days=2))  # fine while it was valid


def test_signer_without_code_signing_eku(make_package: BuildFn, publisher: Publisher) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    root_key = serialization.load_pem_private_key(publisher.pki.root_key.read_bytes(), password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(root_key, publisher.roots[0], key.public_key(), make_name("tls server"),
                      ekus=[ExtendedKeyUsageOID.SERVER_AUTH], now=NOW - dt.timedelta(days=1))
    path, _, _ = make_package(signer=LocalSigner(key, [cert]))
    assert refused(path, publisher) == E.UNTRUSTED_SIGNER


# -- policy -------------------------------------------------------------------------------------

def test_expired_package(make_package: BuildFn, publisher: Publisher) -> None:
    path, _, _ = make_package(created=NOW - dt.timedelta(days=10), expires=NOW - dt.timedelta(seconds=1))
    assert refused(path, publisher) == E.EXPIRED
    assert run_all(path, publisher, now=NOW - dt.timedelta(days=1))


@pytest.mark.parametrize(("device_id", "device_class", "ok"), [
    ("dev-1", None, True), (None, "trustbox-edge-201", True), ("dev-2", "trustbox-edge-201", True),
    ("dev-2", None, False), (None, "other-class", False), ("dev-2", "other-class", False),
])
def test_target(package: tuple[Path, bytes], publisher: Publisher, device_id: str | None,
                device_class: str | None, ok: bool) -> None:
    if ok:
        assert run_all(package[0], publisher, device_id=device_id, device_class=device_class)
    else:
        assert refused(package[0], publisher, device_id=device_id, device_class=device_class) == E.WRONG_TARGET


def test_security_floor(package: tuple[Path, bytes], publisher: Publisher) -> None:
    assert run_all(package[0], publisher, security_floor=3)
    assert refused(package[0], publisher, security_floor=4) == E.ROLLBACK


def test_wrong_dek(package: tuple[Path, bytes], publisher: Publisher) -> None:
    assert refused(package[0], publisher, dek=bytes(32)) == E.TAG_MISMATCH
    assert refused(package[0], publisher, dek=bytes(16)) == E.WRONG_KEY


def test_v1_reader_refuses_v2_calls_and_unknown_versions(package: tuple[Path, bytes], tmp_path: Path) -> None:
    data = bytearray(package[0].read_bytes())
    struct.pack_into("<H", data, 14, 3)
    with pytest.raises(PackageError) as exc:
        open_package(write(tmp_path, data))
    assert exc.value.code == E.UNSUPPORTED_VERSION
    struct.pack_into("<H", data, 14, 1)  # claims v1 but holds a v2 manifest
    with pytest.raises(PackageError) as exc:
        open_package(write(tmp_path, data))
    assert exc.value.code == E.MANIFEST_INVALID
    struct.pack_into("<H", data, 14, 2)
    struct.pack_into("<H", data, 4, 0)
    with pytest.raises(PackageError) as exc:
        open_package(write(tmp_path, data))
    assert exc.value.code == E.UNSUPPORTED_VERSION


def test_unreadable_sources(tmp_path: Path) -> None:
    for source in (tmp_path / "missing.cpk", tmp_path):
        with pytest.raises(PackageError) as exc:
            open_package(source)
        assert exc.value.code == E.UNREADABLE
    with pytest.raises(PackageError) as exc:
        open_package(write(tmp_path, b""))
    assert exc.value.code == E.TRUNCATED
