"""Fetch a package into the cache (HTTPS) or open it in place (``file:``), bounded and hash-checked.

HTTPS: verified TLS (the system trust store, or ``EDB_CA_CERT``: never unverified), redirects
followed by hand and only to the same origin, ``Range`` resume of a partial download kept in the
cache, connect/read timeouts, a whole-download deadline and a minimum transfer rate (a server
trickling bytes is cut off with ``INSTALL_TIMEOUT``: :mod:`.pace`), a hard ceiling at the declared
size (a server sending more is cut off with ``INSTALL_TOO_LARGE``), SHA-256 over every byte. A
hash mismatch deletes the partial file (the bytes are wrong: resuming them would be pointless); a
network failure keeps it.
``file:``: opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO planted in an allowed directory would
block a plain open forever), checked again on the opened descriptor (regular file, real
path inside an allowed directory), size and hash checked; nothing is copied.

The result is an open file descriptor of ciphertext; the TEE reads it (SCM_RIGHTS), the installer
never decrypts anything.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from edb.errors import InstallError
from edb.schemas import DesiredPackage
from package_installer.errors import DownloadError
from package_installer.pace import TransferPace
from package_installer.sources import FileSource, HttpsSource, PackageHosts, Source, is_inside, same_origin

log = logging.getLogger("package_installer.downloader")

CHUNK = 1 << 20
MAX_REDIRECTS = 3
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DownloadSettings:
    cache_dir: Path
    allowed_dirs: tuple[Path, ...]
    ca_file: Path | None = None
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    deadline_s: float = 3600.0  # the whole download, redirects and resume included
    min_rate_bps: float = 16384.0  # bytes per second, judged over each rate window
    rate_window_s: float = 30.0
    allowed_hosts: PackageHosts = field(default_factory=PackageHosts)  # empty: no HTTPS source at all (fail closed)


@dataclass
class FetchedPackage:
    """An open, verified package file. Close it (or use ``with``) when the TEE has read it."""

    fd: int
    path: Path
    cached: bool  # True: a cache file this installer owns (removed after a successful install)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        if self.cached:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FetchedPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def cache_paths(cache_dir: Path, package: DesiredPackage) -> tuple[Path, Path]:
    """``<cache>/<name>/<sha256>.cpk`` and its ``.part``: names come from validated fields only."""
    folder = cache_dir / package.name
    return folder / f"{package.sha256}.cpk", folder / f"{package.sha256}.part"


async def fetch(package: DesiredPackage, source: Source, settings: DownloadSettings,
                progress: Progress | None = None) -> FetchedPackage:
    if isinstance(source, FileSource):
        return await asyncio.to_thread(open_local, package, source, settings.allowed_dirs)
    return await download(package, source, settings, progress)


def open_local(package: DesiredPackage, source: FileSource, allowed_dirs: tuple[Path, ...]) -> FetchedPackage:
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever
        fd = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InstallError("the file: package does not exist", code="INSTALL_NOT_FOUND") from None
    except OSError as exc:
        raise InstallError(f"cannot open the file: package ({exc.strerror})", code="INSTALL_PATH_OUTSIDE") from None
    fetched = FetchedPackage(fd, source.path, cached=False)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InstallError("the file: package is not a regular file", code="INSTALL_PATH_OUTSIDE")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # a regular file: plain reads
        real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if not is_inside(real, allowed_dirs):
            raise InstallError("the opened file lies outside the allowed directories", code="INSTALL_PATH_OUTSIDE")
        if info.st_size != package.size:
            raise InstallError(f"file is {info.st_size} bytes, the twin declares {package.size}",
                               code="INSTALL_SIZE_MISMATCH")
        _check_hash(_hash_fd(fd), package)
        return fetched
    except BaseException:
        fetched.close()
        raise


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _check_hash(actual: str, package: DesiredPackage) -> None:
    if actual != package.sha256:
        raise InstallError("downloaded bytes do not match the declared sha256", code="INSTALL_HASH_MISMATCH")


async def download(package: DesiredPackage, source: HttpsSource, settings: DownloadSettings,
                   progress: Progress | None = None) -> FetchedPackage:
    final, part = cache_paths(settings.cache_dir, package)
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = _open_cached(final)
    fresh = fd is None
    if fd is None:
        await _download_to(part, package, source, settings, progress)  # hashed while it arrived
        os.replace(part, final)
        fd = _open_cached(final)
        if fd is None:  # replaced by something else between the rename and the open
            raise InstallError("the package cache entry changed while it was written", code="INSTALL_CACHE_INVALID")
    fetched = FetchedPackage(fd, final, cached=True)
    try:
        if os.fstat(fd).st_size != package.size:
            raise InstallError("cached package has the wrong size", code="INSTALL_SIZE_MISMATCH")
        if not fresh:  # left by an earlier run: check it again before using it
            _check_hash(await asyncio.to_thread(_hash_fd, fd), package)
    except InstallError:
        fetched.discard()
        raise
    return fetched


def _open_cached(final: Path) -> int | None:
    """A descriptor of the regular file ``final``, or None when there is none to use. A cache entry
    that is not a regular file (a symlink: ``O_NOFOLLOW`` refuses it; a FIFO, which ``O_NONBLOCK``
    keeps from blocking the open; a directory) was not written by the installer: it is removed so
    the package is downloaded again, rather than followed, waited on or failing untyped."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP (a symlink), EISDIR, EACCES...
        log.warning("package cache entry %s is not a regular file (%s): downloading again", final.name,
                    exc.strerror)
        _remove_entry(final)
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        log.warning("package cache entry %s is not a regular file: downloading again", final.name)
        _remove_entry(final)
        return None
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _remove_entry(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise InstallError(f"cannot remove the package cache entry ({exc.strerror})",
                           code="INSTALL_CACHE_INVALID") from None


@dataclass
class _Partial:
    """The bytes of ``path`` received so far and their running hash."""

    path: Path
    have: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.have = 0
        self.digest = hashlib.sha256()


async def _download_to(part: Path, package: DesiredPackage, source: HttpsSource, settings: DownloadSettings,
                       progress: Progress | None) -> None:
    partial = _Partial(part)
    # No fsync of the partial file: a resume that builds on bytes a crash lost fails the hash and
    # starts over once (below), which is cheaper than syncing every download to disk.
    if part.exists():
        with part.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                partial.digest.update(chunk)
                partial.have += len(chunk)
        if partial.have > package.size:
            partial.restart()
    resumed = partial.have > 0
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.read_timeout_s)
    connector = aiohttp.TCPConnector(ssl=ssl_context(settings.ca_file))
    whole = asyncio.timeout(settings.deadline_s)
    try:
        async with whole, aiohttp.ClientSession(timeout=timeout, connector=connector,
                                                auto_decompress=False) as session:
            if partial.have < package.size:
                pace = TransferPace(settings.min_rate_bps, settings.rate_window_s, time.monotonic())
                await _get(session, source, partial, package, progress, pace)
    except TimeoutError:  # the whole-download deadline, or aiohttp's connect/read timeouts
        raise DownloadError("download took longer than its deadline" if whole.expired() else "download timed out",
                            code="INSTALL_TIMEOUT") from None
    except DownloadError:
        raise
    except InstallError:
        partial.restart()  # hostile or wrong: nothing of it is worth resuming
        raise
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("download of %s failed after %d bytes: %s", package.name, partial.have,  # the detail stays here
                    type(exc).__name__)
        raise DownloadError("download failed", code="INSTALL_DOWNLOAD_FAILED") from None
    if partial.have != package.size:
        log.warning("download of %s: the server closed after %d of %d bytes", package.name, partial.have, package.size)
        raise DownloadError("the server closed before the declared size arrived", code="INSTALL_INCOMPLETE")
    if partial.digest.hexdigest() != package.sha256:
        partial.restart()
        if resumed:  # perhaps the kept part was damaged (a crash, a changed blob): once more from zero
            raise DownloadError("a resumed download did not verify; starting over", code="INSTALL_INCOMPLETE")
        raise InstallError("downloaded bytes do not match the declared sha256", code="INSTALL_HASH_MISMATCH")


