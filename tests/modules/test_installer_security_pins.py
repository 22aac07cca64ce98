"""Installer checks that a hand-made mutation run found unpinned (issue 13 item 11): each test fails
if its check is removed or weakened. Real files, real symlinks and a real HTTPS server."""

from __future__ import annotations

import gzip
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from installer_fixtures import PackageServer

from edb.errors import InstallError
from edb.schemas import DesiredPackage
from edb_local.net import free_port
from edb_local.stack_ca import StackCA
from package_installer.downloader import DownloadSettings, cache_paths, fetch, open_local
from package_installer.sources import FileSource, HttpsSource, PackageHosts, resolve_source, same_origin

DATA = os.urandom(256 * 1024 + 7)


def hosts_of(url: str) -> PackageHosts:
    """The device's package host allow-list naming exactly the test server of ``url``."""
    parts = urlsplit(url)
    return PackageHosts.parse(f"{parts.hostname}:{parts.port or 443}")


def desired(url: str, data: bytes = DATA, size: int | None = None) -> DesiredPackage:
    return DesiredPackage("digits", "1.0.0", url, hashlib.sha256(data).hexdigest(),
                          len(data) if size is None else size)


def code(exc: pytest.ExceptionInfo[InstallError]) -> str:
    return exc.value.code


# -- file: sources --------------------------------------------------------------------------------

def test_sibling_directory_sharing_the_prefix_is_outside(tmp_path: Path) -> None:
    drop, evil = tmp_path / "drop", tmp_path / "drop-evil"
    for d in (drop, evil):
        d.mkdir()
        (d / "a.cpk").write_bytes(DATA)
    assert resolve_source(f"file://{drop}/a.cpk", (drop,), PackageHosts()) == FileSource(drop / "a.cpk")
    with pytest.raises(InstallError) as exc:
        resolve_source(f"file://{evil}/a.cpk", (drop,), PackageHosts())
    assert code(exc) == "INSTALL_PATH_OUTSIDE"
    with pytest.raises(InstallError) as exc:  # and on the opened file
        open_local(desired("file:///x"), FileSource(evil / "a.cpk"), (drop,))
    assert code(exc) == "INSTALL_PATH_OUTSIDE"


def test_opened_file_outside_the_allowed_directories_is_refused(tmp_path: Path) -> None:
    """open_local checks the opened descriptor's real path itself, whatever it was handed."""
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    outside.mkdir()
    (outside / "a.cpk").write_bytes(DATA)
    with pytest.raises(InstallError) as exc:
        open_local(desired("file:///x"), FileSource(outside / "a.cpk"), (drop,))
    assert code(exc) == "INSTALL_PATH_OUTSIDE"


async def test_parent_swapped_for_a_symlink_between_check_and_open(tmp_path: Path) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    (drop / "sub").mkdir(parents=True)
    outside.mkdir()
    (drop / "sub" / "a.cpk").write_bytes(DATA)
    (outside / "a.cpk").write_bytes(DATA)  # same bytes: only the location is wrong
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(drop,))
    pkg = desired(f"file://{drop}/sub/a.cpk")
    source = resolve_source(pkg.url, settings.allowed_dirs, settings.allowed_hosts)  # the check passes...
    (drop / "sub" / "a.cpk").unlink()
    (drop / "sub").rmdir()
    (drop / "sub").symlink_to(outside, target_is_directory=True)  # ...then the parent is swapped
    with pytest.raises(InstallError) as exc:
        await fetch(pkg, source, settings)
    assert code(exc) == "INSTALL_PATH_OUTSIDE"
    assert (outside / "a.cpk").read_bytes() == DATA  # untouched


# -- HTTPS ----------------------------------------------------------------------------------------

