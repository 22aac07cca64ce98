"""LEGACY v1 packages with the original tools' key flow. WEAKER, off unless ``EDB_LEGACY_V1_ENABLED=1``.

A v1 package (the original cpk-tool's manifest) has no publisher signature the device can pin, no
target, no expiry and no security version, and its content key ("class key") is released by the
key release service's ``/api/WrapKey`` to any RSA key for whoever holds the function key: there is
no attestation, nonce or policy. The TEE still does what it can (GCM tag, digest, the embedded
certificate's signature) and the key never leaves the service and the TEE: the installer asks the
TEE for its legacy public key, sends it to WrapKey, and hands the wrapped key to
``complete_install_legacy``. The install is reported with ``keyFlow: "legacy-wrapkey"``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from edb.cpk import open_package
from edb.errors import ConfigError, InstallError
from edb.schemas import PackageState

log = logging.getLogger("package_installer.legacy")

UNSUPPORTED = "INSTALL_LEGACY_UNSUPPORTED"
MAX_FUNCTION_KEY_BYTES = 4096
OnState = Callable[[PackageState, int | None], Awaitable[None]]


class LegacyTee(Protocol):
    def legacy_public_key(self) -> bytes: ...
    def complete_install_legacy(self, ticket: Any, wrapped_key_b64: str) -> Any: ...


class LegacyWrapper(Protocol):
    def wrap(self, key_name: str, client_public_key_der: bytes) -> str: ...


def read_function_key(path: Path | None) -> str | None:
    """The WrapKey function key from its file (one line); None when no file is configured."""
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FUNCTION_KEY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read EDB_LEGACY_WRAP_KEY_FILE {path}: {exc.strerror}",
                          code="CONFIG_INVALID") from None
    key = raw.decode("utf-8", "replace").strip()
    if not key or len(raw) > MAX_FUNCTION_KEY_BYTES or any(c.isspace() for c in key):
        raise ConfigError(f"EDB_LEGACY_WRAP_KEY_FILE {path} does not hold one function key", code="CONFIG_INVALID")
    return key


def class_key_name(fd: int) -> str:
    """The key name the v1 manifest asks for (``payload.enc.key_name``; the original tools use the
    package id). Read through a new open file description, so the offset of the descriptor the TEE
    shares is left alone. The manifest is unauthenticated in v1: the name only selects a key."""
    with open(f"/proc/self/fd/{fd}", "rb") as f, open_package(f) as reader:
        encryption = reader.manifest_v1.payload.enc
    if encryption.kind != "aes-gcm" or not encryption.key_name:
        raise InstallError("this v1 package is not encrypted: it cannot be installed as confidential",
                           code=UNSUPPORTED)
    return encryption.key_name


async def release_and_install_legacy(ticket: Any, fd: int, tee: LegacyTee, wrapper: LegacyWrapper | None,
                              on_state: OnState) -> Any:
    """WrapKey to the TEE's legacy key, then ``complete_install_legacy``. Returns the install summary."""
    if wrapper is None:
        raise InstallError("legacy v1 packages need the legacy key flow, which this installer does not enable "
                           "(EDB_LEGACY_V1_ENABLED)", code=UNSUPPORTED)
    key_name = await asyncio.to_thread(class_key_name, fd)
    log.warning("LEGACY v1 install of %s %s: original key flow (no attestation, no rollback floor)",
                ticket.package_id, ticket.version)
    await on_state(PackageState.RELEASING, ticket.security_version)
    public_key = await asyncio.to_thread(tee.legacy_public_key)
    wrapped = await asyncio.to_thread(wrapper.wrap, key_name, public_key)
    await on_state(PackageState.INSTALLING, ticket.security_version)
    return await asyncio.to_thread(tee.complete_install_legacy, ticket, wrapped)
