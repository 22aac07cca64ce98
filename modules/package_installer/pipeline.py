"""One install job: fetch -> TEE verifies -> key release -> TEE installs. The states it passes
through are reported as they happen; any failure aborts the TEE transaction, so nothing is ever
half-installed and the version that serves is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edb.errors import InstallError
from edb.schemas import DesiredPackage, PackageState
from package_installer.downloader import DownloadSettings, fetch
from package_installer.errors import is_retryable
from package_installer.legacy import LegacyWrapper, release_and_install_legacy
from package_installer.sources import resolve_source

log = logging.getLogger("package_installer.pipeline")

OnState = Callable[[PackageState, int | None], Awaitable[None]]


class TeeLike(Protocol):
    def begin_install(self, name: str, package_file: Any) -> Any: ...
    def get_install_evidence(self, ticket: Any, nonce: str) -> Any: ...
    def complete_install(self, ticket: Any, jwe: str) -> Any: ...
    def abort_install(self, ticket: Any) -> None: ...
    def legacy_public_key(self) -> bytes: ...
    def complete_install_legacy(self, ticket: Any, wrapped_key_b64: str) -> Any: ...


class KeyReleaseLike(Protocol):
    def release(self, package: tuple[str, str], signed_manifest: Any, make_evidence: Callable[[str], Any]) -> str: ...


@dataclass(frozen=True)
class InstallDeps:
    tee: TeeLike
    key_release: KeyReleaseLike
    download: DownloadSettings
    legacy: LegacyWrapper | None = None  # the v1 key flow (WrapKey); None: v1 packages are refused


async def run_install(package: DesiredPackage, deps: InstallDeps, on_state: OnState) -> Any:
    """Returns the TEE's install summary. Raises an EdbError (or a transport error) on failure."""
    source = resolve_source(package.url, deps.download.allowed_dirs, deps.download.allowed_hosts)
    await on_state(PackageState.DOWNLOADING, None)
    fetched = await fetch(package, source, deps.download)
    ticket: Any = None
    failed = True
    try:
        await on_state(PackageState.VERIFYING, None)
        # The TEE reads the file through the descriptor and verifies signature, publisher chain,
        # target, expiry and the rollback floor before anything else happens.
        ticket = await asyncio.to_thread(deps.tee.begin_install, package.name, fetched.fd)
        if ticket.sha256 != package.sha256:
            raise InstallError("the file the TEE read is not the declared sha256", code="INSTALL_HASH_MISMATCH")
        if ticket.version != package.version:
            raise InstallError(f"the package is version {ticket.version[:40]}, the twin asked for {package.version}",
                               code="INSTALL_VERSION_MISMATCH")
        # The name serves the package: it must be the package the publisher signed, or a twin writer
        # could install another (authentic) package under a served name. A v1 cp-id (an upper-case
        # UUID from the original tools) is compared case-insensitively; twin names are lower case.
        signed_id = ticket.package_id if ticket.signed_manifest is not None else ticket.package_id.lower()
        if signed_id != package.name:
            raise InstallError(f"the package is {ticket.package_id[:64]!r}, the twin installs it as {package.name!r}",
                               code="INSTALL_NAME_MISMATCH")
        if ticket.signed_manifest is None:  # a v1 package: only with the legacy flow (weaker, explicit)
            summary = await release_and_install_legacy(ticket, fetched.fd, deps.tee, deps.legacy, on_state)
            ticket = None
            failed = False
            return summary
        await on_state(PackageState.RELEASING, ticket.security_version)
        jwe = await asyncio.to_thread(
            deps.key_release.release, (ticket.package_id, ticket.version), ticket.signed_manifest,
            lambda nonce: deps.tee.get_install_evidence(ticket, nonce),
        )
        await on_state(PackageState.INSTALLING, ticket.security_version)
        summary = await asyncio.to_thread(deps.tee.complete_install, ticket, jwe)
        ticket = None
        failed = False
        return summary
    except BaseException as exc:
        if ticket is not None:
            await asyncio.shield(asyncio.to_thread(_abort_quietly, deps.tee, ticket))
        if isinstance(exc, Exception) and not is_retryable(exc):
            fetched.discard()  # a package the TEE refused is not worth keeping for a retry
        raise
    finally:
        if failed:
            fetched.close()
        else:
            fetched.discard()  # installed and sealed in the TEE: the cached ciphertext is not needed


def _abort_quietly(tee: TeeLike, ticket: Any) -> None:
    try:
        tee.abort_install(ticket)
    except Exception as exc:  # the TEE forgets unfinished transactions on restart anyway
        log.warning("abort_install failed: %s", type(exc).__name__)
