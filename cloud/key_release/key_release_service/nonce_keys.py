"""Where the nonce MAC keys come from (see :mod:`key_release_service.nonces`).

- ``EDB_KR_NONCE_KEY``: base64 (or base64url) of at least 32 random bytes; several keys
  comma-separated, the first signs and all verify (rotation). In Azure Functions make the
  application setting a Key Vault reference (``@Microsoft.KeyVault(SecretUri=...)``) to a secret
  holding the key, so every instance shares it and it lives in the vault.
- ``EDB_KR_NONCE_KEY_FILE``: a file holding such keys, one per line. Created (mode 0600, one fresh
  key) if it does not exist: the local stack keeps its key in ``.edb/keyrelease/nonce.key``, so a
  restarted service still accepts the nonces it issued.
- neither: a random key made at start, for this process only (one instance; a restart makes
  outstanding nonces ``KR_NONCE_UNKNOWN``, and the device asks for a new one on its next attempt).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from edb.errors import ConfigError
from key_release_service.nonces import MIN_KEY_BYTES

MAX_KEYS = 4
MAX_KEY_FILE_BYTES = 4096


def parse_nonce_keys(text: str, *, what: str) -> tuple[bytes, ...]:
    """Keys from comma- or newline-separated base64/base64url text (pure)."""
    items = [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    if not 0 < len(items) <= MAX_KEYS:
        raise ConfigError(f"{what}: give 1-{MAX_KEYS} nonce keys", code="CONFIG_INVALID")
    keys = []
    for item in items:
        try:
            key = base64.b64decode(item.replace("-", "+").replace("_", "/") + "=" * (-len(item) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{what}: a nonce key is not base64", code="CONFIG_INVALID") from exc
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"{what}: a nonce key must be at least {MIN_KEY_BYTES} bytes", code="CONFIG_INVALID")
        keys.append(key)
    return tuple(keys)


def load_or_create_key_file(path: Path | str) -> tuple[bytes, ...]:
    """The keys in ``path``; a new file with one random key (0600, never overwritten) if absent."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the nonce key file {path}: {exc.strerror}", code="CONFIG_INVALID") from exc
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode() + "\n")
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path} must not be readable by group or others (chmod 600)", code="CONFIG_INVALID")
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the nonce key file {path}: {exc.strerror}", code="CONFIG_INVALID") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{path} is too large for a nonce key file", code="CONFIG_INVALID")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: a nonce key is not base64", code="CONFIG_INVALID") from exc
    return parse_nonce_keys(text, what=str(path))