async def _get(session: aiohttp.ClientSession, source: HttpsSource, partial: _Partial, package: DesiredPackage,
               progress: Progress | None, pace: TransferPace) -> None:
    url = source.url
    for _ in range(MAX_REDIRECTS + 1):
        headers = {"Range": f"bytes={partial.have}-"} if partial.have else {}
        async with session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status in (301, 302, 303, 307, 308):
                url = same_origin(source, response.headers.get("Location", "")).url
                continue
            if response.status == 416 and partial.have:
                partial.restart()  # our partial file does not fit what the server has
                raise DownloadError("range not satisfiable; restarting the download", code="INSTALL_INCOMPLETE")
            # Status codes and sizes are the remote's answers: they go to the module log only, so a
            # reported error tells a twin reader nothing about what the device can reach.
            if response.status >= 500 or response.status in (408, 429):
                log.warning("download of %s: the server answered %d", package.name, response.status)
                raise DownloadError("the package server failed", code="INSTALL_DOWNLOAD_FAILED")
            if response.status not in (200, 206):
                log.warning("download of %s: the server answered %d", package.name, response.status)
                raise InstallError("the package server refused the download", code="INSTALL_HTTP_STATUS")
            if response.status == 200 and partial.have:
                partial.restart()  # the server ignored our Range: start from zero
            declared = response.content_length
            if declared is not None and partial.have + declared > package.size:
                log.warning("download of %s: the server offers %d bytes, the twin declares %d", package.name,
                            partial.have + declared, package.size)
                raise InstallError("the server offers more than the declared size", code="INSTALL_TOO_LARGE")
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if partial.have else os.O_TRUNC)
            with os.fdopen(os.open(partial.path, flags, 0o600), "ab" if partial.have else "wb") as fh:
                async for chunk in response.content.iter_chunked(CHUNK):
                    if partial.have + len(chunk) > package.size:
                        raise InstallError("server sent more than the declared size", code="INSTALL_TOO_LARGE")
                    fh.write(chunk)
                    partial.digest.update(chunk)
                    partial.have += len(chunk)
                    if pace.too_slow(time.monotonic(), len(chunk)):  # the part so far is kept for a resume
                        raise DownloadError("transfer slower than the minimum rate", code="INSTALL_TIMEOUT")
                    if progress is not None:
                        progress(partial.have, package.size)
            return
    raise InstallError("too many redirects", code="INSTALL_REDIRECT_REFUSED")
