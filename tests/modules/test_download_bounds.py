"""One package cannot block every install (issue 13, item 2).

- a FIFO at a ``file:`` URL inside an allowed directory is refused at once (opened without
  blocking, then found not to be a regular file), not waited on forever;
- an HTTPS server trickling bytes (real aiohttp TLS server on loopback) is cut off by the minimum
  transfer rate, and one sending fast enough but never finishing by the whole-download deadline;
- in the installer's reconcile loop, a package stuck on such a server does not hold back another
  one: the other installs while the stuck one is still downloading.
Deadlines are small through settings so the tests stay quick.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from installer_fixtures import PackageServer

from edb.errors import InstallError
from edb.schemas import DesiredPackage, PackageState
from package_installer.downloader import DownloadSettings, cache_paths, fetch
from package_installer.errors import is_retryable
from package_installer.pace import TransferPace
from package_installer.pipeline import InstallDeps
from package_installer.service import InstallerService
from package_installer.settings import InstallerSettings
from package_installer.sources import PackageHosts, resolve_source

pytestmark = pytest.mark.timeout(60)

DATA = os.urandom(256 * 1024)


def desired(url: str, data: bytes = DATA, name: str = "digits") -> DesiredPackage:
    return DesiredPackage(name, "1.0.0", url, hashlib.sha256(data).hexdigest(), len(data))


def settings(tmp_path: Path, server: PackageServer | None = None, **kw: Any) -> DownloadSettings:
    return DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=kw.pop("allowed", ()),
                            ca_file=server.ca_path if server else None, read_timeout_s=5,
                            allowed_hosts=server.hosts if server else PackageHosts(), **kw)


async def get(pkg: DesiredPackage, st: DownloadSettings) -> bytes:
    fetched = await fetch(pkg, resolve_source(pkg.url, st.allowed_dirs, st.allowed_hosts), st)
    with fetched:
        return os.pread(fetched.fd, pkg.size + 1, 0)


# -- the pure rate judgement -----------------------------------------------------------------------

def test_transfer_pace_judges_each_window() -> None:
    pace = TransferPace(min_bytes_per_s=1000, window_s=10, started=0.0)
    assert not pace.too_slow(5.0, 100)  # the window has not ended yet
    assert not pace.too_slow(10.0, 9900)  # 10000 bytes in 10 s: exactly the floor
    assert not pace.too_slow(15.0, 1)
    assert pace.too_slow(20.5, 10)  # 11 bytes in the next 10.5 s
    steady = TransferPace(min_bytes_per_s=1000, window_s=1, started=0.0)
    assert not any(steady.too_slow(t / 10, 200) for t in range(1, 100))  # 2000 B/s throughout


# -- file: FIFO --------------------------------------------------------------------------------------

async def test_a_fifo_in_an_allowed_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    os.mkfifo(drop / "p.cpk")
    pkg = desired(f"file://{drop}/p.cpk")
    with pytest.raises(InstallError) as err:  # no writer ever opens it: a blocking open would hang here
        await get(pkg, settings(tmp_path, allowed=(drop,)))
    assert err.value.code == "INSTALL_PATH_OUTSIDE" and "regular file" in err.value.message
    assert not is_retryable(err.value)
    # a regular file in the same directory still opens and reads (the descriptor is blocking again)
    (drop / "q.cpk").write_bytes(DATA)
    assert await get(desired(f"file://{drop}/q.cpk"), settings(tmp_path, allowed=(drop,))) == DATA


# -- HTTPS: trickle and deadline -----------------------------------------------------------------------

async def test_a_trickling_server_is_cut_off_by_the_minimum_rate(package_server: PackageServer,
                                                                 tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    package_server.behaviours["a.cpk"] = "trickle:0.2:1"  # a byte every 0.2 s: under any read timeout
    pkg = desired(package_server.url("a.cpk"))
    st = settings(tmp_path, package_server, min_rate_bps=1000, rate_window_s=1.0, deadline_s=50)
    with pytest.raises(InstallError) as err:
        await get(pkg, st)
    assert err.value.code == "INSTALL_TIMEOUT" and "minimum rate" in err.value.message
    assert is_retryable(err.value)
    _, part = cache_paths(st.cache_dir, pkg)
    assert 0 < part.stat().st_size < len(DATA)  # kept for a resume, never more than arrived


async def test_a_download_that_never_ends_hits_the_whole_deadline(package_server: PackageServer,
                                                                  tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    package_server.behaviours["a.cpk"] = "trickle:0.05:1024"  # ~20 KiB/s: above the floor, 12 s in all
    st = settings(tmp_path, package_server, min_rate_bps=1000, rate_window_s=1.0, deadline_s=1.5)
    with pytest.raises(InstallError) as err:
        await get(desired(package_server.url("a.cpk")), st)
    assert err.value.code == "INSTALL_TIMEOUT" and "deadline" in err.value.message


async def test_a_fast_download_is_untouched_by_the_bounds(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    st = settings(tmp_path, package_server, min_rate_bps=1000, rate_window_s=0.01, deadline_s=30)
    assert await get(desired(package_server.url("a.cpk")), st) == DATA


# -- the reconcile loop: one stuck package, another installs ------------------------------------------

class Installed:
    def __init__(self, name: str, version: str, sha256: str) -> None:
        self.name, self.package_id, self.version, self.sha256 = name, name, version, sha256
        self.security_version, self.format = 1, "cpk-v2"


class Ticket:
    def __init__(self, name: str, version: str, sha256: str) -> None:
        self.package_id, self.version, self.sha256, self.name = name, version, sha256, name
        self.security_version, self.signed_manifest = 1, object()


class FakeTee:
    """The TEE's answers for an authentic package (what it verifies is tested in tests/tee)."""

    def __init__(self) -> None:
        self.installed: dict[str, Installed] = {}

    def begin_install(self, name: str, fd: int) -> Ticket:
        data = os.pread(fd, 1 << 24, 0)
        return Ticket(name, "1.0.0", hashlib.sha256(data).hexdigest())

    def get_install_evidence(self, ticket: Ticket, nonce: str) -> object:
        return object()

    def complete_install(self, ticket: Ticket, jwe: str) -> Any:
        self.installed[ticket.name] = Installed(ticket.name, ticket.version, ticket.sha256)

        class Summary:
            package = self.installed[ticket.name]
        return Summary()

    def abort_install(self, ticket: Ticket) -> None:
        pass

    def legacy_public_key(self) -> bytes:
        return b""

    def complete_install_legacy(self, ticket: Ticket, wrapped: str) -> Any:
        raise AssertionError("no v1 here")


