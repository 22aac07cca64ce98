"""The installer's downloader against a real HTTPS server: verified TLS, resume, bounds, hostile servers."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from installer_fixtures import PackageServer

from edb.errors import InstallError
from edb.schemas import DesiredPackage
from package_installer.downloader import DownloadSettings, cache_paths, fetch
from package_installer.sources import PackageHosts, resolve_source

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


def desired(url: str, data: bytes = DATA, sha: str | None = None, size: int | None = None) -> DesiredPackage:
    return DesiredPackage("digits", "1.0.0", url, sha or hashlib.sha256(data).hexdigest(),
                          len(data) if size is None else size)


def settings(tmp_path: Path, server: PackageServer | None = None, allowed: tuple[Path, ...] = ()) -> DownloadSettings:
    # the server's host:port is the allow-list (without a server, any host: not what those tests are about)
    return DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=allowed,
                            ca_file=server.ca_path if server else None, read_timeout_s=5,
                            allowed_hosts=server.hosts if server else PackageHosts(any_host=True))


async def get(pkg: DesiredPackage, st: DownloadSettings) -> bytes:
    fetched = await fetch(pkg, resolve_source(pkg.url, st.allowed_dirs, st.allowed_hosts), st)
    with fetched:
        return os.pread(fetched.fd, pkg.size + 1, 0)


async def test_download_verifies_and_returns_an_open_descriptor(package_server: PackageServer,
                                                                tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"))
    assert await get(pkg, settings(tmp_path, package_server)) == DATA
    final, part = cache_paths(tmp_path / "cache", pkg)
    assert final.exists() and not part.exists()


async def test_untrusted_certificate_is_refused(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    with pytest.raises(InstallError) as info:
        await get(desired(package_server.url("a.cpk")), settings(tmp_path))  # system CAs only
    assert info.value.code == "INSTALL_DOWNLOAD_FAILED"


async def test_interrupted_download_resumes_with_a_range_request(package_server: PackageServer,
                                                                 tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    package_server.behaviours["a.cpk"] = "cut:1048576"
    pkg = desired(package_server.url("a.cpk"))
    st = settings(tmp_path, package_server)
    with pytest.raises(InstallError) as info:
        await get(pkg, st)
    assert info.value.code in ("INSTALL_INCOMPLETE", "INSTALL_DOWNLOAD_FAILED")
    _, part = cache_paths(st.cache_dir, pkg)
    kept = part.stat().st_size
    assert 0 < kept <= 1048576
    assert await get(pkg, st) == DATA
    assert package_server.ranges == [None, f"bytes={kept}-"]


async def test_server_ignoring_range_restarts_cleanly(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"))
    st = settings(tmp_path, package_server)
    _, part = cache_paths(st.cache_dir, pkg)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage" * 100)  # a partial file that is not a prefix
    package_server.behaviours["a.cpk"] = "norange"
    assert await get(pkg, st) == DATA


async def test_a_damaged_partial_file_costs_one_retry_from_zero(package_server: PackageServer,
                                                                  tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"))
    st = settings(tmp_path, package_server)
    _, part = cache_paths(st.cache_dir, pkg)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 4096)  # what a crash can leave: a prefix that is not the server's bytes
    with pytest.raises(InstallError) as info:
        await get(pkg, st)
    assert info.value.code == "INSTALL_INCOMPLETE" and not part.exists()  # retryable, part dropped
    assert await get(pkg, st) == DATA


async def test_hash_mismatch_is_refused_and_the_partial_file_removed(package_server: PackageServer,
                                                                     tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"), sha="00" * 32)
    st = settings(tmp_path, package_server)
    with pytest.raises(InstallError) as info:
        await get(pkg, st)
    assert info.value.code == "INSTALL_HASH_MISMATCH"
    final, part = cache_paths(st.cache_dir, pkg)
    assert not final.exists() and not part.exists()


@pytest.mark.parametrize("declared_size", [len(DATA) - 1, 1000])
async def test_more_bytes_than_declared_are_refused(package_server: PackageServer, tmp_path: Path,
                                                    declared_size: int) -> None:
    package_server.files["a.cpk"] = DATA
    with pytest.raises(InstallError) as info:
        await get(desired(package_server.url("a.cpk"), size=declared_size), settings(tmp_path, package_server))
    assert info.value.code == "INSTALL_TOO_LARGE"


async def test_redirect_to_another_host_is_refused_before_connecting(package_server: PackageServer,
                                                                     tmp_path: Path) -> None:
    package_server.files["b.cpk"] = DATA
    package_server.behaviours["a.cpk"] = "redirect:https://127.9.9.9:1/b.cpk"
    with pytest.raises(InstallError) as info:
        await get(desired(package_server.url("a.cpk")), settings(tmp_path, package_server))
    assert info.value.code == "INSTALL_REDIRECT_REFUSED"
    assert len(package_server.ranges) == 1


async def test_same_origin_redirect_is_followed(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["b.cpk"] = DATA
    package_server.behaviours["a.cpk"] = "redirect:/b.cpk"
    assert await get(desired(package_server.url("a.cpk")), settings(tmp_path, package_server)) == DATA


@pytest.mark.parametrize(("status", "code"), [(404, "INSTALL_HTTP_STATUS"), (403, "INSTALL_HTTP_STATUS"),
                                              (503, "INSTALL_DOWNLOAD_FAILED")])
async def test_http_errors_carry_codes(package_server: PackageServer, tmp_path: Path, status: int, code: str) -> None:
    package_server.behaviours["a.cpk"] = f"status:{status}"
    with pytest.raises(InstallError) as info:
        await get(desired(package_server.url("a.cpk")), settings(tmp_path, package_server))
    assert info.value.code == code


async def test_unreachable_server_is_a_retryable_download_failure(tmp_path: Path, loopback_address: str) -> None:
    with pytest.raises(InstallError) as info:
        await get(desired(f"https://{loopback_address}:9/a.cpk"), settings(tmp_path))
    assert info.value.code == "INSTALL_DOWNLOAD_FAILED"


async def test_file_source_inside_the_allowed_directory(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.cpk").write_bytes(DATA)
    st = settings(tmp_path, allowed=(drop,))
    assert await get(desired(f"file://{drop}/a.cpk"), st) == DATA
    assert (drop / "a.cpk").exists()  # nothing copied, nothing removed
    with pytest.raises(InstallError) as info:
        await get(desired(f"file://{drop}/a.cpk", sha="11" * 32), st)
    assert info.value.code == "INSTALL_HASH_MISMATCH"
    with pytest.raises(InstallError) as info:
        await get(desired(f"file://{drop}/a.cpk", size=5), st)
    assert info.value.code == "INSTALL_SIZE_MISMATCH"
    with pytest.raises(InstallError) as info:
        await get(desired(f"file://{drop}/missing.cpk"), st)
    assert info.value.code == "INSTALL_NOT_FOUND"


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
async def test_a_cache_entry_that_is_not_a_regular_file_is_removed_and_the_package_downloaded_again(
        package_server: PackageServer, tmp_path: Path, planted: str) -> None:
    """What the installer did not write is never followed (a symlink to another file), waited on
    (a FIFO would block the open forever) or an untyped error: it goes, and the package comes again."""
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"))
    st = settings(tmp_path, package_server)
    final, _ = cache_paths(st.cache_dir, pkg)
    final.parent.mkdir(parents=True)
    decoy = tmp_path / "decoy.cpk"
    decoy.write_bytes(DATA)  # the right bytes, even: a symlink is still not followed
    if planted == "symlink":
        final.symlink_to(decoy)
    elif planted == "fifo":
        os.mkfifo(final)
    else:
        (final / "inside").mkdir(parents=True)
    requests_before = len(package_server.ranges)
    assert await asyncio.wait_for(get(pkg, st), 30) == DATA
    assert len(package_server.ranges) > requests_before  # downloaded again, not served from the entry
    assert final.is_file() and not final.is_symlink() and decoy.read_bytes() == DATA
