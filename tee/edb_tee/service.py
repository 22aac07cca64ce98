"""``edb tee serve``: harden the process, open the device state, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from edb_tee.core import TeeCore, open_device_state
from edb_tee.hardening import harden_process
from edb_tee.paths import DeviceLayout
from edb_tee.server import TeeServer

log = logging.getLogger("edb_tee")


def run_service(device_dir: Path, socket_path: Path | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = harden_process()  # before any secret is in memory
    log.info("hardening: dumpable=%s core=%d memlock=%d", report.dumpable, report.core_limit, report.memlock_limit)
    layout = DeviceLayout(device_dir)
    state = open_device_state(layout)
    state.storage.sweep()
    core = TeeCore(state)
    server = TeeServer(core, socket_path or layout.socket)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.bind()
        log.info("device %s, measurement %s, svn %d", state.identity.device_id, state.measurement,
                 state.config.measured.tee_svn)
        server.serve_forever()
    finally:
        server.shutdown()
        core.close()
        log.info("stopped; plaintext buffers overwritten")
    return 0