@pytest.fixture
async def chunked_server(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> AsyncIterator[PackageServer]:
    """Serves every file chunked (no Content-Length), in 32 KiB writes."""
    port = free_port(loopback_address)
    server = PackageServer(f"https://{loopback_address}:{port}", stack_ca.ca_path)

    async def handle(request: web.Request) -> web.StreamResponse:
        server.ranges.append(request.headers.get("Range"))
        path = request.match_info["path"]
        data = server.files[path]
        response = web.StreamResponse(status=200)
        if server.behaviours.get(path) == "gzip":
            response.headers["Content-Encoding"] = "gzip"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(data), 32 * 1024):
            await response.write(data[i:i + 32 * 1024])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    creds = stack_ca.issue_server("chunked", ips=[loopback_address], out_dir=tmp_path / "chunked-certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(creds.cert_path, creds.key_path)
    await web.TCPSite(runner, loopback_address, port, ssl_context=context).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_chunked_response_longer_than_declared(chunked_server: PackageServer, tmp_path: Path) -> None:
    chunked_server.files["a.cpk"] = DATA + os.urandom(300 * 1024)
    pkg = desired(chunked_server.url("a.cpk"))  # the twin declares len(DATA)
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=chunked_server.ca_path,
                                read_timeout_s=5)
    final, part = cache_paths(settings.cache_dir, pkg)
    sizes: list[int] = []

    def progress(have: int, total: int) -> None:
        sizes.append(part.stat().st_size)

    with pytest.raises(InstallError) as exc:
        await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings, progress)
    assert code(exc) == "INSTALL_TOO_LARGE"
    assert sizes and max(sizes) <= pkg.size  # never more on disk than declared
    assert not part.exists() and not final.exists()
    chunked_server.files["a.cpk"] = DATA  # the honest file, chunked, is fine
    fetched = await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings)
    with fetched:
        assert os.pread(fetched.fd, pkg.size + 1, 0) == DATA


async def test_cached_file_is_hashed_again_before_use(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = desired(package_server.url("a.cpk"))
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=package_server.ca_path,
                                read_timeout_s=5)
    final, _ = cache_paths(settings.cache_dir, pkg)
    final.parent.mkdir(parents=True)
    tampered = bytearray(DATA)
    tampered[len(DATA) // 2] ^= 1
    final.write_bytes(bytes(tampered))  # right size, wrong bytes, left in the cache
    with pytest.raises(InstallError) as exc:
        await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings)
    assert code(exc) == "INSTALL_HASH_MISMATCH"
    assert not final.exists()  # removed
    assert package_server.ranges == []  # decided from the cache alone
    # the next attempt downloads afresh
    fetched = await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings)
    with fetched:
        assert os.pread(fetched.fd, pkg.size + 1, 0) == DATA


async def test_content_encoding_is_never_decoded(chunked_server: PackageServer, tmp_path: Path) -> None:
    """The package is the bytes on the server: a Content-Encoding: gzip answer is stored as sent,
    not inflated (a small response must not become a large file, and the hash is over what was sent)."""
    packed = gzip.compress(bytes(4 * 1024 * 1024))  # 4 MiB of zeros in a few KiB
    chunked_server.files["z.cpk"] = packed
    chunked_server.behaviours["z.cpk"] = "gzip"
    pkg = desired(chunked_server.url("z.cpk"), data=packed)
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=chunked_server.ca_path,
                                read_timeout_s=5)
    fetched = await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings)
    with fetched:
        assert os.fstat(fetched.fd).st_size == len(packed) and os.pread(fetched.fd, len(packed) + 1, 0) == packed


@pytest.mark.parametrize(("hops", "ok"), [(3, True), (4, False)])
async def test_redirect_limit(package_server: PackageServer, tmp_path: Path, hops: int, ok: bool) -> None:
    package_server.files[f"r{hops}.cpk"] = DATA
    for i in range(hops):
        package_server.behaviours[f"r{i}.cpk"] = f"redirect:{package_server.url(f'r{i + 1}.cpk')}"
    pkg = desired(package_server.url("r0.cpk"))
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=package_server.ca_path,
                                read_timeout_s=5)
    if ok:
        with await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings) as fetched:
            assert os.pread(fetched.fd, pkg.size + 1, 0) == DATA
    else:
        with pytest.raises(InstallError) as exc:
            await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings)
        assert code(exc) == "INSTALL_REDIRECT_REFUSED"
    assert len(package_server.ranges) == min(hops, 3) + 1


async def test_resume_from_a_part_file_longer_than_one_read(package_server: PackageServer, tmp_path: Path) -> None:
    """The kept part is counted in full (several reads of the cache file), so the Range is right."""
    big = os.urandom(3 * 1024 * 1024 + 5)
    package_server.files["b.cpk"] = big
    pkg = desired(package_server.url("b.cpk"), data=big)
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=package_server.ca_path,
                                read_timeout_s=5)
    _, part = cache_paths(settings.cache_dir, pkg)
    part.parent.mkdir(parents=True)
    part.write_bytes(big[:2 * 1024 * 1024 + 3])  # more than one 1 MiB read
    with await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings) as fetched:
        assert os.pread(fetched.fd, pkg.size + 1, 0) == big
    assert package_server.ranges == [f"bytes={2 * 1024 * 1024 + 3}-"]


