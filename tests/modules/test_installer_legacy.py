"""The installer's LEGACY v1 key flow without I/O beyond a package file: its explicit setting, the
function key file, and the order of calls (key name from the package, the TEE's legacy key to
WrapKey, the wrapped key to the TEE) with fakes for the TEE and the wrap endpoint. The same flow
against the real services runs in tests/e2e/test_legacy_v1.py."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from edb.cpk.v1 import V1Signing, build_v1
from edb.errors import ConfigError, InstallError
from edb.keyrelease import ReleaseFailed
from edb.schemas import PackageState
from package_installer.errors import is_retryable
from package_installer.legacy import read_function_key, release_and_install_legacy
from package_installer.settings import InstallerSettings, LegacySettings

BASE_ENV = {"EDB_TEE_SOCKET": "/run/edb-tee/tee.sock", "EDB_KEY_RELEASE_URL": "https://kr.example:7071/"}


def test_legacy_flow_is_off_unless_explicitly_enabled(tmp_path: Path) -> None:
    assert InstallerSettings.from_env(BASE_ENV).legacy is None
    assert InstallerSettings.from_env({**BASE_ENV, "EDB_LEGACY_V1_ENABLED": "0"}).legacy is None
    on = InstallerSettings.from_env({**BASE_ENV, "EDB_LEGACY_V1_ENABLED": "1",
                                     "EDB_LEGACY_WRAP_KEY_FILE": str(tmp_path / "fn")})
    assert on.legacy == LegacySettings("https://kr.example:7071/api/WrapKey", tmp_path / "fn")
    custom = InstallerSettings.from_env({**BASE_ENV, "EDB_LEGACY_V1_ENABLED": "true",
                                         "EDB_LEGACY_WRAP_URL": "https://wrap.example/api/WrapKey"})
    assert custom.legacy == LegacySettings("https://wrap.example/api/WrapKey", None)
    for bad in ({"EDB_LEGACY_V1_ENABLED": "maybe"},
                {"EDB_LEGACY_V1_ENABLED": "1", "EDB_LEGACY_WRAP_URL": "http://wrap.example/api/WrapKey"},
                {"EDB_LEGACY_V1_ENABLED": "1", "EDB_LEGACY_WRAP_URL": "https://wrap.example/api/WrapKey?code=k"}):
        with pytest.raises(ConfigError) as err:
            InstallerSettings.from_env({**BASE_ENV, **bad})
        assert err.value.code == "CONFIG_INVALID"


def test_function_key_file(tmp_path: Path) -> None:
    assert read_function_key(None) is None
    good = tmp_path / "fn"
    good.write_text("s3cr3t-key\n")
    assert read_function_key(good) == "s3cr3t-key"
    for content in ("", "   \n", "two words\n", "x" * 5000):
        bad = tmp_path / "bad"
        bad.write_text(content)
        with pytest.raises(ConfigError) as err:
            read_function_key(bad)
        assert err.value.code == "CONFIG_INVALID" and "words" not in err.value.message  # never echoes the key
    with pytest.raises(ConfigError):
        read_function_key(tmp_path / "missing")


def _v1_file(path: Path, key_name: str) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "demo")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(signer.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    build_v1(b"model bytes", path, cp_id=key_name, key=os.urandom(32), signing=V1Signing(signer, cert))


class Ticket:
    package_id = "digits-legacy"
    version = "1.0.0"
    security_version = 0


class FakeTee:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def legacy_public_key(self) -> bytes:
        self.calls.append(("legacy_public_key", None))
        return b"tee-spki"

    def complete_install_legacy(self, ticket: Any, wrapped_key_b64: str) -> Any:
        self.calls.append(("complete_install_legacy", wrapped_key_b64))
        return "summary"


class FakeWrapper:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.error = error

    def wrap(self, key_name: str, client_public_key_der: bytes) -> str:
        self.calls.append((key_name, client_public_key_der))
        if self.error is not None:
            raise self.error
        return "d3JhcHBlZA=="


@pytest.fixture
def package_fd(tmp_path: Path) -> Any:
    path = tmp_path / "legacy.cpk"
    _v1_file(path, "digits-legacy")
    fd = os.open(path, os.O_RDONLY)
    os.lseek(fd, 5, os.SEEK_SET)  # where the TEE's reads left the shared offset
    yield fd
    os.close(fd)


async def test_wrapkey_with_the_tees_legacy_key_then_complete_install_legacy(package_fd: int) -> None:
    tee, wrapper, states = FakeTee(), FakeWrapper(), []

    async def on_state(state: PackageState, svn: int | None) -> None:
        states.append(state)

    summary = await release_and_install_legacy(Ticket(), package_fd, tee, wrapper, on_state)
    assert summary == "summary"
    assert wrapper.calls == [("digits-legacy", b"tee-spki")]  # key name from the manifest, the TEE's key
    assert tee.calls == [("legacy_public_key", None), ("complete_install_legacy", "d3JhcHBlZA==")]
    assert states == [PackageState.RELEASING, PackageState.INSTALLING]
    assert os.lseek(package_fd, 0, os.SEEK_CUR) == 5  # the descriptor shared with the TEE is untouched


async def test_refused_when_the_installer_has_no_legacy_flow(package_fd: int) -> None:
    tee, states = FakeTee(), []

    async def on_state(state: PackageState, svn: int | None) -> None:
        states.append(state)

    with pytest.raises(InstallError) as err:
        await release_and_install_legacy(Ticket(), package_fd, tee, None, on_state)
    assert err.value.code == "INSTALL_LEGACY_UNSUPPORTED" and not is_retryable(err.value)
    assert tee.calls == [] and states == []


@pytest.mark.parametrize("failure, retryable", [
    (ReleaseFailed("no class key", code="KR_LEGACY_KEY_NOT_FOUND", status=404), False),
    (ReleaseFailed("function key required", code="KR_LEGACY_UNAUTHORIZED", status=401), False),
    (ReleaseFailed("unreachable", code="KR_UNREACHABLE", retryable=True), True),
])
async def test_a_wrap_failure_never_reaches_the_tee(package_fd: int, failure: ReleaseFailed, retryable: bool) -> None:
    tee = FakeTee()

    async def on_state(state: PackageState, svn: int | None) -> None:
        pass

    with pytest.raises(ReleaseFailed) as err:
        await release_and_install_legacy(Ticket(), package_fd, tee, FakeWrapper(failure), on_state)
    assert err.value.code == failure.code and is_retryable(err.value) is retryable
    assert ("complete_install_legacy", "d3JhcHBlZA==") not in tee.calls
