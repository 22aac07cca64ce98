"""Property-based tests: random and mutated frames, manifests and requests reach the parser and
verifier; only a result or the library's own PackageError may come out, and a mutated package
that still verifies can only yield the original plaintext."""

from __future__ import annotations

import contextlib
import io
import json
import struct
from pathlib import Path

import pytest
from cpk_helpers import CHUNK, NOW, Publisher, identity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edb.cpk import PackageError, SignedManifest, build, decrypt_payload, open_package, verify_package
from edb.cpk.manifest_v1 import parse_manifest_v1
from edb.cpk.manifest_v2 import parse_manifest_v2
from edb.cpk.signed import decode_chain

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGIC = struct.pack("<I", 0x0ECCF00D)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, publisher: Publisher) -> tuple[bytes, bytes]:
    plaintext = bytes(range(256)) * 4 + b"tail"
    out = io.BytesIO()
    build(io.BytesIO(plaintext), out, identity=identity(), kek=publisher.kek, signer=publisher.signer,
          chunk_size=CHUNK)
    return out.getvalue(), plaintext


def parse_only(data: bytes) -> None:
    try:
        with open_package(io.BytesIO(data)) as reader:
            reader.info()
            if reader.format == "cpk-v2":
                reader.signed_manifest()
    except PackageError:
        pass


def full_path(data: bytes, publisher: Publisher) -> bytes | None:
    """None if refused with a PackageError; the plaintext if everything verified."""
    try:
        with open_package(io.BytesIO(data)) as reader:
            verified = verify_package(reader, trust_roots=publisher.roots, now=NOW, device_id="dev-1",
                                      check_payload_digest=False)
            dek = publisher.kek.unwrap(verified.manifest.wrapped_dek)
            out = bytearray(verified.manifest.plaintext_size)
            decrypt_payload(verified, dek, out, threads=1)
            return bytes(out)
    except PackageError:
        return None


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    parse_only(data)


@SETTINGS
@given(
    version=st.integers(0, 65535), flag=st.sampled_from([0, 0, 1]), num=st.integers(0, 70),
    manifest_stream=st.integers(0, 70), mtype=st.sampled_from([1, 1, 2]), mversion=st.sampled_from([1, 2, 3]),
    entries=st.lists(st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, 300), st.integers(0, 2**64 - 1)
                               | st.integers(0, 300)), max_size=8),
    tail=st.binary(max_size=400),
)
def test_random_frames(version: int, flag: int, num: int, manifest_stream: int, mtype: int, mversion: int,
                       entries: list[tuple[int, int]], tail: bytes) -> None:
    header = MAGIC + struct.pack("<HHHHHH", version % 3, flag, num, manifest_stream, mtype, mversion)
    table = b"".join(struct.pack("<QQ", o, s) for o, s in entries)
    parse_only(header + table + tail)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.integers(0, 0)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 64)),
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        if not buf:
            break
        pos %= len(buf)
        if op == "flip":
            buf[pos] ^= arg
        elif op == "set":
            buf[pos] = arg
        elif op == "cut":
            del buf[pos:]
        elif op == "insert":
            buf.insert(pos, arg)
        else:
            del buf[pos : pos + arg]
    return bytes(buf)


def test_mutated_packages(original: tuple[bytes, bytes], publisher: Publisher) -> None:
    data, plaintext = original
    assert full_path(data, publisher) == plaintext

    @SETTINGS
    @given(st.lists(mutation, min_size=1, max_size=4))
    def check(ops: list[tuple[str, int, int]]) -> None:
        mutated = mutate(data, ops)
        result = full_path(mutated, publisher)
        assert result is None or result == plaintext  # refused, or (e.g. trailing padding) the very same plaintext

    check()


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                   max_size=6), max_leaves=30))
def test_random_json_manifests(value: object) -> None:
    data = json.dumps(value).encode()
    for parse in (parse_manifest_v1, parse_manifest_v2):
        with contextlib.suppress(PackageError):
            parse(data)


def test_mutated_manifest_json(original: tuple[bytes, bytes]) -> None:
    data, _ = original
    with open_package(io.BytesIO(data)) as reader:
        manifest = json.loads(reader.manifest_bytes)

    leaves = []

    def walk(node: object, path: tuple[object, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, i))
        leaves.append(path)

    walk(manifest, ())
    replacement = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=70) | st.just([])

    @SETTINGS
    @given(st.sampled_from(leaves), replacement, st.booleans())
    def check(path: tuple[object, ...], value: object, delete: bool) -> None:
        doc = json.loads(json.dumps(manifest))
        if not path:
            doc = value
        else:
            parent = doc
            for key in path[:-1]:
                parent = parent[key]  # type: ignore[index]
            if delete and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = value  # type: ignore[index]
        with contextlib.suppress(PackageError):
            parse_manifest_v2(json.dumps(doc).encode())

    check()


@SETTINGS
@given(st.binary(max_size=300))
def test_random_chain_streams(data: bytes) -> None:
    with contextlib.suppress(PackageError):
        decode_chain(data)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["json", "signature", "chain", "x"]),
                       st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=6) | st.integers(), max_size=4))
def test_random_signed_manifest_requests(value: dict[str, object]) -> None:
    with contextlib.suppress(PackageError):
        SignedManifest.from_json(value)


def test_write_then_read_is_identity_for_any_payload(tmp_path: Path, publisher: Publisher) -> None:
    @settings(max_examples=25, deadline=None)
    @given(st.binary(max_size=3 * CHUNK + 10), st.sampled_from([16, 64, CHUNK]))
    def check(payload: bytes, chunk_size: int) -> None:
        out = io.BytesIO()
        build(io.BytesIO(payload), out, identity=identity(), kek=publisher.kek, signer=publisher.signer,
              chunk_size=chunk_size)
        assert full_path(out.getvalue(), publisher) == payload

    check()
