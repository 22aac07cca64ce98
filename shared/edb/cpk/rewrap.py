"""Re-wrapping a v2 package's DEK under another KEK (rotation) without touching the payload.

The wrapped DEK is inside the signed manifest, so the manifest is re-signed. The source manifest
is authenticated first (a tampered package is never laundered into a freshly signed one) and the
payload ciphertext is copied byte for byte while its SHA-256 is checked against the manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509

from edb.cpk.build import BuildResult, _AtomicOutput, _check_signer, header_size, sign_manifest, write_tail
from edb.cpk.errors import DIGEST_MISMATCH, package_error
from edb.cpk.reader import V2_PAYLOAD, PackageSource, open_package
from edb.cpk.signed import encode_chain
from edb.cpk.stream_aead import TAG_BYTES, chunk_list_digest
from edb.cpk.verify import verify_package
from edb.keys.base import KekProvider, Signer


def rewrap(
    source: PackageSource,
    output: str | os.PathLike[str],
    *,
    old_kek: KekProvider,
    new_kek: KekProvider,
    signer: Signer,
    trust_roots: Sequence[x509.Certificate],
    now: dt.datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Write ``output``: same payload bytes, DEK unwrapped by ``old_kek`` and wrapped by ``new_kek``,
    manifest re-signed by ``signer``. ``output`` may equal the source path (atomic replace)."""
    now = now or dt.datetime.now(dt.UTC)
    with open_package(source) as reader:
        verified = verify_package(reader, trust_roots=trust_roots, now=now, check_payload_digest=False)
        manifest = verified.manifest
        dek = bytearray(old_kek.unwrap(manifest.wrapped_dek))
        try:
            wrapped = new_kek.wrap(bytes(dek))
        finally:
            dek[:] = bytes(len(dek))
        chain_ders, leaf_key = _check_signer(signer)
        new_manifest = manifest.with_wrapped_dek(wrapped, hashlib.sha256(encode_chain(chain_ders)).hexdigest())
        signed = sign_manifest(new_manifest, signer, chain_ders, leaf_key)

        atomic = _AtomicOutput(Path(output))
        try:
            out = atomic.file
            out.write(bytes(header_size()))
            digests = bytearray()
            for block in reader.iter_stream(V2_PAYLOAD, block_size=manifest.chunk_size + TAG_BYTES):
                digests.extend(hashlib.sha256(block).digest())  # one sealed chunk per block
                out.write(block)
                if progress is not None:
                    progress(len(block))
            if chunk_list_digest(bytes(digests)) != manifest.ciphertext_sha256:
                raise package_error(DIGEST_MISMATCH, "payload ciphertext SHA-256 differs from the signed manifest")
            size = write_tail(out, 0, manifest.ciphertext_size, signed)
            atomic.commit()
        except BaseException:
            atomic.abort()
            raise
    return BuildResult(manifest=new_manifest, signed=signed, file_size=size, path=atomic.path)
