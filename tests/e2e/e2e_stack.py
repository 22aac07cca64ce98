"""A whole local stack for one end-to-end test: real processes, real SDKs, real protocols.

Each test gets its own stack (its own state directory and loopback address), so tests can run in
parallel and in any order. The trained ONNX model is shared per session (training is the slow part).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edb.schemas import PackageState, ReportedPackage
from edb_cloud.config import CloudConfig
from edb_cloud.demo_checks import Upstream
from edb_cloud.iothub import HubService
from edb_cloud.releases import Release
from edb_local.net import free_loopback_address, free_port
from edb_local.stack_ca import StackCA

DEVICE = "edge-device-1"
NAME = "digits"
INSTALLER = "package_installer"
RUNNER = "inference_runner"


def edb(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edb.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, poll: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(poll)


@dataclass
class E2EStack:
    state_dir: Path
    config: CloudConfig = field(init=False)
    hub: HubService = field(init=False)
    releases: dict[str, Release] = field(default_factory=dict)
    _feed: Any = None
    _since: int = 0
    events: list[Upstream] = field(default_factory=list)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, model: Path, versions: tuple[tuple[str, int], ...], *,
              installer_env: dict[str, str] | None = None, legacy_v1: bool = False) -> None:
        from edb.pki.devpki import init_publisher_pki

        init_publisher_pki(self.state_dir / "pki")  # before provisioning, so the device pins it
        self.up(legacy_v1=legacy_v1)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EDB_")}
        self.config = CloudConfig.load(self.state_dir, environ=environ)
        self.hub = HubService(self.config.iothub_connection_string, self.config.ca_cert)
        from edb_local.hub.client import ServiceClient, resolve_settings

        self._feed = ServiceClient(resolve_settings(self.config.iothub_connection_string, str(self.config.ca_cert),
                                                    environ={}, env_file={}))
        from edb_cloud.publisher import init_publisher

        init_publisher(self.config)
        for version, svn in versions:
            self.build_and_publish(model, version, svn)
        self.deploy(installer_env=installer_env)

    def up(self, *, legacy_v1: bool = False) -> None:
        flags = ("--legacy-v1",) if legacy_v1 else ()
        out = edb("local", "up", "--state-dir", str(self.state_dir), "--json", *flags, timeout=240)
        assert out.returncode == 0, f"edb local up failed: {out.stdout[-2000:]} {out.stderr[-2000:]}"

    def down(self) -> None:
        edb("local", "down", "--state-dir", str(self.state_dir), "--json", timeout=120)

    def build_and_publish(self, model: Path, version: str, svn: int) -> Release:
        from edb.schemas.common import iso_utc
        from edb_cloud.blob import publish_blob
        from edb_cloud.packaging import build_package
        from edb_cloud.publisher import ensure_release_policy, release_pins

        path = self.state_dir / "cloud" / "packages" / f"{NAME}-{version}.cpk"
        build_package(self.config, model, path, package_id=NAME, version=version, security_version=svn,
                      devices=[DEVICE], device_classes=[])
        ensure_release_policy(self.config, NAME, devices=[DEVICE], device_classes=[], min_security_version=svn,
                              pins=release_pins(self.config))  # the local TEE's measurement
        up = publish_blob(path, name=NAME, version=version, connection_string=self.config.blob_connection_string,
                          container=self.config.blob_container, connection_verify=self.config.connection_verify())
        release = Release(NAME, NAME, version, svn, up.url, up.sha256, up.size, up.blob, iso_utc())
        self.releases[version] = release
        return release

    def manifest(self, installer_env: dict[str, str] | None = None) -> dict[str, Any]:
        from edb_cloud.deploy import default_template, render_manifest

        manifest = render_manifest(self.config, default_template(), "amd64")
        modules = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
        env = modules[INSTALLER].setdefault("env", {})
        # the stack's Azurite (from the template) and the address of the suite's own file servers
        hosts = f"{env['EDB_PACKAGE_HOSTS']['value']},{FILE_SERVER_ADDRESS}"
        for key, value in {"EDB_BACKOFF_BASE_S": "0.5", "EDB_BACKOFF_CAP_S": "2", "EDB_RESYNC_INTERVAL_S": "10",
                           "EDB_PACKAGE_HOSTS": hosts, **(installer_env or {})}.items():
            env[key] = {"value": value}
        manifest["modulesContent"]["telemetry_reporter"]["properties.desired"]["metricsIntervalSeconds"] = 1
        manifest["modulesContent"]["simulated_sensor"]["properties.desired"]["intervalMs"] = 100
        # the runner's counters every 5 s (its minimum; 60 s by default): tests wait on them
        manifest["modulesContent"]["inference_runner"]["properties.desired"]["stats"] = {"reportIntervalSeconds": 5}
        return manifest

    def deploy(self, manifest: dict[str, Any] | None = None, *, installer_env: dict[str, str] | None = None,
               running: tuple[str, ...] = (INSTALLER, RUNNER, "telemetry_reporter", "simulated_sensor")) -> None:
        from edb_cloud.deploy import deploy_to_device

        deploy_to_device(self.hub, DEVICE, manifest or self.manifest(installer_env))

        def applied() -> bool:
            reported = self.hub.module_twin(DEVICE, "$edgeAgent").reported
            modules = reported.get("modules") or {}
            return (reported.get("lastDesiredStatus") or {}).get("code") == 200 and all(
                (modules.get(m) or {}).get("runtimeStatus") == "running" for m in running)

        wait_for("the deployment to be running", applied, 60)

    # -- processes ---------------------------------------------------------------------------------
    def pid(self, name: str) -> int | None:
        """``hub``, ``keyrelease``... or ``module.<id>``."""
        try:
            return int((self.state_dir / "run" / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.pid(name)
        assert pid is not None, f"no pid for {name}"
        os.kill(pid, sig)
        wait_for(f"{name} ({pid}) to exit", lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 15)
        return pid

    # -- twins -------------------------------------------------------------------------------------
    def rollout(self, release: Release) -> None:
        self.hub.patch_module_desired(DEVICE, INSTALLER, {"packages": {release.name: release.desired().to_twin()}})

    def reported_package(self, name: str = NAME) -> ReportedPackage | None:
        reported = self.hub.module_twin(DEVICE, INSTALLER).reported
        return ReportedPackage.from_twin((reported.get("packages") or {}).get(name))

    def wait_state(self, version: str, state: PackageState, name: str = NAME, timeout: float = 60.0,
                   code: str | None = None, poll: float = 0.3) -> ReportedPackage:
        def check() -> ReportedPackage | None:
            r = self.reported_package(name)
            if r is None or r.version != version or r.state is not state:
                return None
            if code is not None and (r.error is None or r.error.code != code):
                return None
            return r

        result: ReportedPackage = wait_for(f"{name} {version} {state.value} {code or ''}", check, timeout, poll)
        return result

    def serving(self) -> str | None:
        model = self.hub.module_twin(DEVICE, RUNNER).reported.get("model") or {}
        return model.get("version") if model.get("state") == "serving" else None

    def wait_serving(self, version: str, timeout: float = 60.0) -> None:
        wait_for(f"the runner serving {version}", lambda: self.serving() == version, timeout)

    def tee_installed(self) -> list[Any]:
        from edb.tee.client import TeeClient

        with TeeClient(self.config.require("EDB_TEE_SOCKET", "TEE socket")) as tee:
            return tee.list_installed()

    def upstream(self) -> list[Upstream]:
        page = self._feed.messages(since=self._since, limit=1000)
        self.events.extend(Upstream.from_monitor(item) for item in page.events)
        self._since = page.next
        return self.events


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


# -- a small HTTPS file server for hostile and slow sources --------------------------------------------

#: Where the file servers listen (any port): on the installer's list of package hosts (EDB_PACKAGE_HOSTS).
FILE_SERVER_ADDRESS = free_loopback_address()

@dataclass
class FileServer:
    base_url: str
    files: dict[str, bytes]
    redirects: dict[str, str]
    ranges: list[str | None]
    bytes_per_second: int | None = None
    _server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"


@contextlib.contextmanager
def file_server(ca: StackCA, work_dir: Path, *, bytes_per_second: int | None = None) -> Iterator[FileServer]:
    """HTTPS with a stack-CA certificate on the suite's file-server address; Range support; optional throttle."""
    address = FILE_SERVER_ADDRESS
    port = free_port(address)
    state = FileServer(f"https://{address}:{port}", {}, {}, [], bytes_per_second)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.lstrip("/").split("?")[0]
            state.ranges.append(self.headers.get("Range"))
            if path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = state.files.get(path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            header = self.headers.get("Range")
            if header and header.startswith("bytes="):
                start = int(header[len("bytes="):].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            chunk = min(64 * 1024, max(1024, (state.bytes_per_second or 1 << 30) // 8))
            try:
                for offset in range(start, len(data), chunk):
                    self.wfile.write(data[offset:offset + chunk])
                    if state.bytes_per_second:
                        time.sleep(chunk / state.bytes_per_second)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass

    creds = ca.issue_server("e2e-files", ips=[address], out_dir=work_dir)
    server = ThreadingHTTPServer((address, port), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(creds.cert_path, creds.key_path)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