async def test_a_complete_part_file_is_verified_without_a_request(package_server: PackageServer,
                                                                  tmp_path: Path) -> None:
    package_server.files["c.cpk"] = DATA
    pkg = desired(package_server.url("c.cpk"))
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=package_server.ca_path,
                                read_timeout_s=5)
    final, part = cache_paths(settings.cache_dir, pkg)
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA)
    with await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings) as fetched:
        assert os.pread(fetched.fd, pkg.size + 1, 0) == DATA
    assert package_server.ranges == [] and final.exists() and not part.exists()


def test_redirect_origin_rules() -> None:
    """Only https to the same host (any case) and port; found unpinned by make mutate."""
    first = HttpsSource(url="https://store.example:8443/a.cpk", host="store.example", port=8443)
    assert same_origin(first, "https://STORE.example:8443/b.cpk").url == "https://STORE.example:8443/b.cpk"
    assert same_origin(first, "/b.cpk").url == "https://store.example:8443/b.cpk"  # relative: same origin
    assert same_origin(first, "//store.example:8443/c.cpk").host == "store.example"
    for location in ("http://store.example:8443/b.cpk", "https://other.example:8443/b.cpk",
                     "https://store.example:8444/b.cpk", "https://store.example/b.cpk", "file:///b.cpk",
                     "//other.example:8443/b.cpk", "https://:8443/b.cpk"):
        with pytest.raises(InstallError) as exc:
            same_origin(first, location)
        assert code(exc) == "INSTALL_REDIRECT_REFUSED", location
    default_port = HttpsSource(url="https://store.example/a.cpk", host="store.example", port=443)
    assert same_origin(default_port, "https://store.example/b.cpk").port == 443
    assert same_origin(default_port, "https://store.example:443/b.cpk").host == "store.example"


def test_file_url_with_nul_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError) as exc:
        resolve_source(f"file://{tmp_path}/a%00.cpk", (tmp_path,), PackageHosts())
    assert code(exc) == "INSTALL_INVALID_URL"


def test_final_component_symlink_is_not_followed(tmp_path: Path) -> None:
    """Even to a file inside the allowed directory: the path checked is the path opened."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.cpk").write_bytes(DATA)
    (drop / "link.cpk").symlink_to(drop / "a.cpk")
    with pytest.raises(InstallError) as exc:
        open_local(desired("file:///x"), FileSource(drop / "link.cpk"), (drop,))
    assert code(exc) == "INSTALL_PATH_OUTSIDE"
    with open_local(desired("file:///x"), FileSource(drop / "a.cpk"), (drop,)) as fetched:
        assert not fetched.cached and fetched.path == drop / "a.cpk"


async def test_a_good_cached_file_is_used_and_files_are_private(package_server: PackageServer,
                                                                tmp_path: Path) -> None:
    """Found unpinned by make mutate: the cache re-hash must also accept a good file (not refuse all),
    the cache directory is 0700 and downloaded files 0600, an https URL without a port means 443."""
    assert resolve_source("https://store.example/a.cpk", (), PackageHosts.parse("store.example")) == HttpsSource(
        url="https://store.example/a.cpk", host="store.example", port=443)
    package_server.files["g.cpk"] = DATA
    pkg = desired(package_server.url("g.cpk"))
    settings = DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=package_server.ca_path,
                                read_timeout_s=5)
    old_umask = os.umask(0o022)
    try:
        with await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings) as fetched:
            assert fetched.cached
    finally:
        os.umask(old_umask)
    final, _ = cache_paths(settings.cache_dir, pkg)
    assert final.parent.stat().st_mode & 0o777 == 0o700 and final.stat().st_mode & 0o777 == 0o600
    requests = len(package_server.ranges)
    # from the cache, re-hashed
    with await fetch(pkg, resolve_source(pkg.url, (), hosts_of(pkg.url)), settings) as fetched:
        assert os.pread(fetched.fd, pkg.size + 1, 0) == DATA
    assert len(package_server.ranges) == requests  # no new request
