"""A twin writer cannot use the installer to probe the device's network (issue 13, item 6).

- HTTPS package sources must be on the ``EDB_PACKAGE_HOSTS`` allow-list, checked before any
  connection; the list is fail-closed (unset: no HTTPS source at all; ``*`` is explicit);
- what the remote answered (status codes, byte counts, exception types, redirect targets) stays in
  the module log; the reported error (what a twin reader sees) carries only the code and a fixed
  message. Against a real HTTPS server on loopback.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from installer_fixtures import PackageServer

from edb.errors import ConfigError, InstallError
from edb.schemas import DesiredPackage, ErrorInfo, PackageState
from package_installer.downloader import DownloadSettings
from package_installer.errors import is_retryable
from package_installer.pipeline import InstallDeps, run_install
from package_installer.settings import InstallerSettings
from package_installer.sources import PackageHosts, resolve_source

pytestmark = pytest.mark.timeout(60)
DATA = os.urandom(200_000)
BASE_ENV = {"EDB_TEE_SOCKET": "/run/tee.sock", "EDB_KEY_RELEASE_URL": "https://kr.example"}


def test_allow_list_parsing_and_matching() -> None:
    hosts = PackageHosts.parse(" Store.blob.core.windows.net, 127.0.0.5:10000 edge-cache:8443 ")
    assert hosts.allows("store.blob.core.windows.net", 443) and hosts.allows("STORE.blob.core.windows.net", 8080)
    assert hosts.allows("127.0.0.5", 10000) and not hosts.allows("127.0.0.5", 10001)
    assert hosts.allows("edge-cache", 8443) and not hosts.allows("edge-cache", 443)
    assert not hosts.allows("blob.core.windows.net", 443) and not hosts.allows("evil.store.blob.core.windows.net", 443)
    assert not PackageHosts.parse("").allows("anything", 443)
    assert PackageHosts.parse("*").allows("anything", 1)
    for bad in ("http://host", "host:0", "host:99999", "host:x", "-host", "a b/c", "*,host", "[::1]:443"):
        with pytest.raises(ConfigError) as err:
            PackageHosts.parse(bad)
        assert err.value.code == "CONFIG_INVALID"


def test_settings_are_fail_closed_when_unset() -> None:
    unset = InstallerSettings.from_env(BASE_ENV)
    assert unset.allowed_hosts == PackageHosts() and unset.download().allowed_hosts == PackageHosts()
    with pytest.raises(InstallError) as err:
        resolve_source("https://store.blob.core.windows.net/packages/a.cpk", (), unset.allowed_hosts)
    assert err.value.code == "INSTALL_HOST_NOT_ALLOWED" and not is_retryable(err.value)
    named = InstallerSettings.from_env({**BASE_ENV, "EDB_PACKAGE_HOSTS": "store.blob.core.windows.net"})
    assert resolve_source("https://store.blob.core.windows.net/packages/a.cpk", (), named.download().allowed_hosts)


class NoTee:
    def begin_install(self, *a: object) -> object:
        raise AssertionError("nothing reaches the TEE")


class NoRelease:
    def release(self, *a: object) -> str:
        raise AssertionError("no key is asked for")


async def reported_error(package: DesiredPackage, download: DownloadSettings) -> ErrorInfo:
    """What the installer would write to the twin for this attempt (ErrorInfo of the exception)."""
    states: list[PackageState] = []

    async def on_state(state: PackageState, svn: int | None) -> None:
        states.append(state)

    with pytest.raises(InstallError) as err:
        await run_install(package, InstallDeps(NoTee(), NoRelease(), download), on_state)  # type: ignore[arg-type]
    return ErrorInfo.from_exception(err.value)


def settings(tmp_path: Path, server: PackageServer, hosts: PackageHosts) -> DownloadSettings:
    return DownloadSettings(cache_dir=tmp_path / "cache", allowed_dirs=(), ca_file=server.ca_path,
                            read_timeout_s=5, allowed_hosts=hosts)


async def test_a_host_off_the_list_is_never_contacted(package_server: PackageServer, tmp_path: Path) -> None:
    package_server.files["a.cpk"] = DATA
    pkg = DesiredPackage("digits", "1.0.0", package_server.url("a.cpk"), hashlib.sha256(DATA).hexdigest(), len(DATA))
    other = PackageHosts.parse("store.blob.core.windows.net")
    for hosts in (PackageHosts(), other):
        error = await reported_error(pkg, settings(tmp_path, package_server, hosts))
        assert error.code == "INSTALL_HOST_NOT_ALLOWED"
    assert package_server.ranges == []  # no request ever reached the server
    error = await reported_error(DesiredPackage("digits", "1.0.0", package_server.url("a.cpk").replace(
        package_server.base_url.rsplit(":", 1)[1], "1"), pkg.sha256, pkg.size), settings(tmp_path, package_server,
                                                                                           package_server.hosts))
    assert error.code == "INSTALL_HOST_NOT_ALLOWED"  # the allowed address on another port: no


@pytest.mark.parametrize(("behaviour", "code", "secret"), [
    ("status:404", "INSTALL_HTTP_STATUS", "404"), ("status:418", "INSTALL_HTTP_STATUS", "418"),
    ("status:503", "INSTALL_DOWNLOAD_FAILED", "503"), ("extra:777", "INSTALL_TOO_LARGE", str(200_777)),
    ("cut:123457", None, "123457"), ("redirect:https://10.11.12.13:8443/x", "INSTALL_REDIRECT_REFUSED", "10.11.12.13"),
])
async def test_remote_details_stay_in_the_module_log(package_server: PackageServer, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture, behaviour: str,
                                                     code: str | None, secret: str) -> None:
    package_server.files["a.cpk"] = DATA
    package_server.behaviours["a.cpk"] = behaviour
    pkg = DesiredPackage("digits", "1.0.0", package_server.url("a.cpk"), hashlib.sha256(DATA).hexdigest(), len(DATA))
    with caplog.at_level(logging.WARNING, logger="package_installer"):
        error = await reported_error(pkg, settings(tmp_path, package_server, package_server.hosts))
    if code is not None:
        assert error.code == code
    else:  # a connection cut mid-body: either the transport error or the short body, both retryable
        assert error.code in ("INSTALL_INCOMPLETE", "INSTALL_DOWNLOAD_FAILED")
    assert secret not in error.message and secret not in error.to_json().__repr__()
    assert not any(ch.isdigit() for ch in error.message)  # no status, size or address of any kind
    assert secret in caplog.text  # ... the operator still sees it in the module log


def test_deployments_allow_the_storage_packages_are_published_to(tmp_path: Path) -> None:
    from edb_cloud.config import CloudConfig, blob_host
    from edb_local.azurite import blob_connection_string

    azure = "DefaultEndpointsProtocol=https;AccountName=Contoso;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    assert blob_host(azure) == "contoso.blob.core.windows.net"
    assert blob_host(blob_connection_string("127.1.2.3", 10000)) == "127.1.2.3:10000"  # the local stack's Azurite
    assert blob_host("") == ""
    env = CloudConfig.load(tmp_path, environ={"EDB_BLOB_CONNECTION_STRING": azure}).template_env()
    assert PackageHosts.parse(env["EDB_PACKAGE_HOSTS"]).allows("contoso.blob.core.windows.net", 443)
    explicit = CloudConfig.load(tmp_path, environ={"EDB_BLOB_CONNECTION_STRING": azure,
                                                   "EDB_PACKAGE_HOSTS": "cdn.example:8443"}).template_env()
    assert explicit["EDB_PACKAGE_HOSTS"] == "cdn.example:8443"
    assert CloudConfig.load(tmp_path, environ={}).template_env()["EDB_PACKAGE_HOSTS"] == ""  # fail closed