class Release:
    def release(self, package: tuple[str, str], signed_manifest: Any, make_evidence: Any) -> str:
        make_evidence("nonce")
        return "jwe"


class ModuleClient:
    def __init__(self, desired_packages: dict[str, Any]) -> None:
        self.desired = {"packages": desired_packages}
        self.reported: dict[str, Any] = {}
        self.changed = asyncio.Event()

    async def get_twin(self) -> dict[str, Any]:
        return {"desired": self.desired, "reported": {}}

    async def patch_twin_reported_properties(self, patch: dict[str, Any]) -> None:
        for name, value in (patch.get("packages") or {}).items():
            self.reported[name] = value
        self.changed.set()

    async def send_message_to_output(self, message: Any, output: str) -> None:
        pass

    async def wait_for(self, check: Any) -> None:
        while not check():
            self.changed.clear()
            await self.changed.wait()


def state(client: ModuleClient, name: str) -> str | None:
    value = client.reported.get(name)
    return value.get("state") if isinstance(value, dict) else None


async def test_a_stuck_package_does_not_hold_back_another(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["slow.cpk"] = DATA
    package_server.behaviours["slow.cpk"] = "trickle:0.2:1"
    package_server.files["good.cpk"] = good = os.urandom(64 * 1024)
    entry = {"version": "1.0.0", "size": len(DATA), "sha256": hashlib.sha256(DATA).hexdigest()}
    client = ModuleClient({
        "slow": {**entry, "url": package_server.url("slow.cpk")},  # first in name order
        "good": {**entry, "url": package_server.url("good.cpk"), "size": len(good),
                 "sha256": hashlib.sha256(good).hexdigest()},
    })
    tee = FakeTee()
    base = InstallerSettings(tee_socket=tmp_path / "tee.sock", key_release_url="https://kr.invalid",
                             cache_dir=tmp_path / "cache", ca_file=package_server.ca_path,
                             allowed_hosts=package_server.hosts,
                             download_min_rate_bps=1000, download_rate_window_s=3.0, read_timeout_s=5)
    assert base.max_parallel == 3  # the default: a few installs at once
    service = InstallerService(client, InstallDeps(tee, Release(), base.download()), base,
                               tee_list=lambda: list(tee.installed.values()), tee_uninstall=lambda name: None)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(client.wait_for(lambda: state(client, "good") == "installed"), 30)
        assert state(client, "slow") == PackageState.DOWNLOADING.value  # still stuck, and it did not matter
        assert "slow" in service.jobs
        await asyncio.wait_for(client.wait_for(lambda: state(client, "slow") == "failed"), 30)
        assert client.reported["slow"]["error"]["code"] == "INSTALL_TIMEOUT"
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert sorted(tee.installed) == ["good"]
