"""The v2 payload encryption: AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar, Rogaway,
Vizar 2015), as used by age/Tink: the plaintext is cut into fixed-size chunks, each sealed with

    nonce_i = prefix (7 random bytes) || uint32_be(i) || last_i (0x01 on the final chunk, else 0x00)
    aad     = "EDB-CPK2" || uint16_be(len(id)) || id || uint16_be(len(version)) || version
              || uint64_be(security_version) || uint32_be(chunk_size)

and stored as ciphertext_i || tag_i (16 bytes). The counter makes reordering and dropping fail,
the last flag makes truncation at a chunk boundary fail, the per-package random DEK (and prefix)
makes splicing from another package fail, and the AAD binds every chunk to the identity the
signed manifest claims. The manifest is not hashed into the AAD because it records the
ciphertext's own digest; instead its identity fields are. Pure functions only.
"""

from __future__ import annotations

import hashlib
import struct

TAG_BYTES = 16
NONCE_PREFIX_BYTES = 7
MAX_CHUNKS = 2**32  # the counter is 32 bits
AAD_LABEL = b"EDB-CPK2"
AEAD_ALG = "A256GCM-STREAM"


def chunk_list_digest(chunk_digests: bytes) -> str:
    """Hex SHA-256 over the concatenated 32-byte SHA-256 digests of the chunks, in order."""
    return hashlib.sha256(chunk_digests).hexdigest()


def chunk_count(plaintext_size: int, chunk_size: int) -> int:
    """Number of chunks; an empty payload is one empty (tag-only) final chunk."""
    return max(1, -(-plaintext_size // chunk_size))


def ciphertext_size(plaintext_size: int, chunk_size: int) -> int:
    return plaintext_size + TAG_BYTES * chunk_count(plaintext_size, chunk_size)


def chunk_plaintext_len(index: int, plaintext_size: int, chunk_size: int) -> int:
    return min(chunk_size, plaintext_size - index * chunk_size) if plaintext_size else 0


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if len(prefix) != NONCE_PREFIX_BYTES or not 0 <= index < MAX_CHUNKS:
        raise ValueError("bad nonce prefix or chunk index")
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def stream_aad(package_id: str, version: str, security_version: int, chunk_size: int) -> bytes:
    pid, ver = package_id.encode("utf-8"), version.encode("utf-8")
    return (
        AAD_LABEL
        + struct.pack(">H", len(pid)) + pid
        + struct.pack(">H", len(ver)) + ver
        + struct.pack(">QI", security_version, chunk_size)
    )
