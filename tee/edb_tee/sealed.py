"""Sealed object format: one trusted app's named object, encrypted and authenticated on disk.

::

    "EDBSOBJ1" | u32 n | header (n bytes, canonical JSON) | u32 m | wrapped FEK (m bytes) | chunks

- header: ``{"v":2,"ta":"<uuid>","name":"<object name>","gen":<generation>,"size":<bytes>,
  "chunk":<chunk size>,"prefix":"<hex, 7 bytes>","ctr":<counter>,"floors":{"<package id>":<svn>}}``.
  ``ctr`` is a lower bound of the replay-protected store's write counter once this object is
  committed, and ``floors`` the rollback floors that commit raises: what the object proves about
  the store's state (see :mod:`edb_tee.integrity`). Version 1 headers (no ``ctr``, no ``floors``)
  are still read, proving nothing.
- wrapped FEK: a fresh random 256-bit file encryption key per write, ``nonce(12) || AES-256-GCM(TSK,
  FEK, aad = "edb-sobj-fek" || header)``; any change to the header makes unwrapping fail.
- chunks: AES-256-GCM(FEK) of ``chunk``-byte pieces, nonce = prefix || u32 index || u8 last,
  aad = SHA-256(header), each followed by its 16-byte tag (STREAM construction: truncation,
  reordering and splicing between objects fail).

Decryption writes straight into the caller's buffer (``AESGCM.decrypt_into``, which releases the
GIL), so no intermediate plaintext copy is made; the caller must discard the buffer if this raises.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edb.errors import TeeError
from edb.tee.errors import SEALED_NAME_MISMATCH, SEALED_TAMPERED

MAGIC = b"EDBSOBJ1"
CHUNK = 1024 * 1024
TAG = 16
PREFIX = 7
MAX_HEADER = 4096
_LEN = struct.Struct("<I")
_FEK_AAD = b"edb-sobj-fek"


def _tampered(why: str) -> TeeError:
    return TeeError(f"sealed object fails authentication: {why}", code=SEALED_TAMPERED)


@dataclass(frozen=True)
class SealedHeader:
    ta: uuid.UUID
    name: str
    gen: int
    size: int
    chunk: int
    prefix: bytes
    ctr: int = 0
    floors: tuple[tuple[str, int], ...] = ()  # sorted (package id, security version) pairs

    def encode(self) -> bytes:
        return json.dumps({"v": 2, "ta": str(self.ta), "name": self.name, "gen": self.gen, "size": self.size,
                           "chunk": self.chunk, "prefix": self.prefix.hex(), "ctr": self.ctr,
                           "floors": dict(self.floors)},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> SealedHeader:
        try:
            d = json.loads(data)
            v1 = {"v", "ta", "name", "gen", "size", "chunk", "prefix"}
            if not ((d.get("v") == 1 and set(d) == v1) or (d.get("v") == 2 and set(d) == v1 | {"ctr", "floors"})):
                raise ValueError("members")
            floors = d.get("floors", {})
            if not isinstance(floors, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                       for k, v in floors.items()):
                raise ValueError("floors")
            h = cls(uuid.UUID(d["ta"]), str(d["name"]), int(d["gen"]), int(d["size"]), int(d["chunk"]),
                    bytes.fromhex(d["prefix"]), int(d.get("ctr", 0)), tuple(sorted(floors.items())))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _tampered("header is not readable") from exc
        if (h.size < 0 or not 16 <= h.chunk <= 64 * 1024 * 1024 or len(h.prefix) != PREFIX or h.gen < 0
                or h.ctr < 0):
            raise _tampered("header out of range")
        return h

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk))

    def sealed_size(self, header_len: int, wrapped_len: int) -> int:
        return len(MAGIC) + 4 + header_len + 4 + wrapped_len + self.size + self.chunks * TAG


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


class SealWriter:
    """Write one sealed object while its plaintext is still being produced.

    The header (with the final size) and the wrapped key go out at once; :meth:`advance` then seals
    every whole chunk that lies within the first ``available`` bytes of ``src`` (the complete
    plaintext buffer, filled from the front by someone else), and the last chunk once ``available``
    reaches the size. Only ciphertext is ever written; no plaintext is copied."""

    def __init__(self, out: BinaryIO, tsk: bytes, ta: uuid.UUID, name: str, gen: int, size: int,
                 *, chunk: int = CHUNK, ctr: int = 0, floors: Mapping[str, int] | None = None) -> None:
        self._out = out
        self.header = SealedHeader(ta, name, gen, size, chunk, secrets.token_bytes(PREFIX), ctr,
                                   tuple(sorted((floors or {}).items())))
        hbytes = self.header.encode()
        fek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(12)
        wrapped = wrap_nonce + AESGCM(tsk).encrypt(wrap_nonce, fek, _FEK_AAD + hbytes)
        out.write(MAGIC + _LEN.pack(len(hbytes)) + hbytes + _LEN.pack(len(wrapped)) + wrapped)
        self.header_sha256 = hashlib.sha256(hbytes).hexdigest()
        self._aad = hashlib.sha256(hbytes).digest()
        self._aead = AESGCM(fek)
        self._buf = bytearray(min(chunk, size) + TAG)
        self._next = 0  # index of the next chunk to seal

    @property
    def done(self) -> bool:
        return self._next == self.header.chunks

    def advance(self, src: memoryview, available: int) -> int:
        """Seal what ``src[:available]`` allows; returns the bytes written by this call."""
        h = self.header
        written = 0
        while self._next < h.chunks:
            begin = self._next * h.chunk
            end = min(begin + h.chunk, h.size)
            if end > available:
                break
            view = memoryview(self._buf)[: end - begin + TAG]
            last = self._next == h.chunks - 1
            self._aead.encrypt_into(_nonce(h.prefix, self._next, last), src[begin:end], self._aad, view)
            self._out.write(view)
            written += len(view)
            self._next += 1
        return written


def seal(out: BinaryIO, tsk: bytes, ta: uuid.UUID, name: str, gen: int, data: memoryview | bytes,
         *, chunk: int = CHUNK, ctr: int = 0, floors: Mapping[str, int] | None = None) -> str:
    """Write one sealed object; returns the hex SHA-256 of its header (recorded in the RPMB store)."""
    src = memoryview(data).cast("B")
    writer = SealWriter(out, tsk, ta, name, gen, len(src), chunk=chunk, ctr=ctr, floors=floors)
    writer.advance(src, len(src))
    return writer.header_sha256


@dataclass(frozen=True)
class OpenedObject:
    header: SealedHeader
    header_bytes: bytes
    header_sha256: str
    fek: bytes
    data_offset: int

    def __repr__(self) -> str:
        return f"OpenedObject({self.header.name!r}, gen={self.header.gen})"


def open_sealed(fh: BinaryIO, tsk: bytes, ta: uuid.UUID, name: str) -> OpenedObject:
    """Read and authenticate the header of a sealed object and unwrap its key.

    ``TEE_SEALED_TAMPERED`` if anything was edited or cut; ``TEE_SEALED_NAME_MISMATCH`` if it is an
    authentic object of another name or trusted app (two objects swapped). Generation (rollback) is
    the caller's check against the replay-protected store."""
    opened = open_header(fh, tsk)
    if opened.header.ta != ta or opened.header.name != name:
        raise TeeError(f"sealed object slot for {name!r} holds another object", code=SEALED_NAME_MISMATCH)
    return opened


