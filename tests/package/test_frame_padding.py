"""Padding between streams: the frame allows it (offsets are origin-relative, sizes count only
meaningful bytes), so a package whose streams sit apart, in another order, with junk between them
and after the last one, reads, verifies and decrypts exactly like the packed one; the junk is
never read, so changing it changes nothing."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from cpk_helpers import NOW, BuildFn, Publisher, v1_signing

from edb.cpk import decrypt_payload, open_package, verify_package
from edb.cpk.frame import ENTRY_SIZE, HEADER_SIZE
from edb.cpk.v1 import build_v1, decrypt_payload_v1, verify_v1


def relay_with_padding(packed: bytes, gaps: list[int], order: list[int], tail: int) -> tuple[bytes, list[int]]:
    """The same streams, laid out in ``order`` with ``gaps[i]`` random bytes before the i-th one
    placed and ``tail`` random bytes after the last. Returns the file and the padding positions."""
    num = struct.unpack_from("<H", packed, 8)[0]
    origin = HEADER_SIZE + num * ENTRY_SIZE
    entries = [struct.unpack_from("<QQ", packed, HEADER_SIZE + i * ENTRY_SIZE) for i in range(num)]
    streams = [packed[origin + offset: origin + offset + size] for offset, size in entries]
    table, body, padding = bytearray(packed[:origin]), bytearray(), []
    for gap, index in zip(gaps, order, strict=True):
        padding += range(origin + len(body), origin + len(body) + gap)
        body += os.urandom(gap)
        struct.pack_into("<QQ", table, HEADER_SIZE + index * ENTRY_SIZE, len(body), len(streams[index]))
        body += streams[index]
    padding += range(origin + len(body), origin + len(body) + tail)
    return bytes(table + body + os.urandom(tail)), padding


def _v2_plaintext(path: Path, publisher: Publisher) -> bytes:
    with open_package(path) as reader:
        verified = verify_package(reader, trust_roots=publisher.roots, now=NOW, device_id="dev-1", security_floor=3)
        out = bytearray(verified.manifest.plaintext_size)
        decrypt_payload(verified, publisher.kek.unwrap(verified.manifest.wrapped_dek), out)
        return bytes(out)


@pytest.mark.parametrize(("gaps", "order", "tail"), [
    ([0, 7, 1, 4096], [0, 1, 2, 3], 0),       # gaps between streams
    ([13, 0, 0, 0], [0, 1, 2, 3], 100),        # before the first stream (offset > 0) and after the last
    ([5, 9, 0, 300], [3, 2, 1, 0], 17),        # streams in reverse file order
])
def test_v2_package_with_padding_reads_verifies_and_decrypts(make_package: BuildFn, publisher: Publisher,
                                                             tmp_path: Path, gaps: list[int], order: list[int],
                                                             tail: int) -> None:
    packed_path, _, plaintext = make_package(os.urandom(1500))
    padded, padding = relay_with_padding(packed_path.read_bytes(), gaps, order, tail)
    assert len(padding) == sum(gaps) + tail > 0
    path = tmp_path / "padded.cpk"
    path.write_bytes(padded)
    assert _v2_plaintext(path, publisher) == plaintext
    with open_package(path) as reader:
        assert reader.info().file_size == len(padded)
    for position in padding[:: max(1, len(padding) // 16)]:  # the padding carries no meaning
        changed = bytearray(padded)
        changed[position] ^= 0xFF
        path.write_bytes(changed)
        assert _v2_plaintext(path, publisher) == plaintext


def test_v1_package_with_padding_verifies_and_decrypts(tmp_path: Path) -> None:
    content_key, plaintext = os.urandom(32), os.urandom(2000)
    packed = tmp_path / "packed.cpk"
    build_v1(plaintext, packed, cp_id="app-1", key=content_key, signing=v1_signing())
    padded, _ = relay_with_padding(packed.read_bytes(), [3, 0, 64, 1, 0, 8, 5], [6, 0, 1, 2, 3, 4, 5], 9)
    path = tmp_path / "padded.cpk"
    path.write_bytes(padded)
    with open_package(path) as reader:
        assert verify_v1(reader, {"app-1": content_key}).ok
        out = bytearray()
        assert decrypt_payload_v1(reader, content_key, out.extend) == len(plaintext)
    assert bytes(out) == plaintext
