"""Configured size limits, checked against declared sizes before anything is allocated or read."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Limits:
    """Upper bounds a reader enforces. The defaults suit an edge device; a cloud tool may raise them."""

    #: Largest manifest stream (JSON).
    max_manifest_bytes: int = 64 * KIB
    #: Largest v2 signature stream (a DER ECDSA P-256 signature is at most 72 bytes).
    max_signature_bytes: int = 256
    #: Largest v2 signer chain stream, and most certificates in it.
    max_chain_bytes: int = 32 * KIB
    max_chain_certs: int = 4
    #: Largest payload (plaintext) a reader accepts.
    max_payload_bytes: int = 16 * GIB
    #: Largest number of streams in a frame table (a v1 package has 7, v2 has 4).
    max_streams: int = 64
    #: Largest v1 "small" stream (nonce, tag, digest, signature, certificate).
    max_small_stream_bytes: int = 64 * KIB
    #: Chunk size bounds for v2 (the builder's default is 1 MiB).
    min_chunk_size: int = 16
    max_chunk_size: int = 16 * MIB


    @property
    def max_ciphertext_bytes(self) -> int:
        """Largest v2 payload stream: the largest plaintext plus one tag per smallest chunk."""
        chunks = max(1, -(-self.max_payload_bytes // self.min_chunk_size))
        return self.max_payload_bytes + 16 * chunks


DEFAULT_LIMITS = Limits()