def open_header(fh: BinaryIO, tsk: bytes) -> OpenedObject:
    """Authenticate a sealed object's header with the trusted app key ``tsk`` and unwrap its file
    key, whatever object it is (``TEE_SEALED_TAMPERED`` otherwise): what the start-up integrity
    check reads of every sealed file. The data chunks are not read."""
    head = fh.read(len(MAGIC) + 4)
    if len(head) != len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
        raise _tampered("not a sealed object")
    (hlen,) = _LEN.unpack(head[len(MAGIC):])
    if hlen > MAX_HEADER:
        raise _tampered("header too long")
    hbytes = fh.read(hlen)
    wl = fh.read(4)
    if len(hbytes) != hlen or len(wl) != 4:
        raise _tampered("truncated header")
    (wlen,) = _LEN.unpack(wl)
    if wlen != 12 + 32 + TAG:
        raise _tampered("wrapped key has the wrong size")
    wrapped = fh.read(wlen)
    if len(wrapped) != wlen:
        raise _tampered("truncated key")
    try:
        fek = AESGCM(tsk).decrypt(wrapped[:12], wrapped[12:], _FEK_AAD + hbytes)
    except InvalidTag as exc:
        raise _tampered("header or key was modified, or it belongs to another device or trusted app") from exc
    header = SealedHeader.decode(hbytes)
    size = os.fstat(fh.fileno()).st_size
    if size != header.sealed_size(hlen, wlen):
        raise _tampered("file size does not match its header (truncated or extended)")
    return OpenedObject(header, hbytes, hashlib.sha256(hbytes).hexdigest(), fek, len(MAGIC) + 8 + hlen + wlen)


def unseal_into(fh: io.BufferedIOBase, opened: OpenedObject, dst: memoryview) -> None:
    """Decrypt the chunks into ``dst`` (at least ``size`` bytes). On error the caller wipes ``dst``."""
    h = opened.header
    if len(dst) < h.size:
        raise ValueError("destination too small")
    aad = hashlib.sha256(opened.header_bytes).digest()
    fh.seek(opened.data_offset)
    ct = bytearray(min(h.chunk, h.size) + TAG)
    aead = AESGCM(opened.fek)
    pos = 0
    for i in range(h.chunks):
        n = min(h.chunk, h.size - pos)
        view = memoryview(ct)[: n + TAG]
        got = fh.readinto(view)
        if got != n + TAG:
            raise _tampered("truncated chunk")
        try:
            aead.decrypt_into(_nonce(h.prefix, i, i == h.chunks - 1), view, aad, dst[pos:pos + n])
        except InvalidTag as exc:
            raise _tampered(f"chunk {i} does not authenticate") from exc
        pos += n
