"""The simulated key hierarchy (the OP-TEE HUK -> SSK -> TSK pattern).

- HUK: 32 random bytes made at provisioning; on hardware it is fused into the SoC and readable only
  by the secure world. Here it is ``<device>/tee/huk`` (mode 0600, directory 0700).
- SSK (secure storage key) = HKDF-SHA256(HUK, salt "edb-tee-ssk-v1", info device id).
- TSK (trusted-app storage key) = HKDF-SHA256(SSK, salt "edb-tee-tsk-v1", info TA UUID bytes):
  one trusted app cannot open another's objects even with the same object name.
- RPMB key = HKDF-SHA256(HUK, salt "edb-tee-rpmb-v1", info device id): authenticates the
  replay-protected store (on eMMC hardware it is programmed once into the RPMB partition).
"""

from __future__ import annotations

import secrets
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HUK_BYTES = 32


def new_huk() -> bytes:
    return secrets.token_bytes(HUK_BYTES)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


class KeyHierarchy:
    def __init__(self, huk: bytes, device_id: str) -> None:
        if len(huk) != HUK_BYTES:
            raise ValueError("HUK must be 32 bytes")
        self._ssk = _hkdf(huk, b"edb-tee-ssk-v1", device_id.encode())
        self._rpmb = _hkdf(huk, b"edb-tee-rpmb-v1", device_id.encode())
        self._tsk: dict[uuid.UUID, bytes] = {}

    def tsk(self, ta: uuid.UUID) -> bytes:
        key = self._tsk.get(ta)
        if key is None:
            key = self._tsk[ta] = _hkdf(self._ssk, b"edb-tee-tsk-v1", ta.bytes)
        return key

    @property
    def rpmb_key(self) -> bytes:
        return self._rpmb

    def __repr__(self) -> str:
        return "KeyHierarchy(<secret>)"
