"""``python -m edb_local.fleet.device_host FLEET_JSON FIRST COUNT [METRICS_JSONL]``: one process hosting the module
loops of several simulated edge devices on one asyncio loop.

Each device runs the real module code, unchanged: :class:`package_installer.service.InstallerService`
(reconcile, download, key release with attestation evidence from *its* TEE, install), the
:class:`inference_runner.service.RunnerService` (load, serve, report) and the
:class:`telemetry_reporter.service.ReporterService`, each on its own ``azure-iot-device`` module
client with the module's own identity. What differs from a real device, and only this:
- the modules connect with their module SAS keys (IoT Edge's EdgeHubConnectionString form) instead
  of signing through an edge agent's workload API (there is no agent per simulated device);
- frames are handed to the runner's input handler in-process (there is no sensor module): one frame
  every ``frame_interval_s``, from the sensor's own frame source;
- faults are injected at the TEE client boundary (a load that fails for one version, a slow TEE);
- each device calls the key release service from its own loopback source address (127.254.x.y), as
  devices on their own networks would, so per-address limits see devices, not this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from edb_local.fleet.spec import FleetSpec, SimDevice

log = logging.getLogger("edb_fleet.device")
INSTALLER, RUNNER, REPORTER = "package_installer", "inference_runner", "telemetry_reporter"


class FaultyTee:
    """The device's TEE client with the device's injected faults (everything else passes through)."""

    def __init__(self, tee: Any, device: SimDevice) -> None:
        self._tee = tee
        self._faults = device.faults

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._tee, name)
        if self._faults.slow_s and name in ("get_install_evidence", "infer"):
            def slow(*args: Any, **kwargs: Any) -> Any:
                time.sleep(self._faults.slow_s)
                return value(*args, **kwargs)
            return slow
        return value

    def load_model(self, name: str, **kwargs: Any) -> Any:
        wanted = self._faults.fail_load
        if wanted:
            versions = {str(p.version) for p in self._tee.list_installed() if getattr(p, "name", None) == name}
            if wanted == "*" or wanted in versions:
                from edb.tee.errors import error_from_wire

                raise error_from_wire("TEE_MODEL_INVALID", f"fault injected: {name} {wanted} does not load here")
        return self._tee.load_model(name, **kwargs)


class TimedKeyRelease:
    """The device's key release client, timing each whole release (nonce, evidence, release, retries
    inside one install attempt) into a JSON-lines file for the benchmark; the key never leaves it."""

    def __init__(self, client: Any, device_id: str, metrics: Path | None) -> None:
        self._client, self._device, self._metrics = client, device_id, metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        started, wall = time.perf_counter(), time.time()
        outcome = "released"
        try:
            return self._client.release(*args, **kwargs)
        except Exception as exc:
            outcome = str(getattr(exc, "code", type(exc).__name__))
            raise
        finally:
            if self._metrics is not None:
                line = json.dumps({"device": self._device, "start": round(wall, 3), "outcome": outcome,
                                   "ms": round((time.perf_counter() - started) * 1000, 2)})
                with open(self._metrics, "a") as out:
                    out.write(line + "\n")


def device_source_address(index: int) -> str:
    """Each simulated device's own loopback source address (127.254.x.y), so services that limit per
    client address (the key release service's nonce bucket) see N devices, not one host. Linux
    routes all of 127/8 to loopback; nothing listens here."""
    return f"127.254.{index // 250}.{index % 250 + 1}"


def source_bound_session(address: str) -> Any:
    import requests
    from requests.adapters import HTTPAdapter

    class SourceAddressAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["source_address"] = (address, 0)
            super().init_poolmanager(*args, **kwargs)

    session = requests.Session()
    session.mount("https://", SourceAddressAdapter())
    return session


async def run_device(spec: FleetSpec, device: SimDevice, stop: asyncio.Event, metrics: Path | None = None) -> None:
    if device.faults.offline:
        await stop.wait()
        return
    from azure.iot.device import Message
    from azure.iot.device.aio import IoTHubModuleClient

    from edb.keyrelease.client import KeyReleaseClient, RetryPolicy
    from edb.module_runtime import ModuleRuntime
    from edb.schemas import CONTENT_ENCODING_UTF8, MessageType, application_properties
    from edb.tee.client import TeeClient
    from edb_tee.paths import DeviceLayout
    from inference_runner.service import RunnerService
    from package_installer.pipeline import InstallDeps
    from package_installer.service import InstallerService
    from package_installer.settings import InstallerSettings
    from package_installer.sources import PackageHosts
    from simulated_sensor.frames import FrameSource, SensorSettings
    from telemetry_reporter.service import ReporterService
    from telemetry_reporter.store import ReporterStore

    loop = asyncio.get_running_loop()
    ca_pem = Path(spec.ca_cert).read_text()
    device_dir = Path(device.device_dir)
    socket_path = DeviceLayout(device_dir).socket
    clients = {m: IoTHubModuleClient.create_from_connection_string(spec.connection_string(device, m),
                                                                   server_verification_cert=ca_pem)
               for m in (INSTALLER, RUNNER, REPORTER)}
    settings = InstallerSettings(tee_socket=socket_path, key_release_url=spec.key_release_url,
                                 cache_dir=device_dir / "cache", ca_file=Path(spec.ca_cert),
                                 backoff_base_s=1.0, backoff_cap_s=30.0, resync_interval_s=30.0,
                                 allowed_hosts=PackageHosts.parse(spec.package_hosts))
    with TeeClient(socket_path) as installer_tee, TeeClient(socket_path) as runner_tee, \
            contextlib.closing(ReporterStore(device_dir / "reporter.db")) as store:
        tee_i, tee_r = FaultyTee(installer_tee, device), FaultyTee(runner_tee, device)
        key_release = TimedKeyRelease(
            KeyReleaseClient(spec.key_release_url, ca_bundle=spec.ca_cert,
                             retry=RetryPolicy(max_attempts=settings.key_release_attempts, deadline_s=60.0),
                             session=source_bound_session(device_source_address(spec.devices.index(device)))),
            device.device_id, metrics)
        download = settings.download()  # the installer's own limits and package host allow-list
        installer_rt, runner_rt, reporter_rt = (ModuleRuntime(clients[m], loop) for m in (INSTALLER, RUNNER, REPORTER))
        installer = InstallerService(installer_rt.client, InstallDeps(tee_i, key_release, download, None), settings,
                                     tee_list=tee_i.list_installed, tee_uninstall=tee_i.uninstall)
        runner = RunnerService(runner_rt.client, tee_r, check_interval_s=10.0)
        reporter = ReporterService(reporter_rt.client, store)

        async def installer_state() -> None:
            installer.on_connection_state_change()

        background: set[asyncio.Task[None]] = set()

        async def runner_state() -> None:
            if runner_rt.client.connected:
                task = asyncio.create_task(runner.load_twin())
                background.add(task)
                task.add_done_callback(background.discard)

        installer_rt.on_desired_patch(installer.on_desired_patch)
        installer_rt.on_method(installer.handle_method)
        installer_rt.on_connection_state_change(installer_state)
        runner_rt.on_message(runner.on_message)
        runner_rt.on_desired_patch(runner.on_desired_patch)
        runner_rt.on_method(runner.handle_method)
        runner_rt.on_connection_state_change(runner_state)
        reporter_rt.on_message(reporter.on_message)
        reporter_rt.on_desired_patch(reporter.on_desired_patch)
        reporter_rt.on_method(reporter.handle_method)

        async def frames() -> None:
            source, sensor = FrameSource(), SensorSettings()
            sequence = 0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=spec.frame_interval_s)
                frame = source.next(sensor)
                sequence += 1
                message = Message(frame.data, message_id=f"{device.device_id}-frame-{sequence}",  # type: ignore[no-untyped-call]
                                  content_encoding=CONTENT_ENCODING_UTF8, content_type=frame.content_type)
                message.custom_properties = application_properties(MessageType.FRAME, label=str(frame.label))
                message.input_name = "frames"
                with contextlib.suppress(Exception):
                    await runner.on_message(message)

        for client in clients.values():
            await client.connect()
        try:
            await asyncio.gather(installer.run(stop), runner.run(stop), reporter.run(stop), frames())
        finally:
            for client in clients.values():
                with contextlib.suppress(Exception):
                    await client.shutdown()


async def run_host(spec: FleetSpec, devices: list[SimDevice], metrics: Path | None = None) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def supervised(device: SimDevice) -> None:
        # a device whose loop dies comes back after a pause, as an edge agent restarts a module
        while not stop.is_set():
            try:
                await run_device(spec, device, stop, metrics)
            except Exception as exc:  # logged by type; the device restarts
                log.warning("%s: device loop ended (%s: %s); restarting in 2 s", device.device_id,
                            type(exc).__name__, str(exc)[:200])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)

    tasks = []
    for index, device in enumerate(devices):
        tasks.append(asyncio.create_task(supervised(device)))
        if index % 10 == 9:
            await asyncio.sleep(0.2)  # connect in waves, as a fleet powering up does
    print(f"hosting {len(devices)} device(s)", flush=True)
    await asyncio.gather(*tasks)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = FleetSpec.load(Path(argv[0]))
    first, count = int(argv[1]), int(argv[2])
    metrics = Path(argv[3]) if len(argv) > 3 else None
    asyncio.run(run_host(spec, spec.devices[first:first + count], metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
