"""Installer: a resent event keeps its message id; a package signed as another package than the
twin names is refused before any key is asked for (pure logic over fakes and a ``file:`` source)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from edb.errors import InstallError
from edb.schemas import DesiredPackage, PackageState
from package_installer.downloader import DownloadSettings
from package_installer.errors import is_retryable
from package_installer.pipeline import InstallDeps, run_install
from package_installer.twin_io import OutputSender

pytestmark = pytest.mark.timeout(30)


class FlakyClient:
    """Fails the first send after taking the message (an ambiguous failure: edgeHub may have it)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[tuple[str, str]] = []
        self.delivered = asyncio.Event()

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        pass

    async def send_message_to_output(self, message: Any, output: str) -> None:
        self.attempts.append((output, message.message_id))
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection dropped before PUBACK")
        self.delivered.set()


async def test_a_resent_event_keeps_its_message_id() -> None:
    client = FlakyClient(failures=2)
    sender = OutputSender(client, retry_s=0.01)
    running = asyncio.create_task(sender.run())
    try:
        first = sender.send("events", {"event": "package.installed"}, {"messageType": "event"})
        second = sender.send("events", {"event": "package.state"}, {"messageType": "event"})
        chosen = sender.send("notifications", {"event": "package.installed"}, {"messageType": "event"},
                             message_id="evt-42")
        await asyncio.wait_for(sender.drained(), 5)
    finally:
        running.cancel()
    assert client.attempts == [("events", first), ("events", first), ("events", first), ("events", second),
                               ("notifications", "evt-42")]
    assert len({first, second, chosen}) == 3


class Ticket:
    def __init__(self, package_id: str, version: str, sha256: str, signed: bool = True) -> None:
        self.package_id = package_id
        self.version = version
        self.sha256 = sha256
        self.security_version = 2
        self.signed_manifest = object() if signed else None


class RecordingTee:
    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.calls: list[str] = []

    def begin_install(self, name: str, package_file: Any) -> Any:
        self.calls.append("begin_install")
        return self.ticket

    def get_install_evidence(self, ticket: Any, nonce: str) -> Any:
        self.calls.append("get_install_evidence")

    def complete_install(self, ticket: Any, jwe: str) -> Any:
        self.calls.append("complete_install")

    def abort_install(self, ticket: Any) -> None:
        self.calls.append("abort_install")

    def legacy_public_key(self) -> bytes:
        self.calls.append("legacy_public_key")
        return b""

    def complete_install_legacy(self, ticket: Any, wrapped_key_b64: str) -> Any:
        self.calls.append("complete_install_legacy")


class NoRelease:
    def __init__(self) -> None:
        self.calls = 0

    def release(self, package: tuple[str, str], signed_manifest: Any, make_evidence: Any) -> str:
        self.calls += 1
        raise AssertionError("no key may be asked for")


def _dropped(tmp_path: Path, data: bytes, version: str) -> tuple[Path, DesiredPackage]:
    """``data`` as ``<tmp>/drop/p.cpk`` (a ``file:`` source) and the twin entry naming it digits ``version``."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "p.cpk").write_bytes(data)
    return drop, DesiredPackage("digits", version, f"file://{drop}/p.cpk", hashlib.sha256(data).hexdigest(), len(data))


@pytest.mark.parametrize(("package_id", "signed"), [("other-model", True), ("Digits", True), ("OTHER", False)])
async def test_a_package_signed_as_another_package_is_refused_before_key_release(
        tmp_path: Path, package_id: str, signed: bool) -> None:
    data = b"package bytes the TEE authenticates"
    drop, package = _dropped(tmp_path, data, "2.0.0")
    tee, release = RecordingTee(Ticket(package_id, "2.0.0", package.sha256, signed)), NoRelease()
    deps = InstallDeps(tee, release, DownloadSettings(tmp_path / "cache", (drop,)))
    states: list[PackageState] = []

    async def on_state(state: PackageState, svn: int | None) -> None:
        states.append(state)

    with pytest.raises(InstallError) as refused:
        await run_install(package, deps, on_state)
    assert refused.value.code == "INSTALL_NAME_MISMATCH" and not is_retryable(refused.value)
    assert tee.calls == ["begin_install", "abort_install"] and release.calls == 0
    assert states == [PackageState.DOWNLOADING, PackageState.VERIFYING]
    assert (drop / "p.cpk").read_bytes() == data  # a file: source is never touched


async def test_a_v1_cp_id_matches_case_insensitively(tmp_path: Path) -> None:
    drop, package = _dropped(tmp_path, b"v1 package", "1.0.0")
    tee = RecordingTee(Ticket("DIGITS", "1.0.0", package.sha256, signed=False))
    deps = InstallDeps(tee, NoRelease(), DownloadSettings(tmp_path / "cache", (drop,)))

    async def on_state(state: PackageState, svn: int | None) -> None:
        pass

    with pytest.raises(InstallError) as refused:  # past the name check: refused for having no legacy flow
        await run_install(package, deps, on_state)
    assert refused.value.code == "INSTALL_LEGACY_UNSUPPORTED"
